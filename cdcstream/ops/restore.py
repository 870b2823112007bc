"""Point-in-time restore from the archive, and the history of one row.

The archive (``cdcstream/sinks/archive.py``) holds every change event of an ``archive``-profile
table as gzip JSON Lines, one line per event with its source position (``position.version``:
orders the changes of one row, see ``cdcstream/core/events.py``), its source commit time
(``ts_source_ms``) and its Kafka position. ``restore`` rebuilds the table as it was at a cut:

* the cut is a **time** (ISO 8601; events whose ``ts_source_ms`` is at or before it) or a
  **source position** (``lsn=0/1A2B3C8`` / ``0/1A2B3C8`` for PostgreSQL,
  ``mariadb-bin.000003:5065[#row]`` for MariaDB/MySQL, ``version=N`` for the raw version:
  events whose version is at or before it);
* per key, the newest change at or before the cut wins (by version; a re-sent event with the
  same version changes nothing); a delete removes the row, a TRUNCATE every row older than it;
* columns an update did not carry (PostgreSQL unchanged TOAST, listed in ``unavailable``) keep
  their previous value.

Objects are read one at a time (``dt=`` folders after a time cut's day are skipped: every event
of an object is of its folder's day), so memory holds the rows of the table, not the archive.
The rows go to a JSON Lines file, an Elasticsearch index or a PostgreSQL table (``Target``).
``history`` answers from the same objects: every archived version of one row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdcstream.core.events import doc_id, key_text
from cdcstream.sinks.base import ArchiveStore


class RestoreError(RuntimeError):
    """A restore or history request that cannot be answered (bad cut, no archive, target refused)."""


# --- the cut ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cut:
    """At or before a source time (``ts_ms``) or a source position (``version``)."""

    text: str
    ts_ms: int | None = None
    version: int | None = None

    def includes(self, rec: dict[str, Any]) -> bool:
        if self.version is not None:
            return int(rec["position"]["version"]) <= self.version
        assert self.ts_ms is not None
        return int(rec.get("ts_source_ms") or rec.get("ts_event_ms") or 0) <= self.ts_ms

    def skips_day(self, day: str) -> bool:
        """Every event of a ``dt=<day>`` folder is after the cut (time cuts only)."""
        if self.ts_ms is None:
            return False
        return day > dt.datetime.fromtimestamp(self.ts_ms / 1000, dt.UTC).strftime("%Y-%m-%d")


_LSN = re.compile(r"^(?:lsn=)?([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_BINLOG = re.compile(r"^(.+\.\d+):(\d+)(?:#(\d+))?$")


def parse_cut(text: str) -> Cut:
    """``--as-of``: a time (ISO 8601, UTC unless it names a zone; ``now``) or a source position."""
    t = text.strip()
    m = _LSN.match(t)
    if m:
        lsn = int(m.group(1), 16) << 32 | int(m.group(2), 16)
        return Cut(t, version=lsn << 1 | 1)  # a change streamed at that LSN is included
    if t.startswith("version="):
        try:
            return Cut(t, version=int(t.removeprefix("version=")))
        except ValueError:
            raise RestoreError(f"--as-of {text!r}: version=N needs an integer") from None
    m = _BINLOG.match(t)
    if m:
        from cdcstream.core.events import PositionOverflow, SourcePosition

        try:
            # The last row of that event, streamed: every row of it is included.
            pos = SourcePosition.binlog(m.group(1), int(m.group(2)), int(m.group(3) or 4095), snapshot=False)
        except PositionOverflow as e:
            raise RestoreError(f"--as-of {text!r}: {e}") from None
        return Cut(t, version=pos.version)
    if t == "now":
        return Cut(t, ts_ms=int(time.time() * 1000))
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--as-of {text!r}: not a time (ISO 8601, e.g. 2026-12-05T10:30:00Z) nor a source "
                           f"position (lsn=0/1A2B3C8, mariadb-bin.000003:5065, version=N)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Cut(t, ts_ms=int(when.timestamp() * 1000))


# --- reading the archive ------------------------------------------------------------------
@dataclass
class Progress:
    objects: int = 0
    objects_total: int = 0
    skipped: int = 0
    events: int = 0
    bytes_read: int = 0
    # Source times of the oldest and newest event read (skipped objects excluded).
    oldest_ms: int | None = None
    newest_ms: int | None = None
    first_day: str | None = None  # the oldest dt= folder
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        return (f"objects {self.objects}/{self.objects_total} ({self.skipped} skipped), {self.events:,} events, "
                f"{human_bytes(self.bytes_read)} read, {self.seconds:.1f} s")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table_prefix(connector: str, table: str) -> str:
    """Where ``schema.table`` of ``connector`` lies in the archive (see the object names)."""
    return f"{connector}/{table}/"


def _day_of(name: str) -> str | None:
    m = re.search(r"/dt=(\d{4}-\d{2}-\d{2})/", name)
    return m.group(1) if m else None


def _order(name: str) -> tuple[int, int]:
    """(partition, first offset) from ``.../<partition>-<first>-<last>.jsonl.gz``."""
    parts = name.rsplit("/", 1)[-1].removesuffix(".jsonl.gz").split("-")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (1 << 31, 0)


def read_events(store: ArchiveStore, prefix: str, cut: Cut | None = None,
                progress: Progress | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every archived event under ``prefix`` (at or before ``cut``), object by object in
    partition and offset order (per key: source order)."""
    prog = progress or Progress()
    names = asyncio.run(store.list(prefix))
    names = sorted((n for n in names if n.endswith(".jsonl.gz")), key=_order)
    prog.objects_total = len(names)
    days = [d for d in map(_day_of, names) if d is not None]
    prog.first_day = min(days) if days else None
    for name in names:
        prog.objects += 1
        day = _day_of(name)
        if cut is not None and day is not None and cut.skips_day(day):
            prog.skipped += 1
            if on_progress:
                on_progress(prog)
            continue
        body = asyncio.run(store.get(name))
        prog.bytes_read += len(body)
        for line in gzip.decompress(body).splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            prog.events += 1
            ts = int(rec.get("ts_source_ms") or rec.get("ts_event_ms") or 0)
            if ts:
                prog.oldest_ms = ts if prog.oldest_ms is None else min(prog.oldest_ms, ts)
                prog.newest_ms = ts if prog.newest_ms is None else max(prog.newest_ms, ts)
            if cut is None or cut.includes(rec):
                yield rec
        if on_progress:
            on_progress(prog)


