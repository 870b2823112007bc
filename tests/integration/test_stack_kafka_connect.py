"""Smoke test of the stack's Kafka and Kafka Connect: a Debezium PostgreSQL connector streams an insert to Kafka.

Runs against the servers of `cdcstream stack up` (postgres, kafka, connect); every name carries a
per-run tag so reruns and parallel runs do not collide, and everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from aiokafka import AIOKafkaConsumer
from psycopg import sql

from cdcstream.stack.services.connect import POSTGRES_CONNECTOR
from tests.support import delete_topics, topics_under, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass(frozen=True)
class Source:
    tag: str
    role: str
    password: str
    database: str
    pg: dict[str, Any]

    @property
    def slot(self) -> str:
        return f"smoke_{self.tag}"

    @property
    def publication(self) -> str:
        return f"smoke_{self.tag}"

    @property
    def connector(self) -> str:
        return f"smoke-pg-{self.tag}"

    @property
    def topic_prefix(self) -> str:
        return f"smoke_{self.tag}"

    @property
    def topic(self) -> str:
        return f"{self.topic_prefix}.public.items"


def superuser(pg: dict[str, Any], dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                           dbname=dbname, autocommit=True, connect_timeout=5)


@pytest.fixture
def source(require: Callable[[str], dict[str, Any]]) -> Iterator[Source]:
    """A database owned by a LOGIN REPLICATION role (no superuser), like fixtures/debezium-postgres/setup.sql."""
    pg = require("postgres")
    tag = uuid.uuid4().hex[:10]
    src = Source(tag=tag, role=f"dbz_{tag}", password=secrets.token_urlsafe(16), database=f"smoke_{tag}", pg=pg)
    with superuser(pg) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
            sql.Identifier(src.role), sql.Literal(src.password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(src.database),
                                                                   sql.Identifier(src.role)))
    with psycopg.connect(host=pg["host"], port=pg["port"], user=src.role, password=src.password,
                         dbname=src.database, autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE public.items (id INT PRIMARY KEY, name TEXT NOT NULL, qty INT)")
    try:
        yield src
    finally:
        with superuser(pg) as conn:
            # The connector was deleted by the test's own cleanup; its walsender may need a moment
            # to let go of the slot, and Debezium never drops the slot itself.
            deadline = time.monotonic() + 20
            while True:
                row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                   (src.slot,)).fetchone()
                if row is None:
                    break
                if not row[0]:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (src.slot,))
                    break
                if time.monotonic() > deadline:
                    conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                 "WHERE slot_name = %s", (src.slot,))
                time.sleep(0.3)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(src.database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(src.role)))


def connect_rest(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One Connect REST call, retried while the worker group rebalances.

    Right after a connector is created the worker rebalances. Connect documents 409 for that, but
    4.3 also answers HTTP 500 "Request cannot be completed because a rebalance is expected", e.g.
    to GET /connectors/{name}/config issued just after the POST (seen here).
    """
    deadline = time.monotonic() + 20
    while True:
        resp = requests.request(method, url, timeout=30, **kwargs)
        rebalancing = resp.status_code == 409 or (resp.status_code == 500 and "rebalance" in resp.text)
        if not rebalancing or time.monotonic() > deadline:
            return resp
        time.sleep(0.3)


async def first_event_for(bootstrap: str, topic: str, row_id: int, timeout: float) -> dict[str, Any]:
    # No consumer group: nothing to clean up; a short metadata age picks the topic up as soon as
    # Debezium's first record creates it.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, metadata_max_age_ms=500)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    if rec.value is None:
                        continue
                    value = json.loads(rec.value)
                    payload = value.get("payload", value)  # schemas enabled or not
                    if (payload.get("after") or {}).get("id") == row_id:
                        key = json.loads(rec.key) if rec.key else None
                        return {"key": key, "payload": payload}
    finally:
        await consumer.stop()
    pytest.fail(f"no change event for id={row_id} on {topic} within {timeout:.0f}s")


def test_debezium_postgres_insert_reaches_kafka(require: Callable[[str], dict[str, Any]], source: Source,
                                                tmp_path: Path) -> None:
    bootstrap = require("kafka")["bootstrap_servers"]
    rest = require("connect")["rest"]
    # The password reaches the worker through the DirectoryConfigProvider, as Vault-rendered files will.
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "db-password").write_text(source.password)
    placeholder = f"${{dir:{secrets_dir}:db-password}}"
    config = {
        "connector.class": POSTGRES_CONNECTOR,
        "tasks.max": "1",
        "database.hostname": source.pg["host"],
        "database.port": str(source.pg["port"]),
        "database.user": source.role,
        "database.password": placeholder,
        "database.dbname": source.database,
        "topic.prefix": source.topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": source.slot,
        "publication.name": source.publication,
        "publication.autocreate.mode": "filtered",
        "table.include.list": "public.items",
        # The broker does not auto-create topics (a consumer could create one with the wrong
        # partition count): Connect creates them.
        "topic.creation.default.partitions": "1",
        "topic.creation.default.replication.factor": "1",
    }
    resp = connect_rest("POST", f"{rest}/connectors", json={"name": source.connector, "config": config})
    assert resp.status_code == 201, resp.text
    try:
        got = connect_rest("GET", f"{rest}/connectors/{source.connector}/config").json()
        assert got["database.password"] == placeholder  # never the secret itself

        def task_running() -> bool:
            st = connect_rest("GET", f"{rest}/connectors/{source.connector}/status").json()
            tasks = st.get("tasks", [])
            if any(t["state"] == "FAILED" for t in tasks):
                pytest.fail(f"connector task failed: {tasks[0].get('trace', '')[:2000]}")
            return st.get("connector", {}).get("state") == "RUNNING" and [t["state"] for t in tasks] == ["RUNNING"]

        # No exception counts as "not yet" here (retry_on=()): every check below fails at once on one.
        wait_until(task_running, 30, 0.3, what="the connector task to run", retry_on=())
        # Rows written after the slot exists are streamed (op=c), not snapshotted.
        with superuser(source.pg, source.database) as conn:
            wait_until(lambda: conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                            (source.slot,)).fetchone() is not None,
                       30, 0.3, what="the replication slot", retry_on=())
            conn.execute("INSERT INTO public.items (id, name, qty) VALUES (%s, %s, %s)", (42, "grüße ✓", 7))

        event = asyncio.run(first_event_for(bootstrap, source.topic, 42, timeout=30))
        payload = event["payload"]
        assert payload["op"] == "c"
        assert payload["before"] is None
        assert payload["after"] == {"id": 42, "name": "grüße ✓", "qty": 7}
        assert payload["source"]["db"] == source.database
        assert payload["source"]["table"] == "items"
        assert event["key"]["payload"] == {"id": 42}
    finally:
        connect_rest("DELETE", f"{rest}/connectors/{source.connector}")
        wait_until(lambda: connect_rest("GET", f"{rest}/connectors/{source.connector}").status_code == 404,
                   30, 0.3, what="the connector to be deleted", retry_on=())
        with superuser(source.pg, source.database) as conn:
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(source.publication)))
        delete_topics(topics_under(source.topic_prefix), bootstrap=bootstrap)
