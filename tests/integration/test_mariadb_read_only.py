"""MariaDB with Debezium's tutorial grants only (issue 17 item 6), on the stack's MariaDB and Connect.

The user has ``SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT ON *.*`` and
nothing on the database: MariaDB hides ``information_schema.table_constraints`` rows from such a
user (the old key check refused every table). With ``read_only: true`` nothing is written to the
source: incremental snapshots are signalled through Kafka; TRUNCATE arrives as op ``t``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from cdcstream.ops.kconnect import ConnectClient
from tests.integration.lifecycle_support import MariaSource, consume, end_offsets, maria_source, output, rows
from tests.support import BOOTSTRAP

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEMA = [
    "CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)",
    "INSERT INTO `{db}`.items VALUES (1, 'first'), (2, 'second'), (3, 'third')",
    "CREATE TABLE `{db}`.nokey (a INT, b VARCHAR(10), UNIQUE KEY ua (a))",
]


@pytest.fixture
def src(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> Iterator[MariaSource]:
    for svc in ("mariadb", "kafka", "connect"):
        require(svc)
    with maria_source(tmp_path, SCHEMA, [], db_grants=False) as s:
        yield s


def _topics() -> set[str]:
    async def go() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(go())


def test_keys_are_seen_and_the_missing_grant_is_named(src: MariaSource) -> None:
    # The reproduction: table_constraints says nothing to this user, the statistics do.
    assert src.sql("SELECT COUNT(*) FROM information_schema.table_constraints WHERE table_schema = %s",
                   (src.db,)) == [(0,)]
    src.write_config([{"name": f"{src.db}.items"}, {"name": f"{src.db}.nokey"}])
    r = src.cli("connectors", "plan")
    assert r.exit_code == 1, output(r)
    assert f"table {src.db}.items has no primary key" not in r.stdout
    assert f"table {src.db}.nokey has no primary key" in r.stdout  # a unique key is not a primary key
    # Writing the signal and heartbeat tables needs grants the tutorial does not give: named as grants.
    assert (f"error: user {src.user} lacks CREATE, INSERT, UPDATE on `{src.db}`: the signal table "
            f"{src.db}.cdcstream_signal") in r.stdout
    assert f"fix: GRANT CREATE, INSERT, UPDATE ON `{src.db}`.* TO '{src.user}'@'%'; or set read_only: true" in r.stdout

    src.write_config([{"name": f"{src.db}.items"}], read_only=True)
    r = src.cli("connectors", "plan")
    assert r.exit_code == 0 and "error:" not in r.stdout, output(r)

    # A grant that is really missing for read-only capture is named too.
    src.sql(f"REVOKE REPLICATION CLIENT ON *.* FROM '{src.user}'@'%'", root=True)
    r = src.cli("connectors", "apply")
    assert r.exit_code == 1, output(r)
    assert f"user {src.user} lacks REPLICATION CLIENT (ON *.*)" in r.stderr
    assert ConnectClient().get_config(src.name) is None


def test_read_only_capture_kafka_signalled_snapshot_and_truncate(src: MariaSource) -> None:
    client = ConnectClient()
    src.write_config([{"name": f"{src.db}.items"}], read_only=True)
    r = src.cli("connectors", "apply")
    assert r.exit_code == 0, output(r)
    assert f"created signal topic _cdcstream.signals.{src.name}" in r.stdout
    assert f"created connector {src.name}" in r.stdout
    client.wait_state(src.name, timeout=120)
    ev = consume(src.topic("items"), lambda ev: {r["id"] for r in rows(ev, "r")} >= {1, 2, 3})
    assert sorted(r["id"] for r in rows(ev, "r")) == [1, 2, 3]
    # Nothing was created or written in the source.
    assert src.sql("SHOW TABLES") == [("items",), ("nokey",)]

    src.sql(f"INSERT INTO `{src.db}`.items VALUES (4, 'streamed')", root=True)
    consume(src.topic("items"), lambda ev: any(r["id"] == 4 for r in rows(ev, "c")))

    # `connectors snapshot` through the Kafka signal topic, with a filter.
    start = end_offsets(src.topic("items"))
    r = src.cli("connectors", "snapshot", src.name, f"{src.db}.items", "--filter", "id >= 3")
    assert r.exit_code == 0, output(r)
    assert f"snapshot signal _cdcstream.signals.{src.name}@" in r.stdout
    ev = consume(src.topic("items"), lambda ev: {r["id"] for r in rows(ev, "r")} >= {3, 4}, start=start,
                 settle=3)
    assert sorted(r["id"] for r in rows(ev, "r")) == [3, 4]
    assert {e["source"]["snapshot"] for e in ev if e["op"] == "r"} == {"incremental"}

    # TRUNCATE is a truncate event (op t), ordered before what follows it.
    start = end_offsets(src.topic("items"))
    src.sql(f"TRUNCATE TABLE `{src.db}`.items", root=True)
    src.sql(f"INSERT INTO `{src.db}`.items VALUES (9, 'after')", root=True)
    ev = consume(src.topic("items"), lambda ev: any((e.get("after") or {}).get("id") == 9 for e in ev), start=start)
    assert [e["op"] for e in ev] == ["t", "c"], ev
    assert ev[0]["source"]["table"] == "items"

    signals = f"_cdcstream.signals.{src.name}"
    assert signals in _topics()
    r = src.cli("connectors", "delete", src.name, "--drop-slot")
    assert r.exit_code == 0, output(r)
    assert f"deleted signal topic {signals}" in r.stdout
    assert signals not in _topics()