def key_id(key: Any) -> str:
    """One identity per primary key (the mirror's document id)."""
    return doc_id(key) if isinstance(key, dict) else str(key)


# --- the state at the cut ----------------------------------------------------------------
@dataclass
class RestoreResult:
    table: str
    cut: Cut
    rows: dict[str, dict[str, Any]]
    keys: dict[str, Any]
    deleted: int
    truncates: int
    progress: Progress
    written_bytes: int = 0
    target: str = ""

    def summary(self) -> str:
        return (f"restored {self.table} as of {self.cut.text}: {len(self.rows):,} rows ({self.deleted:,} deleted "
                f"keys, {self.truncates} truncate(s) applied) from {self.progress.objects_total} objects "
                f"({self.progress.skipped} skipped), {self.progress.events:,} events, "
                f"{human_bytes(self.progress.bytes_read)} read, {human_bytes(self.written_bytes)} written "
                f"to {self.target} in {self.progress.seconds:.1f} s")

    def notes(self) -> list[str]:
        """What the user should know about the cut and the archive's coverage."""
        p, out = self.progress, []
        if self.cut.ts_ms is not None and p.oldest_ms is not None and self.cut.ts_ms < p.oldest_ms:
            out.append(f"note: the cut is before the archive's oldest change ({_iso(p.oldest_ms)}): "
                       f"the archive begins with the connector's snapshot")
        elif self.cut.ts_ms is not None and p.oldest_ms is None and p.first_day and p.skipped == p.objects_total:
            out.append(f"note: the cut is before the archive's oldest change (its first day is {p.first_day}): "
                       f"the archive begins with the connector's snapshot")
        if p.newest_ms is not None and self.cut.ts_ms is not None and self.cut.ts_ms > p.newest_ms:
            out.append(f"note: the archive's newest change is from {_iso(p.newest_ms)}; later changes may still "
                       f"wait in the worker for their object (archive_max_wait_s)")
        return out


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def rebuild(events: Iterator[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], int, int]:
    """Rows (key id -> columns), their keys, how many keys ended deleted, truncates applied."""
    # key id -> (version, op, row or None)
    state: dict[str, tuple[int, str, dict[str, Any] | None]] = {}
    keys: dict[str, Any] = {}
    truncated_at = -1
    truncates = 0
    for rec in events:
        version = int(rec["position"]["version"])
        op = rec["op"]
        if op == "t":
            truncates += 1
            truncated_at = max(truncated_at, version)
            continue
        kid = key_id(rec.get("key"))
        cur = state.get(kid)
        if cur is not None and version <= cur[0]:
            continue  # older than what this key shows (or the same change again)
        if op == "d":
            row = None
        else:
            row = dict(rec.get("after") or {})
            # Columns the source did not send keep the value they had before this change.
            for col in rec.get("unavailable") or ():
                if cur is not None and cur[2] is not None and col in cur[2]:
                    row[col] = cur[2][col]
        state[kid] = (version, op, row)
        keys[kid] = rec.get("key")
    rows = {k: r for k, (v, _op, r) in state.items() if r is not None and v > truncated_at}
    deleted = sum(1 for k, (v, _op, r) in state.items() if r is None or v <= truncated_at)
    return rows, {k: keys[k] for k in rows}, deleted, truncates


