"""Debezium JSON (``schemas.enable=true``) records -> ``ChangeEvent``.

Logical types are decoded exactly from the schema that travels with each record, so a
NUMERIC(65,30) stays a ``Decimal`` and a MicroTimestamp keeps its microseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from cdcstream.core import fastjson
from cdcstream.core.events import (
    FAR_FUTURE_MS,
    FAR_PAST_MS,
    ChangeEvent,
    FarTime,
    KafkaOrigin,
    Op,
    PositionOverflow,
    SnapshotMarker,
    SourcePosition,
    TableId,
    is_string_decimal,
)

#: Debezium's default ``unavailable.value.placeholder`` (PostgreSQL unchanged TOAST values).
UNAVAILABLE = "__debezium_unavailable_value"
_UNAVAILABLE_B64 = base64.b64encode(UNAVAILABLE.encode()).decode()
# How the placeholder arrives per column type (seen on the real stack, Debezium 3.6 + PostgreSQL
# 15, REPLICA IDENTITY DEFAULT, an update of another column): text, json and jsonb as the
# string; bytea as its base64; text[] (and other arrays of strings) as a one-element array;
# int[] as the placeholder's bytes, one integer each; hstore (hstore.handling.mode=json) as
# the JSON object {placeholder: placeholder}; map mode as that map.
_UNAVAILABLE_CODES = list(UNAVAILABLE.encode())
_UNAVAILABLE_MAP = {UNAVAILABLE: UNAVAILABLE}

EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)


class DecodeError(ValueError):
    """A record that cannot be decoded; the message says what is wrong with it."""


# --- logical types ----------------------------------------------------------------
def _decimal(value: Any, schema: Mapping[str, Any]) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, str) and not _looks_b64_bytes(schema):
        return Decimal(value)  # decimal.handling.mode=string
    if isinstance(value, (int, float)):
        return Decimal(str(value))  # decimal.handling.mode=double
    scale = int(schema.get("parameters", {}).get("scale", 0))
    unscaled = int.from_bytes(base64.b64decode(value), "big", signed=True)
    return _exact(unscaled, scale)


def _exact(unscaled: int, scale: int) -> Decimal:
    # Built from text, not via arithmetic: Decimal arithmetic rounds to 28 digits.
    return Decimal(f"{unscaled}E{-scale}")


def _looks_b64_bytes(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "bytes"


def _variable_scale_decimal(value: Any, schema: Mapping[str, Any]) -> Decimal | None:
    if value is None:
        return None
    unscaled = int.from_bytes(base64.b64decode(value["value"]), "big", signed=True)
    return _exact(unscaled, int(value["scale"]))


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar, for any year (H. Hinnant)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _year_text(y: int) -> str:
    # ISO 8601's expanded years: a sign and at least 4 digits beyond 0000..9999.
    return f"{y:04d}" if 0 <= y <= 9999 else f"{'+' if y > 0 else '-'}{abs(y):04d}"


def _far_from_us(us: int) -> FarTime:
    days, rest = divmod(us, 86_400_000_000)
    y, m, d = _civil_from_days(days)
    s, frac = divmod(rest, 1_000_000)
    hh, mm, ss = s // 3600, s // 60 % 60, s % 60
    text = f"{_year_text(y)}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}" + (f".{frac:06d}" if frac else "")
    return FarTime(text, us // 1000)


# How +/-infinity arrives (seen on the real stack, Debezium 3.6 + PostgreSQL 15): timestamps
# carry pgjdbc's DATE_POSITIVE_INFINITY / DATE_NEGATIVE_INFINITY constants as their epoch
# value (in the field's unit: microseconds for MicroTimestamp); dates carry those constants
# converted to days with an int overflow: -2147472692 for infinity, -2147472691 for
# -infinity, both far outside PostgreSQL's own date range (4713 BC to 5874897 AD). The
# int64 and int32 extremes are read as infinities too.
_INFINITE_US = {9223372036825200000: "infinity", -9223372036832400000: "-infinity",
                2**63 - 1: "infinity", -(2**63): "-infinity"}
_INFINITE_DAYS = {-2147472692: "infinity", -2147472691: "-infinity", 2**31 - 1: "infinity", -(2**31): "-infinity"}


def _infinite(text: str) -> FarTime:
    return FarTime(text, FAR_FUTURE_MS if text == "infinity" else FAR_PAST_MS)


def _far_int(value: int, unit_us: int) -> FarTime:
    for v in (value, value * unit_us):
        if v in _INFINITE_US:
            return _infinite(_INFINITE_US[v])
    return _far_from_us(value * unit_us)


def _date(value: Any, schema: Mapping[str, Any]) -> dt.date | FarTime | None:
    if value is None:
        return None
    days = int(value)
    if days in _INFINITE_DAYS:
        return _infinite(_INFINITE_DAYS[days])
    try:
        return EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        y, m, d = _civil_from_days(days)
        return FarTime(f"{_year_text(y)}-{m:02d}-{d:02d}", days * 86_400_000)


def _epoch_plus(value: Any, unit_us: int) -> dt.datetime | FarTime | None:
    """``value`` units after the epoch (``unit_us`` microseconds each), or a ``FarTime``."""
    if value is None:
        return None
    v = int(value)
    try:
        return EPOCH + dt.timedelta(microseconds=v * unit_us)
    except OverflowError:
        return _far_int(v, unit_us)


def _ts_ms(value: Any, schema: Mapping[str, Any]) -> dt.datetime | FarTime | None:
    return _epoch_plus(value, 1000)


def _ts_us(value: Any, schema: Mapping[str, Any]) -> dt.datetime | FarTime | None:
    return _epoch_plus(value, 1)


def _ts_ns(value: Any, schema: Mapping[str, Any]) -> dt.datetime | FarTime | None:
    # Python datetimes hold microseconds: nanoseconds are truncated, never rounded up.
    if value is None:
        return None
    v = int(value)
    return _far_int(v, 1) if v in _INFINITE_US else _epoch_plus(v // 1000, 1)


_ISO = re.compile(r"^([+-]?\d{4,})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?$")


def _zoned(value: Any, schema: Mapping[str, Any]) -> dt.datetime | FarTime | None:
    if value is None:
        return None
    text = str(value)
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    low = text.strip().lower()
    if low in ("infinity", "+infinity", "-infinity"):
        return _infinite(low.lstrip("+"))
    m = _ISO.match(text.strip())
    if m is None:
        raise DecodeError(f"{schema.get('name')} value {text[:64]!r} is not an ISO 8601 timestamp")
    y, mo, d, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
    frac = int((m.group(7) or ".0")[1:7].ljust(6, "0"))
    off = m.group(8) or "Z"
    off_s = 0 if off == "Z" else (1 if off[0] == "+" else -1) * (int(off[1:3]) * 3600 + int(off[-2:]) * 60
                                                              if len(off) > 3 else int(off[1:3]) * 3600)
    us = ((_days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off_s) * 1_000_000) + frac
    return FarTime(text, us // 1000)


def _time_of(us: int) -> dt.time:
    us %= 86_400_000_000  # PostgreSQL allows 24:00:00; keep it a valid time of day
    s, us = divmod(us, 1_000_000)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return dt.time(h, m, s, us)


def _time_ms(value: Any, schema: Mapping[str, Any]) -> dt.time | None:
    return None if value is None else _time_of(int(value) * 1000)


def _time_us(value: Any, schema: Mapping[str, Any]) -> dt.time | None:
    return None if value is None else _time_of(int(value))


def _time_ns(value: Any, schema: Mapping[str, Any]) -> dt.time | None:
    return None if value is None else _time_of(int(value) // 1000)


def _zoned_time(value: Any, schema: Mapping[str, Any]) -> str | None:
    # "HH:MM:SS.ffffff+ZZ": no Python type holds a time with an offset and no date exactly.
    return None if value is None else str(value)


# Decimals in decimal.handling.mode=string (PostgreSQL connectors, ops/debezium.py): the exact
# text, and for NUMERIC's special values Debezium's names (precise mode sends them as null).
_DECIMAL_SPECIAL = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}


def _string_decimal(value: Any) -> Decimal | str | None:
    if value is None:
        return None
    text = str(value)
    try:
        return Decimal(_DECIMAL_SPECIAL.get(text, text))
    except ArithmeticError:
        return text  # never refused: the text is kept as the source sent it


def _float(value: Any) -> Any:
    # JSON has no NaN/Infinity: Debezium's JsonConverter writes "NaN", "Infinity", "-Infinity".
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _json(value: Any, schema: Mapping[str, Any]) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise DecodeError(f"io.debezium.data.Json value is not JSON: {e}") from e


def _enum_set(value: Any, schema: Mapping[str, Any]) -> list[str] | None:
    return None if value is None else ([] if value == "" else value.split(","))


def _bytes(value: Any, schema: Mapping[str, Any]) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _geometry(value: Any, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    if value is None:
        return None
    out: dict[str, Any] = {"srid": value.get("srid")}
    if value.get("wkb") is not None:
        out["wkb"] = base64.b64decode(value["wkb"]).hex()
    if "x" in value and "y" in value:  # io.debezium.data.geometry.Point
        out["x"], out["y"] = value["x"], value["y"]
    return out


def _identity(value: Any, schema: Mapping[str, Any]) -> Any:
    return value


Converter = Callable[[Any, Mapping[str, Any]], Any]

LOGICAL: dict[str, Converter] = {
    "org.apache.kafka.connect.data.Decimal": _decimal,
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
    "org.apache.kafka.connect.data.Date": _date,
    "io.debezium.time.Date": _date,
    "org.apache.kafka.connect.data.Timestamp": _ts_ms,
    "io.debezium.time.Timestamp": _ts_ms,
    "io.debezium.time.MicroTimestamp": _ts_us,
    "io.debezium.time.NanoTimestamp": _ts_ns,
    "io.debezium.time.ZonedTimestamp": _zoned,
    "org.apache.kafka.connect.data.Time": _time_ms,
    "io.debezium.time.Time": _time_ms,
    "io.debezium.time.MicroTime": _time_us,
    "io.debezium.time.NanoTime": _time_ns,
    "io.debezium.time.ZonedTime": _zoned_time,
    "io.debezium.data.Json": _json,
    "io.debezium.data.Enum": _identity,
    "io.debezium.data.EnumSet": _enum_set,
    "io.debezium.data.Uuid": _identity,
    "io.debezium.data.Xml": _identity,
    "io.debezium.data.Bits": _bytes,
    "io.debezium.data.geometry.Geometry": _geometry,
    "io.debezium.data.geometry.Geography": _geometry,
    "io.debezium.data.geometry.Point": _geometry,
    "io.debezium.time.MicroDuration": _identity,  # int64 microseconds
    "io.debezium.time.Interval": _identity,  # ISO-8601 string (interval.handling.mode=string)
}


def convert(value: Any, schema: Mapping[str, Any]) -> Any:
    """Convert one field value using its Connect schema."""
    name = schema.get("name")
    if name is not None:
        conv = LOGICAL.get(name)
        if conv is not None:
            return conv(value, schema)
    if value is None:
        return None
    typ = schema.get("type")
    if typ == "bytes":
        return base64.b64decode(value)
    if typ in ("float", "double", "float32", "float64"):
        return _float(value)
    if typ == "string" and is_string_decimal(schema):
        return _string_decimal(value)
    if typ == "struct":
        return convert_struct(value, schema)
    if typ == "array":
        item = schema.get("items", {})
        return [convert(v, item) for v in value]
    if typ == "map":
        vs = schema.get("values", {})
        return {k: convert(v, vs) for k, v in value.items()}
    return value


def convert_struct(value: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    return {f["field"]: convert(value.get(f["field"]), f) for f in schema.get("fields", ())}


# --- converters compiled once per schema -------------------------------------------
# ``convert`` walks the schema for every value of every event; a topic's records carry the
# same schema again and again, so the walk is done once per distinct schema instead: a
# compiled converter is a function of the value alone (None: the value as it is). They give
# exactly what ``convert`` gives (tests/unit/pipeline/test_decode.py compares them).
ValueConv = Callable[[Any], Any]


def _none_or(f: Callable[[Any], Any]) -> ValueConv:
    return lambda v: None if v is None else f(v)


def compile_schema(schema: Mapping[str, Any]) -> ValueConv | None:
    """``convert(value, schema)`` as a function of the value; None when it is the identity."""
    name = schema.get("name")
    if name is not None:
        conv = LOGICAL.get(name)
        if conv is not None:
            if conv is _identity:
                return None
            if conv is _decimal:
                return _compile_decimal(schema)
            return lambda v: conv(v, schema)
    typ = schema.get("type")
    if typ == "bytes":
        return _none_or(base64.b64decode)
    if typ in ("float", "double", "float32", "float64"):
        return _float  # None passes through
    if typ == "string" and is_string_decimal(schema):
        return _string_decimal
    if typ == "struct":
        return _none_or(compile_struct(schema))
    if typ == "array":
        item = compile_schema(schema.get("items", {}))
        if item is None:
            return _none_or(list)
        return _none_or(lambda value: [item(v) for v in value])
    if typ == "map":
        vs = compile_schema(schema.get("values", {}))
        if vs is None:
            return _none_or(dict)
        return _none_or(lambda value: {k: vs(v) for k, v in value.items()})
    return None


def _compile_decimal(schema: Mapping[str, Any]) -> ValueConv:
    """``_decimal`` with the schema read once (its scale)."""
    try:
        scale = int(schema.get("parameters", {}).get("scale", 0))
    except (TypeError, ValueError, AttributeError):
        return lambda v: _decimal(v, schema)  # fails, if at all, exactly where _decimal does
    text_is_decimal = not _looks_b64_bytes(schema)

    def dec(value: Any) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, str):
            if text_is_decimal:
                return Decimal(value)
        elif isinstance(value, (int, float)):
            return Decimal(str(value))
        return _exact(int.from_bytes(base64.b64decode(value), "big", signed=True), scale)
    return dec


def compile_struct(schema: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """``convert_struct(value, schema)`` as a function of the value."""
    fields = [(f["field"], compile_schema(f)) for f in schema.get("fields", ())]

    def conv(value: Mapping[str, Any]) -> dict[str, Any]:
        get = value.get
        return {name: get(name) if c is None else c(get(name)) for name, c in fields}
    return conv


def _field_schema(envelope: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for f in envelope.get("fields", ()):
        if f.get("field") == name:
            return f  # type: ignore[no-any-return]
    return {}


def is_unavailable(raw: Any) -> bool:
    """Whether a raw field value is Debezium's unchanged-TOAST placeholder, in any of its forms."""
    if isinstance(raw, str):
        if raw == UNAVAILABLE or raw == _UNAVAILABLE_B64:
            return True
        if raw.startswith('{"' + UNAVAILABLE):
            try:
                return bool(json.loads(raw) == _UNAVAILABLE_MAP)
            except ValueError:
                return False
        return False
    if isinstance(raw, list):
        return raw in ([UNAVAILABLE], [_UNAVAILABLE_B64]) or raw == _UNAVAILABLE_CODES
    if isinstance(raw, dict):
        return raw == _UNAVAILABLE_MAP
    return False


