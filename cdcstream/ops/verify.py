"""``cdcstream verify``: compare a source table with its mirror, row by row.

Both sides are reduced to one digest per primary key, computed from *canonical* values:
the column's type in the source catalog decides the form (a NUMERIC compares as an exact
decimal, a timestamp as UTC microseconds, bytes as base64, JSON by content), so the exact
text of ``19.90`` vs ``19.9`` or ``...Z`` vs ``+00:00`` is never drift, while a lost
update, a missing or resurrected row, or a truncated TOAST value is.

* ``index_only`` / ``full``: the row index (``<alias>``); for ``full`` also the chunks
  index, against chunks cut *now* from the source text with the worker's chunker
  settings (ids, hashes and an embedding on every chunk).
* ``archive``: the archive is replayed (latest change per key by source position) and
  compared like a mirror; every change event must be there exactly once.

``--full`` reads every row (memory: one 16-byte digest per row and side); ``--sample N``
checks N random keys plus the row counts. ``--settle S`` re-checks drifting keys for up
to S seconds, so rows still in flight through Kafka are not reported.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from cdcstream.core.config import Config, ConnectorSpec, ConnectorTableConfig, ProcessingProfile
from cdcstream.core.events import NONFINITE_TEXT, doc_id, is_hashed_id
from cdcstream.core.route import Route
from cdcstream.pipeline.chunking import Chunker

Kind = Literal["int", "float4", "float8", "decimal", "bool", "text", "ts", "tstz", "date", "time", "bytes",
               "json", "hstore", "point", "interval", "other"]
MAX_DETAILS = 20

_PG_KINDS: dict[str, Kind] = {
    "smallint": "int", "integer": "int", "bigint": "int", "real": "float4", "double precision": "float8",
    "numeric": "decimal", "boolean": "bool", "timestamp without time zone": "ts",
    "timestamp with time zone": "tstz", "date": "date", "time without time zone": "time", "bytea": "bytes",
    "json": "json", "jsonb": "json", "interval": "interval", "ARRAY": "json", "point": "point",
}
# PostgreSQL types information_schema calls USER-DEFINED, by udt_name.
_PG_UDT_KINDS: dict[str, Kind] = {"hstore": "hstore"}
_MY_KINDS: dict[str, Kind] = {
    "tinyint": "int", "smallint": "int", "mediumint": "int", "int": "int", "bigint": "int", "year": "int",
    "float": "float4", "double": "float8", "decimal": "decimal", "datetime": "ts", "timestamp": "tstz",
    "date": "date", "time": "time", "blob": "bytes", "tinyblob": "bytes", "mediumblob": "bytes",
    "longblob": "bytes", "binary": "bytes", "varbinary": "bytes", "json": "json",
}


class VerifyError(RuntimeError):
    """Verification could not run (no such table, no key, mirror unreachable): exit 2."""


# --- canonical values ------------------------------------------------------------------
def _utc_naive(v: dt.datetime) -> dt.datetime:
    return v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo else v


def _as_datetime(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, (int, float)):
        return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=v)
    return dt.datetime.fromisoformat(str(v))


def _as_time(v: Any) -> dt.time:
    if isinstance(v, dt.time):
        return v
    if isinstance(v, dt.timedelta):  # MariaDB TIME comes back as a duration
        us = int(v.total_seconds() * 1_000_000) % 86_400_000_000
        return (dt.datetime.min + dt.timedelta(microseconds=us)).time()
    return dt.time.fromisoformat(str(v))


def _finite_json(v: Any) -> Any:
    # NaN/+-Infinity as the mirror keeps them (their text): JSON has no such numbers.
    if isinstance(v, float) and not math.isfinite(v):
        return NONFINITE_TEXT[repr(v)]
    if isinstance(v, dict):
        return {k: _finite_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_json(x) for x in v]
    return v


def _point(v: Any) -> str:
    """(x, y) of a PostgreSQL point: the driver's text "(x,y)", the mirror's {"x", "y"} or an
    index made before points were planar, {"lat": y, "lon": x}."""
    if isinstance(v, dict):
        x, y = (v["x"], v["y"]) if "x" in v else (v["lon"], v["lat"])
    else:
        x, y = str(v).strip().strip("()").split(",")
    return f"({format(float(x), '.15g')},{format(float(y), '.15g')})"


def canonical(kind: Kind, v: Any) -> Any:
    """The comparable form of a value as the source driver or the mirror gives it."""
    if v is None:
        return None
    try:
        match kind:
            case "int":
                return int(v)
            case "float4":
                return format(float(v), ".6g")
            case "float8":
                return format(float(v), ".15g")
            case "decimal":
                d = Decimal(str(v))
                return format(d.normalize(), "f") if d.is_finite() else str(d)
            case "bool":
                return bool(v)
            case "ts" | "tstz":
                return _utc_naive(_as_datetime(v)).isoformat(timespec="microseconds")
            case "date":
                return (v.date() if isinstance(v, dt.datetime) else
                        v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))).isoformat()
            case "time":
                return _as_time(v).isoformat(timespec="microseconds")
            case "bytes":
                return base64.b64encode(bytes(v)).decode() if isinstance(v, (bytes, bytearray, memoryview)) else v
            case "json" | "hstore":
                return json.dumps(_finite_json(json.loads(v) if isinstance(v, str) else v), sort_keys=True,
                                  default=str)
            case "point":
                return _point(v)
            case "interval":
                return int(v.total_seconds() * 1_000_000) if isinstance(v, dt.timedelta) else int(v)
            case _:
                return str(v)
    except (ValueError, TypeError, InvalidOperation):
        # A value of the wrong shape is a difference to report, not a crash.
        return f"!{type(v).__name__}:{v!r}"


def row_digest(columns: list[tuple[str, Kind]], row: dict[str, Any]) -> bytes:
    vals = [canonical(k, row[c]) if c in row else "!absent" for c, k in columns]
    return hashlib.blake2b(json.dumps(vals, default=str).encode(), digest_size=16).digest()


# --- source ----------------------------------------------------------------------------
class Source:
    """A source table read through the connector's own connection settings."""

    def __init__(self, spec: ConnectorSpec, table: ConnectorTableConfig, user: str, password: str) -> None:
        self.spec, self.table = spec, table
        self.kind = spec.connection.kind
        c = spec.connection
        if self.kind == "postgres":
            import psycopg

            self.conn: Any = psycopg.connect(host=c.host, port=c.effective_port, dbname=c.database, user=user,
                                             password=password, autocommit=True, connect_timeout=10,
                                             sslmode=c.tls.mode,
                                             sslrootcert=str(c.tls.ca_file) if c.tls.ca_file else None)
            self.conn.execute("SET TIME ZONE 'UTC'")
        else:
            import pymysql

            self.conn = pymysql.connect(host=c.host, port=c.effective_port, user=user, password=password,
                                        database=c.database, autocommit=True, connect_timeout=10,
                                        init_command="SET time_zone = '+00:00'")
        self.columns = self._columns()
        self.key = list(table.id_columns) or self._primary_key()
        if not self.key:
            raise VerifyError(f"{table.name} has no primary key and no id_columns in the config: rows have no "
                              f"identity to compare")

    def close(self) -> None:
        self.conn.close()

    def _q(self, name: str) -> str:
        # Identifiers from the catalog and the validated config, quoted with their quotes doubled.
        if self.kind == "postgres":
            return '"' + name.replace('"', '""') + '"'
        return "`" + name.replace("`", "``") + "`"

    @property
    def qualified(self) -> str:
        return f"{self._q(self.table.schema_name)}.{self._q(self.table.table_name)}"

    def _rows(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "postgres":
            return list(self.conn.execute(statement, params).fetchall())
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def _columns(self) -> list[tuple[str, Kind]]:
        udt = ", udt_name" if self.kind == "postgres" else ", data_type"
        rows = self._rows(f"SELECT column_name, data_type{udt} FROM information_schema.columns "  # noqa: S608
                          "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                          (self.table.schema_name, self.table.table_name))
        if not rows:
            raise VerifyError(f"{self.table.name}: no such table in {self.spec.connection.database} "
                              f"(or no privilege to see it)")
        if self.kind == "postgres":
            cols = [(str(n), _PG_UDT_KINDS.get(str(u)) or _PG_KINDS.get(str(t), "text")) for n, t, u in rows]
        else:
            cols = [(str(n), _MY_KINDS.get(str(t).lower(), "text")) for n, t, _ in rows]
        if self.table.include_columns:
            cols = [c for c in cols if c[0] in self.table.include_columns]
        return [c for c in cols if c[0] not in self.table.exclude_columns]

    def _primary_key(self) -> list[str]:
        if self.kind == "postgres":
            rows = self._rows("SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                              "JOIN pg_attribute a ON a.attnum = k.attnum WHERE i.indisprimary "
                              "AND i.indrelid = %s::regclass AND a.attrelid = i.indrelid ORDER BY k.n",
                              (self.qualified,))
        else:
            rows = self._rows("SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = %s "
                              "AND table_name = %s AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
                              (self.table.schema_name, self.table.table_name))
        return [str(r[0]) for r in rows]

    def _select(self) -> str:
        # hstore is read as JSON, the form Debezium sends (hstore.handling.mode=json).
        cols = ", ".join(f"{self._q(c)}::json" if k == "hstore" else self._q(c) for c, k in self.columns)
        return f"SELECT {cols} FROM {self.qualified}"  # noqa: S608 - quoted identifiers, no values

    def count(self) -> int:
        return int(self._rows(f"SELECT count(*) FROM {self.qualified}")[0][0])  # noqa: S608 - quoted identifiers

    def _as_dict(self, r: tuple[Any, ...]) -> dict[str, Any]:
        return {c: v for (c, _), v in zip(self.columns, r, strict=True)}

    def doc_id(self, row: dict[str, Any]) -> str:
        # The same rule as the pipeline's (events.doc_id) applied to the key columns in key order.
        return doc_id({k: _key_value(row[k]) for k in self.key})

    def scan(self) -> Iterator[dict[str, Any]]:
        if self.kind == "postgres":
            # A server-side cursor (rows stream, never all in memory) lives in a transaction,
            # which is also one consistent snapshot of the table.
            with self.conn.transaction(), self.conn.cursor(name="cdcstream_verify") as cur:
                cur.itersize = 2000
                cur.execute(self._select())
                for r in cur:
                    yield self._as_dict(r)
        else:
            import pymysql.cursors

            with self.conn.cursor(pymysql.cursors.SSCursor) as cur:
                cur.execute(self._select())
                for r in cur:
                    yield self._as_dict(r)

    def sample(self, n: int) -> list[dict[str, Any]]:
        rnd = "random()" if self.kind == "postgres" else "RAND()"
        return [self._as_dict(r) for r in self._rows(f"{self._select()} ORDER BY {rnd} LIMIT {int(n)}")]

    def by_ids(self, ids: Iterable[str], rows_by_id: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
        """Rows for document ids (single-column keys by value; composite keys by rescanning)."""
        want = set(ids)
        if not want:
            return {}
        if len(self.key) == 1 and not any(is_hashed_id(i) for i in want):
            # (A key too long for an Elasticsearch _id has a hashed id: found by rescanning.)
            col = self.key[0]
            out: dict[str, dict[str, Any]] = {}
            todo = sorted(want)
            for i in range(0, len(todo), 500):
                part = todo[i:i + 500]
                cast = "::text" if self.kind == "postgres" else ""
                marks = ", ".join(["%s"] * len(part))
                for r in self._rows(f"{self._select()} WHERE {self._q(col)}{cast} IN ({marks})", tuple(part)):
                    row = self._as_dict(r)
                    out[self.doc_id(row)] = row
            return out
        return {did: r for r in self.scan() if (did := self.doc_id(r)) in want}


def _key_value(v: Any) -> Any:
    # Debezium's key values, as the pipeline decodes them, for the driver's Python values.
    if isinstance(v, dt.datetime):
        return _utc_naive(v)
    return v


# --- mirror ----------------------------------------------------------------------------
class EsReader:
    def __init__(self, es: Any, alias: str) -> None:
        self.es, self.alias = es, alias

    def exists(self, index: str) -> bool:
        return bool(self.es.indices.exists_alias(name=index) or self.es.indices.exists(index=index))

    def count(self, index: str | None = None) -> int:
        index = index or self.alias
        self.es.indices.refresh(index=index)
        return int(self.es.count(index=index)["count"])

    def scan(self, index: str, source: list[str] | bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
        self.es.indices.refresh(index=index)
        r = self.es.search(index=index, scroll="2m", size=2000, sort=["_doc"], source=source)
        sid = r.get("_scroll_id")
        try:
            while r["hits"]["hits"]:
                for h in r["hits"]["hits"]:
                    yield h["_id"], h.get("_source", {})
                r = self.es.scroll(scroll_id=sid, scroll="2m")
                sid = r.get("_scroll_id")
        finally:
            if sid:
                self.es.clear_scroll(scroll_id=sid)

    def get_many(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 1000):
            r = self.es.mget(index=self.alias, ids=ids[i:i + 1000])
            out.update({d["_id"]: d["_source"] for d in r["docs"] if d.get("found")})
        return out

    def chunks_of(self, index: str, parents: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in parents}
        self.es.indices.refresh(index=index)
        for i in range(0, len(parents), 200):
            r = self.es.search(index=index, size=10_000, query={"terms": {"parent_id": parents[i:i + 200]}},
                               source_excludes=["text", "row"])
            for h in r["hits"]["hits"]:
                out.setdefault(h["_source"]["parent_id"], {})[h["_id"]] = h["_source"]
        return out


class ArchiveReplay:
    """The final state of a table replayed from its archived change events."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.duplicates: list[str] = []
        latest: dict[str, tuple[int, str, dict[str, Any] | None]] = {}
        seen: set[tuple[str, int]] = set()

        async def load() -> list[bytes]:
            names = await store.list(prefix)
            return [await store.get(n) for n in sorted(names)]

        for body in asyncio.run(load()):
            for line in gzip.decompress(body).splitlines():
                rec = json.loads(line)
                self.events += 1
                key = doc_id(rec["key"]) if isinstance(rec.get("key"), dict) else str(rec.get("key"))
                pos = (key, int(rec["position"]["version"]))
                if pos in seen:
                    self.duplicates.append(f"{key}@{rec['position']['text']}")
                seen.add(pos)
                if key not in latest or pos[1] >= latest[key][0]:
                    latest[key] = (pos[1], rec["op"], rec.get("after"))
        self.rows = {k: after for k, (_, op, after) in latest.items() if op != "d" and after is not None}


# --- comparison ------------------------------------------------------------------------
@dataclass
class Drift:
    key: str
    kind: Literal["missing", "extra", "differs", "chunks", "archived-twice", "count"]
    detail: str = ""


@dataclass
class Report:
    table: str
    profile: str
    mode: str
    source_rows: int = 0
    mirror_rows: int = 0
    checked: int = 0
    chunks_checked: int = 0
    archive_events: int = 0
    drift: list[Drift] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.drift

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "profile": self.profile, "mode": self.mode, "source_rows": self.source_rows,
                "mirror_rows": self.mirror_rows, "checked": self.checked, "chunks_checked": self.chunks_checked,
                "archive_events": self.archive_events, "ok": self.ok, "seconds": round(self.seconds, 3),
                "drift": [{"key": d.key, "kind": d.kind, "detail": d.detail} for d in self.drift]}

    def text(self) -> str:
        lines = [f"verify {self.table} ({self.profile}, {self.mode}): source {self.source_rows} rows, "
                 f"mirror {self.mirror_rows}, checked {self.checked} rows"
                 + (f" and {self.chunks_checked} chunks" if self.chunks_checked else "")
                 + (f", {self.archive_events} archived events" if self.archive_events else "")
                 + f" in {self.seconds:.1f}s"]
        if self.ok:
            lines.append("no drift")
        else:
            by_kind: dict[str, int] = {}
            for d in self.drift:
                by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
            lines.append("DRIFT: " + ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())))
            for d in self.drift[:MAX_DETAILS]:
                lines.append(f"  {d.kind:<14} {d.key}  {d.detail}".rstrip())
            if len(self.drift) > MAX_DETAILS:
                lines.append(f"  ... and {len(self.drift) - MAX_DETAILS} more (--json lists all)")
        return "\n".join(lines)


def _differing_columns(columns: list[tuple[str, Kind]], src: dict[str, Any], mir: dict[str, Any]) -> str:
    out = []
    for c, k in columns:
        a = canonical(k, src.get(c))
        b = canonical(k, mir[c]) if c in mir else "!absent"
        if a != b:
            out.append(f"{c}: source={str(a)[:60]!r} mirror={str(b)[:60]!r}")
    return "; ".join(out) or "(key columns)"


def expected_chunks(chunker: Chunker, text_columns: tuple[str, ...], row: dict[str, Any], did: str
                    ) -> dict[str, str]:
    """Chunk id -> hash, as the pipeline cuts the row's current text."""
    from cdcstream.pipeline.processor import chunk_id

    out: dict[str, str] = {}
    for col in text_columns:
        v = row.get(col)
        for c in chunker.chunk(col, v if isinstance(v, str) else None):
            out[chunk_id(did, c.column, c.n)] = c.hash
    return out


class Verifier:
    def __init__(self, route: Route, profile: ProcessingProfile, source: Source, *, es: EsReader | None = None,
                 archive: Callable[[], ArchiveReplay] | None = None, chunker: Chunker | None = None,
                 embed_dims: int | None = None) -> None:
        self.route, self.profile, self.src = route, profile, source
        self.es, self.archive, self.chunker, self.embed_dims = es, archive, chunker, embed_dims
        self._replay: ArchiveReplay | None = None
        if profile.indexes and es is None:
            raise VerifyError("this table is indexed but no Elasticsearch is configured (set elasticsearch_url)")
        if profile.archives and archive is None:
            raise VerifyError("this table is archived but no archive is configured (set archive_url)")
        if profile.embeds and chunker is None:
            raise VerifyError("profile full needs the chunker settings (embed_url, chunk_tokens)")

    # The mirror as key -> row, whichever sink holds it.
    # The mirror's rows for some keys, whichever sink holds it (full checks stream digests instead).
    def _mirror_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if self.profile.archives:
            rows = self._replayed().rows
            return {i: rows[i] for i in ids if i in rows}
        assert self.es is not None
        return self.es.get_many(ids)

    def _mirror_digests(self, cols: list[tuple[str, Kind]]) -> dict[str, bytes]:
        # Streamed: a full check holds digests, never a million documents.
        if self.profile.archives:
            return {k: row_digest(cols, r) for k, r in self._replayed().rows.items()}
        assert self.es is not None
        return {k: row_digest(cols, doc) for k, doc in self.es.scan(self.es.alias)}

    def _replayed(self) -> ArchiveReplay:
        if self._replay is None:
            assert self.archive is not None
            self._replay = self.archive()
        return self._replay

    def run(self, mode: str, sample: int = 1000, settle_s: float = 0.0) -> Report:
        t0 = time.monotonic()
        rep = Report(str(self.route.table_id), self.profile.value, mode)
        drift = self._compare(rep, mode, sample)
        deadline = time.monotonic() + settle_s
        while drift and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
            self._replay = None
            drift = self._recheck(rep, drift)
        rep.drift = drift
        if self.profile.archives:
            rep.drift += [Drift(d, "archived-twice", "an event is in the archive more than once")
                          for d in self._replayed().duplicates]
            rep.archive_events = self._replayed().events
        rep.seconds = time.monotonic() - t0
        return rep

    def _compare(self, rep: Report, mode: str, sample: int) -> list[Drift]:
        cols = self.src.columns
        if mode == "full":
            src_rows: dict[str, dict[str, Any]] = {}
            src_digest: dict[str, bytes] = {}
            for row in self.src.scan():
                did = self.src.doc_id(row)
                src_digest[did] = row_digest(cols, row)
                if self.profile.embeds:
                    src_rows[did] = {c: row.get(c) for c in self.route.table.text_columns}
            mirror = self._mirror_digests(cols)
            rep.source_rows, rep.mirror_rows, rep.checked = len(src_digest), len(mirror), len(src_digest)
            drift = [Drift(k, "extra", "in the mirror, not in the source") for k in mirror if k not in src_digest]
            differing = []
            for k, dg in src_digest.items():
                if k not in mirror:
                    drift.append(Drift(k, "missing", "in the source, not in the mirror"))
                elif mirror[k] != dg:
                    differing.append(k)
            drift += self._explain(differing)
            if self.profile.embeds:
                drift += self._check_chunks(rep, {k: src_rows[k] for k in src_digest if k in mirror})
            return drift
        rows = self.src.sample(sample)
        rep.source_rows = self.src.count()
        rep.mirror_rows = self._mirror_count()
        by_id = {self.src.doc_id(r): r for r in rows}
        rep.checked = len(by_id)
        drift = self._diff_rows(by_id, self._mirror_rows(list(by_id)))
        if self.profile.embeds:
            drift += self._check_chunks(rep, by_id)
        if rep.source_rows != rep.mirror_rows:
            drift.append(Drift("*", "count", f"source has {rep.source_rows} rows, mirror {rep.mirror_rows}"))
        return drift

    def _mirror_count(self) -> int:
        if self.profile.archives:
            return len(self._replayed().rows)
        assert self.es is not None
        return self.es.count()

    def _explain(self, keys: list[str]) -> list[Drift]:
        src = self.src.by_ids(keys[:MAX_DETAILS]) if keys else {}
        mirror = self._mirror_rows(keys[:MAX_DETAILS]) if keys else {}
        out = []
        for k in keys:
            detail = _differing_columns(self.src.columns, src[k], mirror[k]) if k in src and k in mirror else ""
            out.append(Drift(k, "differs", detail))
        return out

    def _diff_rows(self, src: dict[str, dict[str, Any]], mirror: dict[str, dict[str, Any]]) -> list[Drift]:
        cols = self.src.columns
        out = []
        for k, row in src.items():
            if k not in mirror:
                out.append(Drift(k, "missing", "in the source, not in the mirror"))
            elif row_digest(cols, mirror[k]) != row_digest(cols, row):
                out.append(Drift(k, "differs", _differing_columns(cols, row, mirror[k])))
        return out

    def _check_chunks(self, rep: Report, rows: dict[str, dict[str, Any]]) -> list[Drift]:
        assert self.es is not None and self.chunker is not None
        index = self.route.chunks_alias
        want = {k: expected_chunks(self.chunker, self.route.table.text_columns, r, k) for k, r in rows.items()}
        if not any(want.values()):
            return []
        have = self.es.chunks_of(index, list(want))
        out = []
        for k, exp in want.items():
            got = have.get(k, {})
            rep.chunks_checked += len(exp)
            problems = []
            missing = [c for c in exp if c not in got]
            stale = [c for c in got if c not in exp]
            changed = [c for c in exp if c in got and got[c].get("hash") != exp[c]]
            unembedded = [c for c in exp if c in got and not _has_vector(got[c], self.embed_dims)]
            if missing:
                problems.append(f"{len(missing)} missing (first {missing[0]})")
            if stale:
                problems.append(f"{len(stale)} stale (first {stale[0]})")
            if changed:
                problems.append(f"{len(changed)} with old text (first {changed[0]})")
            if unembedded:
                problems.append(f"{len(unembedded)} without an embedding")
            if problems:
                out.append(Drift(k, "chunks", "; ".join(problems)))
        return out

    def _recheck(self, rep: Report, drift: list[Drift]) -> list[Drift]:
        """Re-compare only the keys that drifted (rows in flight settle; real drift stays)."""
        keys = [d.key for d in drift if d.kind != "count"]
        src = self.src.by_ids(keys)
        mirror = self._mirror_rows(keys)
        out = [Drift(k, "extra", "in the mirror, not in the source") for k in keys if k in mirror and k not in src]
        out += self._diff_rows(src, mirror)
        if self.profile.embeds:
            out += self._check_chunks(Report(rep.table, rep.profile, rep.mode), {k: r for k, r in src.items()
                                                                               if k in mirror})
        # The counts from before the wait describe a mirror that has moved on since; rows that
        # arrived meanwhile (no key of ours) show up here only.
        rep.source_rows, rep.mirror_rows = self.src.count(), self._mirror_count()
        if rep.source_rows != rep.mirror_rows:
            out.append(Drift("*", "count", f"source has {rep.source_rows} rows, mirror {rep.mirror_rows}"))
        return out


def _has_vector(doc: dict[str, Any], dims: int | None) -> bool:
    v = doc.get("embedding")
    return isinstance(v, list) and len(v) > 0 and (dims is None or len(v) == dims)


def find_route(config: Config, table: str, connector: str | None = None) -> Route:
    """``schema.table`` (or ``connector/schema.table``) -> the configured route."""
    if "/" in table and connector is None:
        connector, table = table.split("/", 1)
    hits = [(c, t) for c, t in config.tables() if t.name == table and (connector is None or c.name == connector)]
    if not hits:
        known = ", ".join(f"{c.name}/{t.name}" for c, t in config.tables()) or "none"
        raise VerifyError(f"table {table!r} is not in the config (known: {known})")
    if len(hits) > 1:
        names = ", ".join(c.name for c, _ in hits)
        raise VerifyError(f"table {table!r} is captured by several connectors ({names}): use --connector")
    c, t = hits[0]
    return Route(c, t, c.table_id(t))


def live_profile(settings: Any, route: Route) -> ProcessingProfile | None:
    """The profile the running worker applies (profiles can be switched at runtime), if one answers.

    Asks with the read token (``api_read_token``, else ``api_token``), as the other CLI reads do. A
    worker that answers but refuses the token is an error, not "no worker": comparing against the
    config's profile when the table was switched at runtime reports drift that is not there (or
    misses drift that is)."""
    import requests

    from cdcstream.core.resolver import Resolver

    ref = settings.api_read_token or settings.api_token
    headers = {"Authorization": f"Bearer {Resolver().resolve(ref).get_secret_value()}"} if ref is not None else {}
    url = f"{settings.worker_api_url}/api/tables"
    try:
        r = requests.get(url, headers=headers, timeout=3, verify=settings.worker_verify)
    except requests.RequestException:
        return None
    if r.status_code in (401, 403):
        which = "was refused" if headers else "needs a token"
        raise VerifyError(f"the worker at {settings.worker_api_url} {which} (HTTP {r.status_code}) when asked for "
                          f"the table's live profile: set CDCSTREAM_API_READ_TOKEN (or CDCSTREAM_API_TOKEN) to the "
                          f"worker's read token, or pass --profile")
    try:
        tables = r.json()["tables"] if r.status_code == 200 else []
    except (ValueError, KeyError):
        return None
    for t in tables:
        if t.get("table") == route.table_id.key:
            return ProcessingProfile(t["profile"])
    return None


def open_verifier(settings: Any, config: Config, table: str, *, connector: str | None = None,
                  profile: ProcessingProfile | None = None) -> Verifier:
    """A verifier wired from the worker's own settings and config (same credentials, same chunker)."""
    from cdcstream.core.resolver import make_resolver
    from cdcstream.ops.credentials import resolve_credentials

    route = find_route(config, table, connector)
    resolver = make_resolver(settings)
    profile = profile or live_profile(settings, route) or route.table.profile
    creds = resolve_credentials(route.connector, resolver)
    source = Source(route.connector, route.table, creds.user, creds.password)

    def secret(ref: Any) -> str | None:
        return None if ref is None else str(resolver.resolve(ref).get_secret_value())

    es = None
    if profile.indexes and settings.es_http_url:
        from elasticsearch import Elasticsearch

        from cdcstream.sinks.elasticsearch import client_options

        kw = client_options(secret(settings.elasticsearch_user), secret(settings.elasticsearch_password),
                            secret(settings.elasticsearch_api_key), settings.elasticsearch_ca)
        reader = EsReader(Elasticsearch(settings.es_http_url, request_timeout=60, **kw), route.alias)
        if not reader.exists(route.alias):
            raise VerifyError(f"the mirror index {route.alias} does not exist: has the worker seen this table yet?")
        es = reader
    archive: Callable[[], ArchiveReplay] | None = None
    if profile.archives and settings.archive_url:
        from cdcstream.sinks.archive import open_store

        store = open_store(settings.archive_url, secret(settings.archive_access_key),
                           secret(settings.archive_secret_key))
        prefix = f"{route.table_id.connector}/{route.table_id.short}/"

        def replay() -> ArchiveReplay:
            return ArchiveReplay(store, prefix)
        archive = replay
    chunker = None
    if profile.embeds:
        from cdcstream.pipeline.tokens import get_encoding

        chunker = Chunker(get_encoding(settings.chunk_encoding), settings.effective_chunk_tokens,
                          settings.effective_chunk_overlap)
    return Verifier(route, profile, source, es=es, archive=archive,
                    chunker=chunker, embed_dims=settings.embed_dimensions)