def restore_rows(store: ArchiveStore, connector: str, table: str, cut: Cut,
                 on_progress: Callable[[Progress], None] | None = None) -> RestoreResult:
    prog = Progress()
    rows, keys, deleted, truncates = rebuild(read_events(store, table_prefix(connector, table), cut, prog,
                                                          on_progress))
    if prog.objects_total == 0:
        raise RestoreError(f"no archive objects for {connector} {table} (prefix {table_prefix(connector, table)}): "
                           f"is the table's profile archive, and CDCSTREAM_ARCHIVE_URL the worker's?")
    return RestoreResult(table, cut, rows, keys, deleted, truncates, prog)


def history(store: ArchiveStore, connector: str, table: str, key: Any,
            on_progress: Callable[[Progress], None] | None = None) -> list[dict[str, Any]]:
    """Every archived version of the row with primary key ``key`` (a dict, or a single column's
    value), oldest first, each once (by source position)."""
    prefix = table_prefix(connector, table)
    want: set[str] = set()
    if isinstance(key, dict):
        want.add(key_id(key))
    else:
        want.add(str(key))
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    for rec in read_events(store, prefix, None, None, on_progress):
        k = rec.get("key")
        if rec["op"] == "t":
            out.append(rec)
            continue
        if key_id(k) not in want and not (isinstance(k, dict) and key_text(k) in want):
            continue
        v = int(rec["position"]["version"])
        if v in seen:
            continue
        seen.add(v)
        out.append(rec)
    out.sort(key=lambda r: int(r["position"]["version"]))
    # Truncates matter only between versions of the row (or after its last one).
    first = next((int(r["position"]["version"]) for r in out if r["op"] != "t"), None)
    return [r for r in out if r["op"] != "t" or (first is not None and int(r["position"]["version"]) > first)]


def parse_key(text: str) -> Any:
    """``KEY`` of ``cdcstream history``: a JSON object of the key columns (``{"id": 7}``), or the
    value of a one-column key as written (``7``, ``abc``)."""
    t = text.strip()
    if t.startswith("{"):
        try:
            v = json.loads(t)
        except ValueError:
            raise RestoreError(f"key {text!r}: not a JSON object") from None
        if not isinstance(v, dict) or not v:
            raise RestoreError(f"key {text!r}: a JSON object of the key columns, e.g. {{\"id\": 7}}")
        return v
    return t


# --- targets ------------------------------------------------------------------------------
class Target(Protocol):
    def describe(self) -> str: ...

    def write(self, result: RestoreResult) -> int:
        """Write the rows; the bytes written."""
        ...


def _sorted(result: RestoreResult) -> list[tuple[str, dict[str, Any]]]:
    def order(k: str) -> tuple[int, Any]:
        key = result.keys.get(k)
        vals = tuple(key.values()) if isinstance(key, dict) else (key,)
        # Numbers in numeric order, anything else as text after them.
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            return (0, vals)
        return (1, tuple(str(v) for v in vals))
    return sorted(result.rows.items(), key=lambda kv: order(kv[0]))