_MAYBE_UNAVAILABLE = (str, list, dict)


def _row(raw: Mapping[str, Any], conv: Callable[[Mapping[str, Any]], dict[str, Any]]) -> tuple[
        dict[str, Any], frozenset[str]]:
    """The converted row and its unavailable columns, which are left out: the placeholder is
    never converted (a jsonb column's placeholder is not JSON, a bytea's not the value)."""
    gone = frozenset(k for k, v in raw.items() if isinstance(v, _MAYBE_UNAVAILABLE) and is_unavailable(v))
    if not gone:
        return conv(raw), gone
    row = conv({k: (None if k in gone else v) for k, v in raw.items()})
    for k in gone:
        row.pop(k, None)
    return row, gone


class _Envelope:
    """What one value schema compiles to: the converters of ``before`` and ``after``."""

    __slots__ = ("after", "before", "row_schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        before_schema, after_schema = _field_schema(schema, "before"), _field_schema(schema, "after")
        self.before = compile_struct(before_schema)
        self.after = compile_struct(after_schema)
        # One dict per schema, shared by its events (read only downstream).
        self.row_schema: dict[str, Any] | None = dict(after_schema or before_schema) or None


# JsonConverter writes {"schema":...,"payload":...} compactly, schema first. The bytes up to
# the payload are the cache key: a schema is parsed and compiled once, afterwards only the
# payload is parsed. A split is trusted only once the full parse confirmed it for that exact
# prefix; anything else (other shapes, whitespace, a schema text containing the separator)
# takes the full path every time.
_HEAD = b'{"schema":'
_SPLIT = b',"payload":'
_CACHE_MAX = 1024
_ENVELOPES: dict[bytes, _Envelope] = {}
_KEYS: dict[bytes, Callable[[Mapping[str, Any]], dict[str, Any]]] = {}


def _split_at(raw: bytes | str) -> int:
    if not isinstance(raw, bytes) or not raw.startswith(_HEAD) or not raw.endswith(b"}"):
        return -1
    return raw.find(_SPLIT)


def _remember(cache: dict[bytes, Any], raw: bytes, at: int, schema: Any, compiled: Any) -> None:
    """Cache ``compiled`` under ``raw``'s schema bytes once they parse to exactly ``schema``."""
    if at < 0:
        return
    try:
        if json.loads(raw[len(_HEAD):at]) != schema:
            return
    except ValueError:
        return
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[raw[:at]] = compiled


def _cached_payload(cache: dict[bytes, Any], raw: bytes | str | None) -> tuple[Any, Any, int]:
    """(compiled, payload, split) from the cache, or (None, None, split) for the full path."""
    if raw is None:
        return None, None, -1
    at = _split_at(raw)
    if at < 0:
        return None, None, at
    assert isinstance(raw, bytes)
    compiled = cache.get(raw[:at])
    if compiled is None:
        return None, None, at
    try:
        return compiled, fastjson.loads(raw[at + len(_SPLIT):-1]), at
    except ValueError:
        return None, None, at  # the full path says what is wrong with it, or decodes it


# --- records ----------------------------------------------------------------------
def parse_json(raw: bytes | str | None, what: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise DecodeError(f"{what} is not valid UTF-8 at byte {e.start}") from e
    except ValueError as e:
        raise DecodeError(f"{what} is not valid JSON: {e}") from e


def _envelope(doc: Any, what: str) -> tuple[Mapping[str, Any], Any]:
    if not isinstance(doc, dict) or "schema" not in doc or "payload" not in doc:
        raise DecodeError(
            f"{what} has no schema: the connector must use JsonConverter with "
            f"{'key' if what == 'key' else 'value'}.converter.schemas.enable=true"
        )
    return doc["schema"] or {}, doc["payload"]


def position_of(source: Mapping[str, Any], snapshot: SnapshotMarker) -> SourcePosition:
    in_snapshot = snapshot.in_snapshot
    if source.get("lsn") is not None:
        return SourcePosition.postgres(int(source["lsn"]), in_snapshot)
    if source.get("connector") == "postgresql" and source.get("sequence"):
        # Incremental-snapshot rows carry no lsn, only sequence = [last commit LSN, LSN] of the
        # streaming position when the chunk was read: changes committed later win over them.
        try:
            seq = json.loads(source["sequence"])
            return SourcePosition.postgres(int(seq[-1]), in_snapshot)
        except (ValueError, TypeError, IndexError) as e:
            raise DecodeError(f"source.sequence {source['sequence']!r} is not [commit LSN, LSN]") from e
    if source.get("file") is not None:
        return SourcePosition.binlog(str(source["file"]), int(source.get("pos") or 0), int(source.get("row") or 0),
                                     in_snapshot)
    raise DecodeError("source block has neither 'lsn' (PostgreSQL) nor 'file'/'pos' (binlog): unknown connector")


def decode(
    key: bytes | str | None,
    value: bytes | str | None,
    *,
    origin: KafkaOrigin | None = None,
    tables: Mapping[str, TableId] | None = None,
) -> ChangeEvent | None:
    """Decode one record. Returns None for a tombstone (the delete before it did the work).

    ``tables`` maps topic -> TableId (from the config), so the table's identity carries the
    connector's name; without it the identity is derived from the record's source block.
    """
    if value is None:
        return None
    env, payload, at = _cached_payload(_ENVELOPES, value)
    if env is None:
        vschema, payload = _envelope(parse_json(value, "value"), "value")
        env = _Envelope(vschema)
        if isinstance(value, bytes):
            _remember(_ENVELOPES, value, at, vschema, env)
    if not isinstance(payload, dict):
        raise DecodeError("value payload is not a JSON object")
    op_raw = payload.get("op")
    try:
        op = Op(str(op_raw))
    except ValueError as e:
        raise DecodeError(f"unknown op {op_raw!r}; expected one of c, u, d, r, t, m") from e
    if op is Op.MESSAGE:
        return None
    source = payload.get("source") or {}
    snap_raw = str(source.get("snapshot") or "false")
    try:
        snapshot = SnapshotMarker(snap_raw)
    except ValueError as e:
        raise DecodeError(f"unknown source.snapshot {snap_raw!r}") from e
    try:
        position = position_of(source, snapshot)
    except PositionOverflow as e:
        raise DecodeError(str(e)) from e

    table = tables.get(origin.topic) if tables is not None and origin is not None else None
    if table is None:
        db = str(source.get("db", ""))
        table = TableId(str(source.get("name", "")), db, str(source.get("schema") or db), str(source.get("table", "")))

    before_raw, after_raw = payload.get("before"), payload.get("after")
    before = _row(before_raw, env.before)[0] if before_raw is not None else None
    after, unavailable = _row(after_raw, env.after) if after_raw is not None else (None, frozenset())

    if op is Op.TRUNCATE:
        key_dict: dict[str, Any] = {}
    else:
        kconv, kpayload, kat = _cached_payload(_KEYS, key)
        if kconv is None:
            kdoc = parse_json(key, "key")
            if kdoc is None:
                raise DecodeError(f"{op.name.lower()} event without a key: the table has no primary key and no "
                                  f"message.key.columns; set id columns for it in the config")
            kschema, kpayload = _envelope(kdoc, "key")
            kconv = compile_struct(kschema)
            if isinstance(key, bytes):
                _remember(_KEYS, key, kat, kschema, kconv)
        key_dict = kconv(kpayload)
    if op in (Op.CREATE, Op.UPDATE, Op.READ) and after is None:
        raise DecodeError(f"op {op.value!r} without 'after'")
    tx = payload.get("transaction")
    return ChangeEvent(
        table=table,
        op=op,
        key=key_dict,
        before=before,
        after=after,
        position=position,
        snapshot=snapshot,
        ts_source_ms=int(source.get("ts_ms") or 0),
        ts_event_ms=int(payload.get("ts_ms") or 0),
        origin=origin,
        unavailable=unavailable,
        tx_id=str(tx["id"]) if isinstance(tx, dict) and tx.get("id") is not None else None,
        row_schema=env.row_schema,
    )
