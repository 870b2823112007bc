"""Typed change events: what the rest of the pipeline sees after decoding.

Dataclasses with slots, not pydantic models: one is built per Kafka record on the hot path.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


class Op(enum.StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # snapshot row
    TRUNCATE = "t"
    MESSAGE = "m"  # logical decoding message: not a row change


class SnapshotMarker(enum.StrEnum):
    """Debezium's ``source.snapshot``: where in an (incremental) snapshot a row sits."""

    NONE = "false"
    TRUE = "true"
    FIRST = "first"
    FIRST_IN_DATA_COLLECTION = "first_in_data_collection"
    LAST_IN_DATA_COLLECTION = "last_in_data_collection"
    LAST = "last"
    INCREMENTAL = "incremental"

    @property
    def in_snapshot(self) -> bool:
        return self is not SnapshotMarker.NONE


@dataclass(frozen=True, slots=True)
class TableId:
    """A captured table. The connector is part of the identity so that two sources'
    ``public.orders`` never collide."""

    connector: str
    database: str
    schema: str  # PostgreSQL schema; for MariaDB/MySQL the database name again
    table: str

    def __str__(self) -> str:
        return f"{self.connector}/{self.database}.{self.schema}.{self.table}"

    @property
    def short(self) -> str:
        """``schema.table`` as written in the config file."""
        return f"{self.schema}.{self.table}"

    @property
    def key(self) -> str:
        """Stable string form for Kafka keys and table keys."""
        return f"{self.connector}/{self.database}/{self.schema}/{self.table}"


# --- source positions ---------------------------------------------------------
# A SourcePosition orders the changes of one row. Its ``version`` packs it into one
# signed 64-bit integer (Elasticsearch external versions are signed longs, and so are
# Faust table values we compare cheaply):
#
# PostgreSQL:  version = lsn << 1 | streamed
#   Per row, LSNs grow: a second change to a row can only be written after the first
#   transaction released the row lock. Initial-snapshot rows all carry the snapshot's
#   consistent-point LSN; a change streamed at that same LSN happened after the
#   snapshot's read, so a streamed event wins a tie (low bit 1 vs 0). An incremental
#   snapshot chunk carries the streaming position at the time it was read, so it
#   loses against changes committed later and beats changes committed earlier.
#   LSNs must stay below 2**62 (16 EiB of WAL).
#
# MariaDB/MySQL: version = file_no << 44 | pos << 13 | row << 1 | streamed
#   file_no: the binlog file's numeric suffix (19 bits, up to 524,287 files);
#   pos: the event's byte offset in that file (31 bits; max_binlog_size caps it at 1 GiB);
#   row: the row's index inside a multi-row event (12 bits: 8 KiB events hold < 4,096 rows).
#   A value out of range raises instead of wrapping, and the event goes to the DLQ.
PG_LSN_MAX = (1 << 62) - 1
BINLOG_FILE_MAX = (1 << 19) - 1
BINLOG_POS_MAX = (1 << 31) - 1
BINLOG_ROW_MAX = (1 << 12) - 1


class PositionOverflow(ValueError):
    """A source position does not fit the 64-bit version encoding."""


@dataclass(frozen=True, slots=True, order=True)
class SourcePosition:
    version: int
    # Human-readable origin, e.g. "lsn=0/1932A48" or "mariadb-bin.000001:5065#0".
    text: str = field(compare=False)

    @classmethod
    def postgres(cls, lsn: int, snapshot: bool) -> SourcePosition:
        if not 0 <= lsn <= PG_LSN_MAX:
            raise PositionOverflow(f"PostgreSQL LSN {lsn} outside 0..{PG_LSN_MAX}")
        return cls((lsn << 1) | (0 if snapshot else 1), f"lsn={lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}")

    @classmethod
    def binlog(cls, file: str, pos: int, row: int, snapshot: bool) -> SourcePosition:
        try:
            file_no = int(file.rsplit(".", 1)[1])
        except (IndexError, ValueError) as e:
            raise PositionOverflow(f"binlog file name {file!r} has no numeric suffix") from e
        for what, value, top in (("file number", file_no, BINLOG_FILE_MAX), ("position", pos, BINLOG_POS_MAX),
                                 ("row", row, BINLOG_ROW_MAX)):
            if not 0 <= value <= top:
                raise PositionOverflow(f"binlog {what} {value} outside 0..{top} ({file}:{pos}#{row})")
        version = (file_no << 44) | (pos << 13) | (row << 1) | (0 if snapshot else 1)
        return cls(version, f"{file}:{pos}#{row}")