@dataclass
class JsonlTarget:
    """One JSON object per row (its columns), in key order; gzip when the path ends in ``.gz``."""

    path: str

    def describe(self) -> str:
        return f"jsonl {self.path}"

    def write(self, result: RestoreResult) -> int:
        import os
        import tempfile
        from pathlib import Path

        dest = Path(self.path)
        body = b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                        for _, r in _sorted(result))
        if dest.suffix == ".gz":
            body = gzip.compress(body, mtime=0)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".restore-")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, dest)  # never half-written
        return len(body)


@dataclass
class IndexTarget:
    """A new Elasticsearch index (refused when it exists), one document per row, ``_id`` the key
    as the mirror spells it; mapped dynamically (the archive keeps values, not the column types)."""

    name: str
    url: str
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    batch: int = 1000

    def describe(self) -> str:
        return f"index {self.name}"

    def write(self, result: RestoreResult) -> int:
        from elasticsearch import Elasticsearch

        es = Elasticsearch(self.url, request_timeout=120, **self.client_kwargs)
        if es.indices.exists(index=self.name):
            raise RestoreError(f"index {self.name} exists: restore into a new index (then point an alias at it)")
        es.indices.create(index=self.name)
        total = 0
        items = _sorted(result)
        for i in range(0, len(items), self.batch):
            ops: list[dict[str, Any]] = []
            for kid, row in items[i:i + self.batch]:
                ops.append({"index": {"_index": self.name, "_id": kid}})
                ops.append(row)
                total += len(json.dumps(row))
            r = es.bulk(operations=ops, refresh=False)
            if r.get("errors"):
                bad = next(x for x in r["items"] if x["index"].get("error"))
                raise RestoreError(f"index {self.name}: Elasticsearch refused a row: "
                                   f"{bad['index']['error'].get('type')}")
        es.indices.refresh(index=self.name)
        return total


@dataclass
class PostgresTarget:
    """Rows INSERTed into ``table`` (``schema.table`` or ``table``) of the database the DSN names.

    An existing table must be empty (create it like the source for exact types: ``CREATE TABLE
    restored (LIKE public.orders INCLUDING ALL)``); a missing one is created with types read from
    the JSON values (integer -> bigint, number -> numeric, boolean, object -> jsonb, text)."""

    dsn: str
    table: str
    label: str = ""

    def describe(self) -> str:
        return f"postgres {self.label or '<dsn>'} {self.table}"

    def write(self, result: RestoreResult) -> int:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        schema, _, name = self.table.rpartition(".")
        ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        items = _sorted(result)
        columns: list[str] = []
        for _, row in items:
            for c in row:
                if c not in columns:
                    columns.append(c)
        with psycopg.connect(self.dsn) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0] is not None  # type: ignore[index]
            if exists:
                if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident)).fetchone()[0]:  # type: ignore[index]
                    raise RestoreError(f"table {self.table} is not empty: restore into an empty or a new table")
            else:
                defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(c, items))) for c in columns]
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(defs)))
            total = 0
            # Rows grouped by their columns (a column added or dropped over the table's life), each
            # group sent with executemany (pipelined), in one transaction: all rows or none.
            groups: dict[tuple[str, ...], list[list[Any]]] = {}
            for _, row in items:
                groups.setdefault(tuple(row), []).append(
                    [Jsonb(v) if isinstance(v, (dict, list)) else v for v in row.values()])
                total += len(json.dumps(row))
            with conn.cursor() as cur:
                for cols, values in groups.items():
                    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        ident, sql.SQL(", ").join(map(sql.Identifier, cols)),
                        sql.SQL(", ").join(sql.Placeholder() * len(cols)))
                    for i in range(0, len(values), 5000):
                        cur.executemany(stmt, values[i:i + 5000])
            conn.commit()
        return total


def _pg_type(column: str, items: list[tuple[str, dict[str, Any]]]) -> str:
    kinds = {type(r[column]) for _, r in items if r.get(column) is not None}
    if kinds <= {int}:
        return "bigint" if kinds else "text"
    if kinds <= {int, float}:
        return "numeric"
    if kinds == {bool}:
        return "boolean"
    if kinds <= {dict, list}:
        return "jsonb"
    return "text"


def restore(store: ArchiveStore, connector: str, table: str, cut: Cut, target: Target,
            on_progress: Callable[[Progress], None] | None = None) -> RestoreResult:
    """Rebuild ``table`` as of ``cut`` and write it to ``target``."""
    result = restore_rows(store, connector, table, cut, on_progress)
    result.target = target.describe()
    result.written_bytes = target.write(result)
    return result
