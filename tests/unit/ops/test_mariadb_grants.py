"""MariaDB parity (issue 17 item 6): grants read from SHOW GRANTS, the read-only connector config."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from cdcstream.core.config import ConnectorSpec
from cdcstream.ops import debezium
from cdcstream.ops.lifecycle import _mariadb_grant_findings, mariadb_has, mariadb_privileges

# As MariaDB 10.11 prints Debezium's tutorial grants (REPLICATION CLIENT shows as BINLOG MONITOR).
TUTORIAL = ["GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%` "
            "IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'"]


def spec(**extra: Any) -> ConnectorSpec:
    return ConnectorSpec.model_validate({
        "name": "shop-maria", "tables": [{"name": "shop.orders"}],
        "connection": {"kind": "mariadb", "host": "127.0.0.1", "database": "shop", "user": "cdc",
                       "password": "env:X"}, **extra})


def test_tutorial_grants_parse_with_aliases() -> None:
    p = mariadb_privileges(TUTORIAL)
    assert p == {"*.*": {"SELECT", "RELOAD", "SHOW DATABASES", "REPLICATION SLAVE", "REPLICATION CLIENT"}}
    assert mariadb_has(p, "SELECT", "shop", "orders")
    assert not mariadb_has(p, "INSERT", "shop", "cdcstream_signal")


def test_database_table_column_and_role_lines() -> None:
    p = mariadb_privileges([
        "GRANT USAGE ON *.* TO `cdc`@`%`",
        "GRANT CREATE, INSERT ON `shop`.* TO `cdc`@`%`",
        "GRANT SELECT (`id`, `name`), UPDATE ON `shop`.`orders` TO `cdc`@`%`",
        "GRANT `cdc_role` TO `cdc`@`%`",
        "GRANT ALL PRIVILEGES ON `other`.* TO `cdc`@`%` WITH GRANT OPTION",
    ])
    assert p["shop.*"] == {"CREATE", "INSERT"}
    assert p["shop.orders"] == {"SELECT", "UPDATE"}
    assert mariadb_has(p, "INSERT", "shop", "anything") and not mariadb_has(p, "INSERT", "elsewhere")
    assert mariadb_has(p, "DROP", "other", "t") and p["other.*"] == {"ALL"}


def test_findings_name_the_missing_grant_not_a_symptom() -> None:
    p = mariadb_privileges(TUTORIAL)
    found = _mariadb_grant_findings(spec(), "cdc", p, {"shop.orders"})
    assert [f.level for f in found] == ["error"]
    assert found[0].problem.startswith("user cdc lacks CREATE, INSERT, UPDATE on `shop`: the signal table "
                                       "shop.cdcstream_signal")
    assert "GRANT CREATE, INSERT, UPDATE ON `shop`.* TO 'cdc'@'%'" in found[0].fix
    assert "read_only: true" in found[0].fix
    # Tables that exist already need no CREATE.
    found = _mariadb_grant_findings(spec(), "cdc", p, {"shop.orders", "shop.cdcstream_signal",
                                                       "shop.cdcstream_heartbeat"})
    assert "lacks INSERT, UPDATE on `shop`" in found[0].problem
    # Read-only: the tutorial grants are enough.
    assert _mariadb_grant_findings(spec(read_only=True), "cdc", p, {"shop.orders"}) == []

    bare = mariadb_privileges(["GRANT SELECT ON *.* TO `cdc`@`%`"])
    found = _mariadb_grant_findings(spec(read_only=True), "cdc", bare, set())
    assert [(f.level, f.problem.split(":")[0]) for f in found] == [
        ("error", "user cdc lacks REPLICATION SLAVE and REPLICATION CLIENT (ON *.*)"),
        ("warning", "user cdc lacks RELOAD")]
    none = mariadb_privileges(["GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%`"])
    found = _mariadb_grant_findings(spec(read_only=True, snapshot_mode="no_data"), "cdc", none, set())
    assert [f.problem.split(":")[0] for f in found] == ["user cdc lacks SELECT on shop.orders"]


def test_read_only_config_writes_nothing_to_the_source() -> None:
    cfg = debezium.build(spec(read_only=True), user="cdc", password="pw", kafka_bootstrap="k:9092")
    assert cfg["read.only"] == "true"
    assert cfg["signal.enabled.channels"] == "kafka"
    assert cfg["signal.kafka.topic"] == "_cdcstream.signals.shop-maria" == debezium.signal_topic(spec())
    assert cfg["signal.kafka.bootstrap.servers"] == "k:9092"
    assert "signal.data.collection" not in cfg and "heartbeat.action.query" not in cfg
    assert cfg["table.include.list"] == "shop\\.orders"
    assert cfg["skipped.operations"] == "none"  # TRUNCATE arrives as op t

    rw = debezium.build(spec(), user="cdc", password="pw")
    assert rw["signal.data.collection"] == "shop.cdcstream_signal" and "read.only" not in rw
    assert rw["table.include.list"] == "shop\\.orders,shop\\.cdcstream_signal,shop\\.cdcstream_heartbeat"
    assert rw["skipped.operations"] == "none"

    cols = debezium.build(spec(read_only=True, tables=[{"name": "shop.orders", "include_columns": ["id"]}]),
                          user="cdc", password="pw")
    assert cols["column.include.list"] == "shop\\.orders\\.id"


@pytest.mark.parametrize(("extra", "message"), [
    ({"signal_table": "shop.sig"}, "signal_table and read_only exclude each other"),
])
def test_read_only_conflicts(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(read_only=True, **extra)


def test_read_only_is_refused_for_postgres() -> None:
    with pytest.raises(ValidationError, match="read_only: MariaDB/MySQL only"):
        ConnectorSpec.model_validate({
            "name": "pg", "tables": [{"name": "public.orders"}], "read_only": True,
            "connection": {"kind": "postgres", "host": "h", "database": "d", "user": "u", "password": "env:X"}})
