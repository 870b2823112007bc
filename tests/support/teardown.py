"""Clean-up of a test's (or a benchmark's) connector: one path, over ``remove_connector``."""

from __future__ import annotations

import logging
from typing import Literal

import psycopg

from cdcstream.core.config import ConnectorSpec
from cdcstream.ops.credentials import Credentials
from cdcstream.ops.kconnect import ConnectClient
from cdcstream.ops.lifecycle import remove_connector
from tests.support.kafka import BOOTSTRAP, TopicMatch, delete_topics, topics_under

log = logging.getLogger(__name__)

#: The local stack's PostgreSQL superuser: it can drop a slot and a publication whatever a test
#: did to the connector's own role (revoked REPLICATION, changed password, dropped user).
SUPERUSER_PG = Credentials("postgres", "postgres")


def removal_spec(name: str, kind: Literal["postgres", "mariadb", "mysql"], database: str, *,
                 host: str = "127.0.0.1", port: int = 0) -> ConnectorSpec:
    """What removing connector ``name`` needs to know (its source database; slot, publication,
    schema-history topic and topic prefix follow from the name), independent of a config file
    the test may have changed or broken."""
    return ConnectorSpec.model_validate({
        "name": name,
        "connection": {"kind": kind, "host": host, "port": port, "database": database,
                       "user": "unused", "password": "env:CDCSTREAM_TEST_UNUSED", "tls": {"mode": "disable"}},
        "tables": [{"name": "unused.unused"}],
    })


def teardown_connector(spec: ConnectorSpec, creds: Credentials = SUPERUSER_PG, *,
                       client: ConnectClient | None = None, kafka_bootstrap: str = BOOTSTRAP,
                       also_topics: TopicMatch | None = None) -> list[str]:
    """Remove ``spec``'s connector, slot, publication or schema history, and topics
    (``cdcstream.ops.lifecycle.remove_connector``), then the topics ``also_topics`` accepts (the
    worker's own, for instance).

    Best effort, for ``finally`` blocks: it never raises (that would hide the test's own error)
    and returns what went wrong, also logged. When the removal fails part-way, the connector's
    topics are still deleted.
    """
    problems: list[str] = []
    try:
        remove_connector(client or ConnectClient(), spec, creds, kafka_bootstrap, log_fn=lambda _m: None)
    except Exception as e:  # reported, never raised: see the docstring
        if not _database_gone(e):
            problems.append(f"removing connector {spec.name}: {type(e).__name__}: {e}")
        also_topics = _either(topics_under(spec.prefix, f"__debezium-heartbeat.{spec.prefix}"), also_topics)
    if also_topics is not None:
        try:
            delete_topics(also_topics, bootstrap=kafka_bootstrap)
        except Exception as e:
            problems.append(f"deleting topics of {spec.name}: {type(e).__name__}: {e}")
    for p in problems:
        log.warning("teardown: %s", p)
    return problems


def _database_gone(e: Exception) -> bool:
    """The source database was dropped already (a test's own removal did): its slots and
    publication went with it (DROP DATABASE drops the inactive logical slots in it)."""
    return isinstance(e, psycopg.OperationalError) and "does not exist" in str(e)


def _either(a: TopicMatch, b: TopicMatch | None) -> TopicMatch:
    return a if b is None else (lambda t: a(t) or b(t))