# The extremes of Elasticsearch's `date` type (epoch milliseconds in a signed 64-bit long):
# PostgreSQL's +/-infinity is mirrored as these, so sorting and range queries order them
# after (before) every finite time, as PostgreSQL does.
FAR_FUTURE_MS = 2**63 - 1
FAR_PAST_MS = -(2**63 - 1)  # Long.MIN_VALUE itself is refused by the date parser


@dataclass(frozen=True, slots=True)
class FarTime:
    """A date or timestamp Python's ``datetime`` cannot hold: years past 9999 or before 1,
    and PostgreSQL's ``infinity`` / ``-infinity``. Never a reason to refuse a row.

    ``text`` is the value as the source writes it (ISO 8601 with a signed, wider year, or
    ``infinity``/``-infinity``), kept in the archive and in the document's ``_cdc.special``;
    ``epoch_ms`` is what the mirror's ``date`` field holds (``FAR_FUTURE_MS`` /
    ``FAR_PAST_MS`` for the infinities).
    """

    text: str
    epoch_ms: int

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class KafkaOrigin:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class ChangeEvent:
    """One decoded Debezium change of one row."""

    table: TableId
    op: Op
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    position: SourcePosition
    snapshot: SnapshotMarker
    ts_source_ms: int  # when the change happened in the database (source.ts_ms)
    ts_event_ms: int  # when Debezium processed it (ts_ms)
    origin: KafkaOrigin | None = None
    # Columns whose value the source did not send (PostgreSQL unchanged TOAST): present in
    # ``after`` as a placeholder in the raw event, removed from ``after`` by the decoder.
    unavailable: frozenset[str] = frozenset()
    tx_id: str | None = None
    # The Connect schema of the row struct (``after``, else ``before``): fields with their
    # types and logical names; the Elasticsearch mapping is derived from it.
    row_schema: dict[str, Any] | None = None

    @property
    def row(self) -> dict[str, Any] | None:
        """The row as it is after the change (None for a delete)."""
        return None if self.op is Op.DELETE else self.after

    @property
    def doc_id(self) -> str:
        return doc_id(self.key)


#: Elasticsearch refuses an ``_id`` longer than 512 bytes (UTF-8).
MAX_ID_BYTES = 512
HASHED_ID_PREFIX = "~sha256:"


def key_text(key: dict[str, Any]) -> str:
    """A primary key as text: one column as is, composite keys joined unambiguously.

    Each part is length-prefixed, so ``("a|b", "c")`` and ``("a", "b|c")`` never collide.
    This is what documents keep in ``_cdc.key``, whatever their ``_id``.
    """
    if len(key) == 1:
        return _key_part(next(iter(key.values())))
    return "|".join(f"{len(p)}:{p}" for p in (_key_part(v) for v in key.values()))


def bounded_id(text: str) -> str:
    """``text`` as an Elasticsearch ``_id``: as is from 1 to 512 bytes, else ``~sha256:<64 hex>``
    of its UTF-8 bytes (stable: the same key always gets the same id). Elasticsearch refuses an
    empty ``_id`` too, and a text primary key may be ``''``."""
    raw = text.encode("utf-8", "surrogatepass")
    if 0 < len(raw) <= MAX_ID_BYTES:
        return text
    return HASHED_ID_PREFIX + hashlib.sha256(raw).hexdigest()


def is_hashed_id(doc_id: str) -> bool:
    return doc_id.startswith(HASHED_ID_PREFIX) and len(doc_id) == len(HASHED_ID_PREFIX) + 64


def doc_id(key: dict[str, Any]) -> str:
    """Document id from a primary key: ``key_text``, hashed when it is longer than ES allows."""
    return bounded_id(key_text(key))


def _key_part(v: Any) -> str:
    return "" if v is None else str(v)


# --- values as JSON ------------------------------------------------------------------
#: How Debezium (and JSON generally) writes the floats JSON cannot carry; the mirror and the
#: archive keep these texts.
NONFINITE_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
DECIMAL_SOURCE_TYPES = frozenset({"NUMERIC", "DECIMAL", "MONEY"})
SOURCE_TYPE = "__debezium.source.column.type"


def is_string_decimal(schema: dict[str, Any] | Any) -> bool:
    """A NUMERIC/DECIMAL/MONEY sent as text (decimal.handling.mode=string) with its source type
    propagated (``datatype.propagate.source.type``): decoded and mapped as an exact decimal."""
    params = schema.get("parameters") or {}
    return bool(schema.get("type") == "string" and str(params.get(SOURCE_TYPE, "")).upper() in DECIMAL_SOURCE_TYPES)


def plain(v: Any) -> Any:
    """A decoded value as JSON, exactly: decimals as their text, bytes as base64, dates as ISO
    8601, NaN/+-Infinity as the texts ``NaN``/``Infinity``/``-Infinity``. Idempotent."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else NONFINITE_TEXT[repr(v)]
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, FarTime):
        return v.text
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return str(v)
