"""Rows -> Elasticsearch documents, and Debezium schemas -> Elasticsearch mappings.

Designed for the minimal Elasticsearch node (no mapper-extras: no ``scaled_float``):
exact decimals are a ``keyword`` (the exact text) with a ``double`` sub-field ``.num``
for range queries and sorting.
"""

from __future__ import annotations

from typing import Any

from cdcstream.core.events import ChangeEvent, FarTime, is_string_decimal, key_text, plain

# Metadata kept on every mirrored document (verification, debugging, freshness).
META = "_cdc"

_DATE_TYPES = {
    "io.debezium.time.Date", "org.apache.kafka.connect.data.Date",
    "io.debezium.time.Timestamp", "io.debezium.time.MicroTimestamp", "io.debezium.time.NanoTimestamp",
    "org.apache.kafka.connect.data.Timestamp", "io.debezium.time.ZonedTimestamp",
}
_KEYWORD_TYPES = {
    "io.debezium.data.Enum", "io.debezium.data.EnumSet", "io.debezium.data.Uuid", "io.debezium.time.Time",
    "io.debezium.time.MicroTime", "io.debezium.time.NanoTime", "io.debezium.time.ZonedTime",
    "org.apache.kafka.connect.data.Time", "io.debezium.time.Interval",
}
_DECIMAL_TYPES = {"org.apache.kafka.connect.data.Decimal", "io.debezium.data.VariableScaleDecimal"}
POINT = "io.debezium.data.geometry.Point"


def field_mapping(schema: dict[str, Any], text: bool = False) -> dict[str, Any]:
    """The mapping of one Connect field."""
    name = schema.get("name")
    typ = schema.get("type")
    if text:
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    if name in _DECIMAL_TYPES or is_string_decimal(schema):
        # NaN and +-Infinity (PostgreSQL NUMERIC) are the keyword "NaN"/"Infinity"/"-Infinity";
        # the .num sub-field skips them (ignore_malformed).
        return {"type": "keyword", "fields": {"num": {"type": "double", "ignore_malformed": True}}}
    if name in _DATE_TYPES:
        return {"type": "date", "format": "strict_date_optional_time_nanos||strict_date_optional_time||epoch_millis"}
    if name in _KEYWORD_TYPES:
        return {"type": "keyword"}
    if name == "io.debezium.data.Json":
        # Arbitrary JSON would make the mapping grow without bound and conflict between rows:
        # keep it in _source, not indexed.
        return {"type": "object", "enabled": False}
    if name == POINT:
        # PostgreSQL's point is planar (any x and y), not a longitude/latitude: two doubles.
        return {"type": "object", "properties": {"x": {"type": "double"}, "y": {"type": "double"}}}
    if name and name.startswith("io.debezium.data.geometry"):
        return {"type": "object", "enabled": False}
    if name == "io.debezium.time.MicroDuration":
        return {"type": "long"}
    if typ in ("int8", "int16", "int32", "int64"):
        return {"type": "long"}
    if typ in ("float", "double", "float32", "float64"):
        # Connect's JSON schema names them float/double. NaN and +-Infinity arrive as texts
        # (JSON has no such numbers): ignore_malformed keeps them in _source, unindexed.
        return {"type": "double", "ignore_malformed": True}
    if typ == "boolean":
        return {"type": "boolean"}
    if typ == "bytes":
        return {"type": "binary"}
    if typ == "string":
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    if typ == "struct":
        return {"type": "object", "properties": {f["field"]: field_mapping(f) for f in schema.get("fields", ())}}
    return {"type": "object", "enabled": False}


def row_mapping(row_schema: dict[str, Any], text_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {f["field"]: field_mapping(f, text=f["field"] in text_columns) for f in row_schema.get("fields", ())}
    props[META] = {"properties": {
        "op": {"type": "keyword"}, "version": {"type": "long"}, "position": {"type": "keyword"},
        "ts_source": {"type": "date", "format": "epoch_millis"}, "table": {"type": "keyword"},
        "key": {"type": "keyword"},
        "special": {"type": "object", "enabled": False},
    }}
    return {"dynamic": False, "properties": props}


def jsonable(v: Any, schema: dict[str, Any] | None = None) -> Any:
    """A decoded value as JSON for Elasticsearch and the archive (exact: decimals as text;
    NaN/+-Infinity as "NaN"/"Infinity"/"-Infinity"; a point as {"x", "y"})."""
    if schema is not None and schema.get("name") == POINT and isinstance(v, dict) and "x" in v:
        return {"x": plain(v["x"]), "y": plain(v["y"])}
    return plain(v)


_POINT_SCHEMA = {"name": POINT}
# id(row schema) -> (the schema, its point columns). Decoding shares one row schema dict among
# the events of a schema (pipeline/decode.py), so this is read once per schema, not per event;
# the schema is kept with its entry, so its id cannot be reused while cached.
_POINT_COLUMNS: dict[int, tuple[dict[str, Any], frozenset[str]]] = {}


def _point_columns(row_schema: dict[str, Any] | None) -> frozenset[str]:
    if not row_schema:
        return frozenset()
    hit = _POINT_COLUMNS.get(id(row_schema))
    if hit is not None and hit[0] is row_schema:
        return hit[1]
    cols = frozenset(f["field"] for f in row_schema.get("fields", ()) if f.get("name") == POINT)
    if len(_POINT_COLUMNS) >= 1024:
        _POINT_COLUMNS.clear()
    _POINT_COLUMNS[id(row_schema)] = (row_schema, cols)
    return cols


def row_document(ev: ChangeEvent, row: dict[str, Any]) -> dict[str, Any]:
    points = _point_columns(ev.row_schema)
    doc = {k: v.epoch_ms if isinstance(v, FarTime) else jsonable(v, _POINT_SCHEMA) if k in points else plain(v)
           for k, v in row.items()}
    meta: dict[str, Any] = {"op": ev.op.value, "version": ev.position.version, "position": ev.position.text,
                            "ts_source": ev.ts_source_ms, "table": str(ev.table), "key": key_text(ev.key)}
    special = {k: v.text for k, v in row.items() if isinstance(v, FarTime)}
    if special:
        # Dates Python cannot hold: the date field holds epoch milliseconds (infinity: the
        # type's extremes), this keeps what the source wrote.
        meta["special"] = special
    doc[META] = meta
    return doc


def change_record(ev: ChangeEvent) -> dict[str, Any]:
    """The whole change event as one archive line."""
    out: dict[str, Any] = {
        "table": str(ev.table), "op": ev.op.value, "key": jsonable(ev.key),
        "before": jsonable(ev.before), "after": jsonable(ev.after),
        "position": {"version": ev.position.version, "text": ev.position.text},
        "snapshot": ev.snapshot.value, "ts_source_ms": ev.ts_source_ms, "ts_event_ms": ev.ts_event_ms,
    }
    if ev.origin is not None:
        out["kafka"] = {"topic": ev.origin.topic, "partition": ev.origin.partition, "offset": ev.origin.offset}
    if ev.unavailable:
        out["unavailable"] = sorted(ev.unavailable)
    if ev.tx_id is not None:
        out["tx"] = ev.tx_id
    return out
