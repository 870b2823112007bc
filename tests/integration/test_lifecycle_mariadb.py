"""Connector lifecycle on MariaDB through the CLI (Debezium's MariaDbConnector 3.5 on the stack's Connect),
and the MySQL builder checked by Connect's validate endpoint only: no MySQL server runs here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from cdcstream.core.config import ConnectorSpec
from cdcstream.ops import debezium
from cdcstream.ops.kconnect import ConnectClient, ConnectError
from tests.integration.lifecycle_support import (
    MariaSource,
    consume,
    end_offsets,
    maria_source,
    output,
    rows,
)
from tests.support import BOOTSTRAP, CONNECTION_ERRORS, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEMA = [
    "CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, price DECIMAL(10,2) NOT NULL)",
    "INSERT INTO `{db}`.items VALUES (1, 'first', 1.50), (2, 'second', 2.25)",
    "CREATE TABLE `{db}`.nokey (a INT, b VARCHAR(10))",
]


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("mariadb", "kafka", "connect"):
        require(svc)


@pytest.fixture
def client() -> ConnectClient:
    return ConnectClient()


@pytest.fixture
def src(stack: None, tmp_path: Path) -> Iterator[MariaSource]:
    with maria_source(tmp_path, SCHEMA, []) as s:
        s.write_config([{"name": f"{s.db}.items"}])
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


def test_plan_apply_insert_arrives_then_delete_drop_slot(src: MariaSource, client: ConnectClient) -> None:
    plan = src.cli("connectors", "plan")
    assert plan.exit_code == 0, output(plan)
    assert f"connector {src.name}: create" in plan.stdout
    assert "+ connector.class = io.debezium.connector.mariadb.MariaDbConnector" in plan.stdout
    # An env: password and no credentials.mode: provider mode shows the ${dir:...} placeholder, never the value.
    assert "+ database.password = ${dir:" in plan.stdout and src.password not in output(plan)

    r = src.cli("connectors", "apply")
    assert r.exit_code == 0 and f"created connector {src.name}" in r.stdout, output(r)
    client.wait_state(src.name, timeout=120)
    ev = consume(src.topic("items"), lambda ev: {r["id"] for r in rows(ev, "r")} >= {1, 2})
    assert {(r["id"], r["name"]) for r in rows(ev, "r")} == {(1, "first"), (2, "second")}

    src.sql("INSERT INTO items VALUES (3, 'streamed', 9.99)")
    ev = consume(src.topic("items"), lambda ev: any(r["id"] == 3 for r in rows(ev, "c")))
    created = next(e for e in ev if e["op"] == "c")
    assert created["source"]["connector"] == "mariadb" and created["source"]["table"] == "items"

    counted = ConnectClient()
    import cdcstream.cli.main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cdcstream.cli.main, "_client", lambda: counted)
        r = src.cli("connectors", "apply")
    assert "nothing to do" in r.stdout and counted.writes == 0, output(r)

    history = f"_cdcstream.schema-history.{src.name}"
    assert history in _topics()
    wait_until(lambda: bool(client.offsets(src.name)), timeout=90, what="offsets committed",
               retry_on=(*CONNECTION_ERRORS, ConnectError))
    r = src.cli("connectors", "delete", src.name, "--drop-slot")
    assert r.exit_code == 0, output(r)
    assert "offsets reset" in r.stdout and f"deleted schema-history topic {history}" in r.stdout
    assert client.get_config(src.name) is None

    # Re-created: a fresh snapshot of all three rows, not a resume from the old binlog position.
    wait_until(lambda: history not in _topics(), timeout=30, what="history topic gone")
    start = end_offsets(src.topic("items"))
    r = src.cli("connectors", "apply")
    assert f"created connector {src.name}" in r.stdout, output(r)
    ev = consume(src.topic("items"), lambda ev: len(rows(ev)) >= 3, start=start)
    assert [e["op"] for e in ev[:3]] == ["r", "r", "r"]
    assert [t["state"] for t in client.wait_state(src.name, timeout=60).tasks] == ["RUNNING"]


def test_table_without_primary_key_and_missing_grants_are_refused(src: MariaSource, client: ConnectClient) -> None:
    src.write_config([{"name": f"{src.db}.items"}, {"name": f"{src.db}.nokey"}])
    r = src.cli("connectors", "apply")
    assert r.exit_code == 1, output(r)
    assert "preflight failed; nothing applied" in r.stderr
    assert f"table {src.db}.nokey has no primary key" in r.stderr
    assert "fix: add one, or give id_columns for it in the config" in r.stderr
    assert client.get_config(src.name) is None
    # Nothing created in the source either: setup runs only after a clean preflight.
    assert src.sql("SHOW TABLES") == [("items",), ("nokey",)]

    # A user without REPLICATION SLAVE: the fix names the grants Debezium needs.
    src.sql(f"REVOKE REPLICATION SLAVE ON *.* FROM '{src.user}'@'%'", root=True)
    src.write_config([{"name": f"{src.db}.items"}])
    r = src.cli("connectors", "apply")
    assert r.exit_code == 1, output(r)
    assert f"user {src.user} lacks REPLICATION SLAVE" in r.stderr
    assert "fix: GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT ON *.*" in r.stderr
    assert client.get_config(src.name) is None


def test_mysql_builder_is_validated_by_connect(stack: None, client: ConnectClient) -> None:
    """MySQL is not tested against a real MySQL here (docs/connectors.md says so): only Connect's
    validate endpoint checks what the builder produces."""
    spec = ConnectorSpec.model_validate({
        "name": "validate-mysql", "tables": [{"name": "shop.orders"}],
        "connection": {"kind": "mysql", "host": "127.0.0.1", "port": 3306, "database": "shop",
                       "user": "cdc", "password": "env:UNUSED"}})
    cfg = debezium.build(spec, user="cdc", password="secret")
    assert cfg["connector.class"] == debezium.MYSQL_CLASS

    bad = {k: v for k, v in cfg.items() if k != "database.hostname"}
    bad["database.server.id"] = "not-a-number"
    bad["name"] = spec.name
    res = client.validate(debezium.MYSQL_CLASS, bad)
    assert not res.ok
    assert any("hostname" in m.lower() or "required" in m.lower() for m in res.errors["database.hostname"]), res.errors
    assert "database.server.id" in res.errors, res.errors
    assert set(res.errors) == {"database.hostname", "database.server.id"}, res.errors


def test_regression_validate_reads_null_values_and_sends_the_name(stack: None, client: ConnectClient) -> None:
    """Bugs: ``ConnectClient.validate`` crashed on the ``"value": null`` entries Debezium returns
    for internal properties, and ``apply`` validated MySQL configs without ``name``, which
    Connect always counts as an error: every MySQL apply would have been refused."""
    spec = ConnectorSpec.model_validate({
        "name": "validate-mysql", "tables": [{"name": "shop.orders"}],
        "connection": {"kind": "mysql", "host": "127.0.0.1", "port": 3306, "database": "shop",
                       "user": "cdc", "password": "env:UNUSED"}})
    cfg = debezium.build(spec, user="cdc", password="secret")
    without_name = client.validate(debezium.MYSQL_CLASS, cfg)
    assert "name" in without_name.errors
    with_name = client.validate(debezium.MYSQL_CLASS, {**cfg, "name": spec.name})
    # The MySQL connector's validation also logs in: with no such user on the stack's MariaDB
    # the one error left is the connection, reported on database.hostname.
    assert set(with_name.errors) <= {"database.hostname"}, with_name.errors
    assert all(m.startswith("Unable to connect") for m in with_name.errors.get("database.hostname", []))
    assert client.get_config(spec.name) is None
    docs = (Path(__file__).resolve().parents[2] / "docs" / "connectors.md").read_text()
    assert "MySQL is not tested against a real MySQL" in docs


@pytest.mark.parametrize("kind", ["mariadb", "mysql"])
@pytest.mark.parametrize("tls", ["disable", "prefer", "require", "verify-ca", "verify-full"])
def test_regression_ssl_mode_spelled_for_each_connector(stack: None, client: ConnectClient, kind: str,
                                                        tls: str) -> None:
    """Bug: MariaDB configs got MySQL's ssl mode names ("disabled"), which the MariaDB connector
    rejects (it takes disable/trust/verify-ca/verify-full): `apply` failed with HTTP 400."""
    spec = ConnectorSpec.model_validate({
        "name": f"validate-{kind}", "tables": [{"name": "shop.orders"}],
        "connection": {"kind": kind, "host": "127.0.0.1", "database": "shop", "user": "cdc",
                       "password": "env:UNUSED", "tls": {"mode": tls}}})
    cfg = debezium.build(spec, user="cdc", password="secret")
    res = client.validate(cfg["connector.class"], {**cfg, "name": spec.name})
    assert "database.ssl.mode" not in res.errors, res.errors
