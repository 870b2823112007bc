"""Decoding real Debezium records into ChangeEvents."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest

from cdcstream.core.events import KafkaOrigin, Op, SnapshotMarker, SourcePosition, TableId, doc_id
from cdcstream.pipeline.decode import DecodeError, convert, decode
from tests.fixturedata import all_names, raw


def dec(source: str, name: str, mode: str = "schemas_enabled"):  # type: ignore[no-untyped-def]
    k, v, topic = raw(source, name, mode)
    return decode(k, v, origin=KafkaOrigin(topic, 0, 0))


@pytest.mark.parametrize("name", all_names("postgres"))
def test_every_postgres_fixture_decodes(name: str) -> None:
    if name == "all_events_raw":
        pytest.skip("jsonl bundle")
    ev = dec("postgres", name)
    _, v, _ = raw("postgres", name)
    assert (ev is None) == (v is None)


def _data_topic(source: str, name: str) -> bool:
    # The schema-change topic is named after the prefix alone; it carries DDL, not rows.
    return name != "all_events_raw" and raw(source, name)[2].count(".") == 2


@pytest.mark.parametrize("name", [n for n in all_names("mariadb") if _data_topic("mariadb", n)])
def test_every_mariadb_fixture_decodes(name: str) -> None:
    if name == "all_events_raw":
        pytest.skip("jsonl bundle")
    ev = dec("mariadb", name)
    _, v, _ = raw("mariadb", name)
    assert (ev is None) == (v is None)


def test_snapshot_row_decimals_and_times() -> None:
    ev = dec("postgres", "01_snapshot_03")
    assert ev is not None
    assert ev.op is Op.READ
    assert ev.snapshot is SnapshotMarker.FIRST_IN_DATA_COLLECTION
    assert ev.table == TableId("dbserver1", "inventory", "public", "orders")
    assert ev.key == {"id": 1}
    assert ev.after is not None
    assert ev.after["amount"] == Decimal("19.99")
    assert ev.after["ordered_at"] == dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert ev.after["created_tz"] == dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert ev.after["attrs"] == {"gift": True, "tags": ["a", "b"]}
    # Snapshot rows lose a tie against a change streamed at the same LSN.
    assert ev.position == SourcePosition.postgres(26420424, snapshot=True)
    assert ev.position < SourcePosition.postgres(26420424, snapshot=False)


def test_update_without_before_image() -> None:
    ev = dec("postgres", "04_update_customer_00")
    assert ev is not None and ev.op is Op.UPDATE and ev.before is None and ev.after is not None


def test_toast_placeholder_never_survives_decoding() -> None:
    ev = dec("postgres", "08_update_toast_default_identity_00")
    assert ev is not None and ev.after is not None
    assert ev.unavailable == frozenset({"notes"})
    assert "notes" not in ev.after
    assert "__debezium_unavailable_value" not in json.dumps(ev.after, default=str)


def test_replica_identity_full_carries_whole_before() -> None:
    ev = dec("postgres", "09_update_toast_identity_full_00")
    assert ev is not None and ev.before is not None and ev.after is not None
    assert len(ev.before["notes"]) == 8000 and len(ev.after["notes"]) == 8000
    assert ev.unavailable == frozenset()


def test_primary_key_change_is_delete_tombstone_create() -> None:
    d, t, c = (dec("postgres", f"05_update_pk_customer_0{i}") for i in range(3))
    assert d is not None and d.op is Op.DELETE and d.key == {"id": 3} and d.row is None
    assert t is None  # tombstone
    assert c is not None and c.op is Op.CREATE and c.key == {"id": 1003}


def test_delete_and_tombstone() -> None:
    d = dec("postgres", "06_delete_order_00")
    assert d is not None and d.op is Op.DELETE and d.key == {"id": 3}
    assert dec("postgres", "06_delete_order_01") is None


def test_new_column_after_ddl() -> None:
    ev = dec("postgres", "12_insert_after_ddl_00")
    assert ev is not None and ev.after is not None and "phone" in ev.after


def test_kafka_connect_record_decodes_with_config_table_identity() -> None:
    k, v, topic = raw("postgres", "kcd.public.customers_p0_o000", "kafka_connect_distributed")
    tid = TableId("pg-main", "inventory", "public", "customers")
    ev = decode(k, v, origin=KafkaOrigin(topic, 0, 0), tables={topic: tid})
    assert ev is not None and ev.table == tid


def test_mariadb_types() -> None:
    ev = dec("mariadb", "06_update_order_types_00")
    assert ev is not None and ev.after is not None and ev.before is not None
    assert ev.table == TableId("mariadb1", "inventory", "inventory", "orders")
    assert ev.before["amount"] == Decimal("19.99")
    assert ev.after["status"] == "void"
    assert ev.after["created"] == dt.datetime(2025, 6, 7, 8, 9, 10, 654321)
    assert ev.after["updated"] == dt.datetime(2025, 6, 7, 8, 9, 10, 987000, tzinfo=dt.UTC)
    # MariaDB's JSON is LONGTEXT: Debezium sends a plain string, kept byte-exact.
    assert '"big": 12345678901234567890' in ev.after["payload"]
    assert ev.position == SourcePosition.binlog("mariadb-bin.000001", 5065, 0, snapshot=False)


def test_mariadb_composite_key_change() -> None:
    evs = [dec("mariadb", f"05_update_pk_tags_0{i}") for i in range(3)]
    assert [e.op if e else None for e in evs] == [Op.DELETE, None, Op.CREATE]
    assert evs[0] is not None and set(evs[0].key) == {"item_id", "tag"}


def test_multi_row_event_rows_are_ordered() -> None:
    a, b = dec("mariadb", "08_update_multi_row_00"), dec("mariadb", "08_update_multi_row_01")
    assert a is not None and b is not None
    assert a.position < b.position


def test_value_without_schema_is_refused_clearly() -> None:
    k, v, topic = raw("postgres", "02_insert_customer_00", "schemas_disabled")
    with pytest.raises(DecodeError, match="schemas.enable=true"):
        decode(k, v, origin=KafkaOrigin(topic, 0, 0))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "UTF-8|JSON"),
        (json.dumps({"schema": {}, "payload": {"op": "x", "source": {}}}).encode(), "unknown op 'x'"),
        (json.dumps({"schema": {}, "payload": {"op": "c", "source": {"lsn": 5}}}).encode(), "without a key"),
    ],
)
def test_poison_input_names_the_problem(value: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(b'{"schema":{"type":"struct","fields":[]},"payload":{}}' if b"lsn" not in value else None, value)


def _b64(unscaled: int, length: int) -> str:
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def test_numeric_65_30_stays_exact() -> None:
    exact = Decimal("12345678901234567890123456789012345.123456789012345678901234567891")
    unscaled = int(str(exact).replace(".", ""))  # 65 digits: no Decimal arithmetic, it rounds at 28
    schema = {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "30"}}
    assert convert(_b64(unscaled, 28), schema) == exact
    assert convert(_b64(-1, 1), {**schema, "parameters": {"scale": "2"}}) == Decimal("-0.01")


@pytest.mark.parametrize(
    ("name", "raw_value", "expected"),
    [
        ("io.debezium.time.Date", 19723, dt.date(2024, 1, 1)),
        ("io.debezium.time.Time", 3_723_004, dt.time(1, 2, 3, 4000)),
        ("io.debezium.time.MicroTime", 86_399_999_999, dt.time(23, 59, 59, 999999)),
        ("io.debezium.time.NanoTime", 1_000_001_999, dt.time(0, 0, 1, 1)),
        ("io.debezium.time.Timestamp", 1_704_067_200_123, dt.datetime(2024, 1, 1, 0, 0, 0, 123000)),
        ("io.debezium.time.NanoTimestamp", 1_704_067_200_000_001_999, dt.datetime(2024, 1, 1, 0, 0, 0, 1)),
        ("org.apache.kafka.connect.data.Date", 0, dt.date(1970, 1, 1)),
        ("io.debezium.time.ZonedTime", "10:15:30.5+02", "10:15:30.5+02"),
        ("io.debezium.data.EnumSet", "a,c", ["a", "c"]),
        ("io.debezium.data.Uuid", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"),
    ],
)
def test_logical_types(name: str, raw_value: object, expected: object) -> None:
    assert convert(raw_value, {"name": name, "type": "x"}) == expected


def test_geometry_point() -> None:
    wkb = bytes.fromhex("0101000000000000000000f03f0000000000000040")
    schema = {"name": "io.debezium.data.geometry.Point", "type": "struct"}
    out = convert({"x": 1.0, "y": 2.0, "wkb": base64.b64encode(wkb).decode(), "srid": 4326}, schema)
    assert out == {"srid": 4326, "wkb": wkb.hex(), "x": 1.0, "y": 2.0}


def test_variable_scale_decimal() -> None:
    schema = {"name": "io.debezium.data.VariableScaleDecimal", "type": "struct"}
    assert convert({"scale": 3, "value": _b64(-12345, 2)}, schema) == Decimal("-12.345")


def test_binlog_position_overflow_is_an_error() -> None:
    with pytest.raises(ValueError, match="position"):
        SourcePosition.binlog("mariadb-bin.000001", 1 << 31, 0, snapshot=False)
    with pytest.raises(ValueError, match="file number"):
        SourcePosition.binlog("mariadb-bin.999999", 0, 0, snapshot=False)


def test_binlog_versions_order_like_positions() -> None:
    p = SourcePosition.binlog
    seq = [p("b.000001", 10, 0, True), p("b.000001", 10, 0, False), p("b.000001", 10, 1, False),
           p("b.000001", 11, 0, False), p("b.000002", 4, 0, False)]
    assert [x.version for x in seq] == sorted(x.version for x in seq)
    assert all(0 <= x.version < 1 << 63 for x in seq)


def test_composite_doc_ids_do_not_collide() -> None:
    assert doc_id({"a": "x|y", "b": "z"}) != doc_id({"a": "x", "b": "y|z"})
    assert doc_id({"id": 7}) == "7"


def test_incremental_snapshot_row_takes_position_from_sequence() -> None:
    """Regression: incremental-snapshot rows of PostgreSQL have lsn=null (seen from Debezium 3.6.1)."""
    k, v, topic = raw("postgres", "01_snapshot_03")
    doc = json.loads(v)  # type: ignore[arg-type]
    doc["payload"]["source"].update({"lsn": None, "snapshot": "incremental", "sequence": '["163502400","163502400"]'})
    ev = decode(k, json.dumps(doc).encode(), origin=KafkaOrigin(topic, 0, 0))
    assert ev is not None and ev.snapshot is SnapshotMarker.INCREMENTAL
    assert ev.position == SourcePosition.postgres(163502400, snapshot=True)
    # A change streamed after the chunk was read wins over it.
    assert ev.position < SourcePosition.postgres(163502401, snapshot=False)
