"""What the status page, ``/metrics`` and the JSON API report, gathered once per request.

Sources, and how each is read without blocking the event loop:

* counters per table – the ``stats`` GlobalTable, summed over partitions (``table_totals``):
  every worker holds all keys, so any worker answers with cluster-wide totals;
* connectors – Kafka Connect's REST API (blocking ``requests``) and, for PostgreSQL, the
  replication slot (blocking psycopg): both in the default executor, with a deadline;
* consumer lag – end offsets of the captured topics minus the consumer group's committed
  offsets, from a group-less aiokafka consumer and admin client (async). Faust's own
  consumer only knows the partitions assigned to *this* worker; the group's commits give
  the same figure on every worker;
* documents and chunks – ``_count`` on each alias (async Elasticsearch client);
* source rows (snapshot progress) – ``pg_class.reltuples`` (or ``count(*)`` when the
  table was never analysed) / ``information_schema.tables``: in the executor, cached 30 s.

Results are cached for a few seconds so an auto-refreshing page, Prometheus and the
CLI together cost one round of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cdcstream.core.config import ConnectorSpec, ProcessingProfile
from cdcstream.core.counters import OPS
from cdcstream.core.masking import mask_text
from cdcstream.core.route import Route, Router

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger(__name__)

BLOCKING_DEADLINE_S = 4.0
CACHE_S = 3.0
SOURCE_ROWS_CACHE_S = 30.0

T = TypeVar("T")


def table_id(route: Route) -> str:
    """The URL-safe table id: ``connector.schema.table``.

    Schema and table names are identifiers without dots (config validation), so the id
    splits unambiguously from the right even when the connector name has dots.
    """
    t = route.table_id
    return f"{t.connector}.{t.schema}.{t.table}"


def find_route(pipe: Pipeline, ident: str) -> Route | None:
    """A table by its id (``connector.schema.table``) or its key (``connector/db/schema/table``)."""
    if ident in pipe.router.by_key:
        return pipe.router.by_key[ident]
    for r in pipe.router.by_key.values():
        if table_id(r) == ident:
            return r
    return None


def live_profile(pipe: Pipeline, route: Route) -> tuple[ProcessingProfile, int]:
    live = pipe.tables.profiles.get(route.table_id.key)
    if live:
        return ProcessingProfile(live["profile"]), int(live.get("version", 0))
    return route.table.profile, 0


class TTLCache:
    """One value per key, refreshed at most every ``ttl`` seconds; concurrent callers share a refresh."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._values: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        hit = self._values.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]  # type: ignore[no-any-return]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._values.get(key)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]  # type: ignore[no-any-return]
            value = await make()
            self._values[key] = (time.monotonic(), value)
            return value


async def in_executor(fn: Callable[..., T], *args: Any, deadline: float = BLOCKING_DEADLINE_S) -> T:
    """Run a blocking call in the default executor; give up waiting after ``deadline``.

    A call that overruns keeps its thread until it ends (threads cannot be cancelled), but
    the page does not wait for it.
    """
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, fn, *args), timeout=deadline)


# --- connectors ------------------------------------------------------------------------
def connector_status(pipe: Pipeline, spec: ConnectorSpec) -> dict[str, Any]:
    """Blocking: Connect status, last error and (PostgreSQL) slot lag of one connector."""
    from cdcstream.ops.kconnect import ConnectClient, ConnectError

    out: dict[str, Any] = {"name": spec.name, "kind": spec.connection.kind, "state": "UNKNOWN", "worker": None,
                           "tasks": [], "error": None, "slot": None}
    client = ConnectClient(pipe.settings.connect_url, timeout=3.0, retries=0)
    try:
        st = client.status(spec.name)
    except ConnectError as e:
        out["state"] = "NOT_CREATED" if e.status == 404 else "UNREACHABLE"
        out["error"] = None if e.status == 404 else mask_text(str(e))[:500]
    else:
        out["state"], out["worker"] = st.state, st.worker
        out["tasks"] = [{"id": int(t.get("id", 0)), "state": t.get("state", "UNKNOWN"),
                         "worker": t.get("worker_id", "")} for t in st.tasks]
        trace = st.trace or next((t.get("trace") for t in st.tasks if t.get("trace")), None)
        if trace:
            # The first line names the exception; the rest is a Java stack nobody reads on a page.
            # Masked: a JDBC or driver message may quote a URL with its password, or a config.
            out["error"] = mask_text(trace.strip().splitlines()[0])[:500]
    if spec.connection.kind == "postgres":
        out["slot"] = _slot(pipe, spec)
    return out


def _slot(pipe: Pipeline, spec: ConnectorSpec) -> dict[str, Any] | None:
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.lifecycle import pg_slot

    try:
        return pg_slot(spec, resolve_credentials(spec, pipe.resolver))
    except Exception as e:  # noqa: BLE001 - a status page shows a failing source, it does not fail
        return {"error": f"{type(e).__name__}: {mask_text(str(e).splitlines()[0])[:300] if str(e) else ''}"}


async def connectors(pipe: Pipeline, cache: TTLCache) -> list[dict[str, Any]]:
    async def one(spec: ConnectorSpec) -> dict[str, Any]:
        async def make() -> dict[str, Any]:
            try:
                return await in_executor(connector_status, pipe, spec)
            except TimeoutError:
                return {"name": spec.name, "kind": spec.connection.kind, "state": "UNKNOWN", "worker": None,
                        "tasks": [], "error": f"no answer within {BLOCKING_DEADLINE_S:.0f}s", "slot": None}

        return await cache.get(f"connector:{spec.name}", make)

    return list(await asyncio.gather(*(one(s) for s in pipe.config.connectors)))


# --- source rows -----------------------------------------------------------------------
def source_rows(pipe: Pipeline, route: Route) -> int | None:
    """Blocking: an estimate of the source table's row count (for snapshot progress)."""
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.sourcedb import connect_mariadb, connect_postgres

    spec, t = route.connector, route.table
    creds = resolve_credentials(spec, pipe.resolver)
    if spec.connection.kind == "postgres":
        from psycopg import sql

        with connect_postgres(spec, creds) as conn:
            row = conn.execute("SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = "
                               "c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                               (t.schema_name, t.table_name)).fetchone()
            if row is None:
                return None
            if int(row[0]) >= 0:
                return int(row[0])
            # -1: never vacuumed/analysed (small, young tables): count exactly.
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(t.schema_name, t.table_name))).fetchone()[0])
    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_rows FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                    (t.schema_name, t.table_name))
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None


async def source_row_counts(pipe: Pipeline, cache: TTLCache) -> dict[str, int | None]:
    async def one(route: Route) -> int | None:
        async def make() -> int | None:
            try:
                return await in_executor(source_rows, pipe, route)
            except Exception as e:  # noqa: BLE001 - progress is optional information
                log.debug("source rows of %s: %s", route.table_id, e)
                return None

        return await cache.get(f"rows:{route.table_id.key}", make)

    routes = list(pipe.router.by_key.values())
    counts = await asyncio.gather(*(one(r) for r in routes))
    return {r.table_id.key: n for r, n in zip(routes, counts, strict=True)}


# --- documents -------------------------------------------------------------------------
async def doc_counts(pipe: Pipeline, cache: TTLCache) -> dict[str, int | None]:
    """``_count`` per alias (rows and chunks); None when the index does not exist or ES is down."""

    async def make() -> dict[str, int | None]:
        await pipe.ready()
        es = pipe.es
        aliases: list[str] = []
        for r in pipe.router.by_key.values():
            aliases += [r.alias, r.chunks_alias]
        if es is None:
            return dict.fromkeys(aliases)

        async def count(alias: str) -> int | None:
            try:
                resp = await asyncio.wait_for(es.count(index=alias), timeout=BLOCKING_DEADLINE_S)
                return int(resp["count"])
            except Exception:  # noqa: BLE001 - missing index (404) or ES down: unknown
                return None

        return dict(zip(aliases, await asyncio.gather(*(count(a) for a in aliases)), strict=True))

    return await cache.get("docs", make)


# --- lag and throughput ----------------------------------------------------------------
@dataclass
class Sample:
    ts: float
    events: int
    lag: int | None


class Sampler:
    """A ring of (time, events processed cluster-wide, consumer lag) samples, one per tick.

    Each worker keeps its own ring (in memory: a restarted worker starts a new chart); the
    figures in it are cluster-wide, so every worker draws about the same lines.
    """

    def __init__(self, pipe: Pipeline, maxlen: int) -> None:
        self.pipe = pipe
        self.ring: deque[Sample] = deque(maxlen=maxlen)
        self.lag: dict[str, int] = {}  # table key -> messages behind
        self.lag_error: str | None = None
        self.lag_ts = 0.0
        self._admin: Any = None
        self._consumer: Any = None

    async def tick(self) -> None:
        pass

        totals = table_totals(self.pipe)
        events = sum(int(v.get(f"op_{op}", 0)) for v in totals.values() for op in OPS)
        lag: int | None = None
        try:
            self.lag = await asyncio.wait_for(self._lag(), timeout=BLOCKING_DEADLINE_S)
            self.lag_error, self.lag_ts = None, time.time()
            lag = sum(self.lag.values())
        except Exception as e:  # noqa: BLE001 - Kafka hiccups must not stop sampling
            self.lag_error = f"{type(e).__name__}: {e}"[:300]
            await self.close()
        self.ring.append(Sample(time.time(), events, lag))

    async def _clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            boot = self.pipe.settings.kafka_bootstrap
            admin = AIOKafkaAdminClient(bootstrap_servers=boot, request_timeout_ms=4000)
            consumer = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None, enable_auto_commit=False,
                                        request_timeout_ms=4000)
            await admin.start()
            try:
                await consumer.start()
            except BaseException:
                await admin.close()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _lag(self) -> dict[str, int]:
        from aiokafka import TopicPartition

        topics = [t for t in self.pipe.data_topics if t in self.pipe.router.topics]
        if not topics:
            return {}
        admin, consumer = await self._clients()
        tps: list[TopicPartition] = []
        # A group-less consumer caches no partition metadata for unassigned topics: ask the admin client.
        for d in await admin.describe_topics(topics):
            if d.get("error_code") == 0:
                tps += [TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self.pipe.settings.app_id, partitions=tps)
        out: dict[str, int] = {}
        for tp in tps:
            c = committed.get(tp)
            done = c.offset if c is not None and c.offset >= 0 else 0
            key = self.pipe.router.topics[tp.topic].key
            out[key] = out.get(key, 0) + max(0, int(ends.get(tp, 0)) - done)
        return out

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
        self._admin = self._consumer = None

    def series(self) -> list[dict[str, Any]]:
        """Samples as events/s between ticks, and lag."""
        out: list[dict[str, Any]] = []
        prev: Sample | None = None
        for s in self.ring:
            rate = None
            if prev is not None and s.ts > prev.ts:
                rate = max(0.0, (s.events - prev.events) / (s.ts - prev.ts))
            out.append({"ts": s.ts, "events": s.events, "events_per_s": rate, "lag": s.lag})
            prev = s
        return out


# --- the model every view renders ------------------------------------------------------
class StatusService:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.cache = TTLCache(CACHE_S)
        self.slow_cache = TTLCache(SOURCE_ROWS_CACHE_S)
        self.sampler = Sampler(pipe, pipe.settings.status_samples)

    def table_view(self, route: Route, totals: dict[str, Any], docs: dict[str, int | None],
                   rows: dict[str, int | None]) -> dict[str, Any]:
        from cdcstream.ops.generations import current_life, generation_key

        key = route.table_id.key
        profile, version = live_profile(self.pipe, route)
        # Counted from the connector's newest generation (a connector re-created under the same
        # name starts again; cdcstream/ops/generations.py).
        stats = current_life(totals.get(key, {}), self.pipe.tables.stats.get(generation_key(route.connector.name)),
                             key)
        last = int(stats.get("last_event_ms", 0)) or None
        read = int(stats.get("op_r", 0))
        src = rows.get(key)
        started, finished = int(stats.get("snapshot_started_ms", 0)), int(stats.get("snapshot_finished_ms", 0))
        # Debezium marked the table's last snapshot row: done, whatever the table holds since.
        done = finished > 0 and finished >= started
        progress = 1.0 if done else None if not src else min(1.0, read / src)
        migrating = self.migrations()
        return {
            "id": table_id(route), "table": key, "name": str(route.table_id), "index": route.alias,
            "chunks_index": route.chunks_alias if profile.embeds else None,
            "profile": profile.value, "profile_version": version, "configured_profile": route.table.profile.value,
            "text_columns": list(route.table.text_columns), "connector": route.connector.name,
            "stats": stats,
            "events": {op: int(stats.get(f"op_{op}", 0)) for op in OPS},
            "last_event_ms": last, "last_event_age_s": None if last is None else max(0.0, time.time() - last / 1000),
            "lag": self.sampler.lag.get(key) if self.sampler.lag_ts else None,
            "documents": docs.get(route.alias), "chunks": docs.get(route.chunks_alias),
            "embed_tokens": int(stats.get("embed_tokens", 0)), "tokens_saved": int(stats.get("tokens_saved", 0)),
            "dlq": int(stats.get("dlq", 0)),
            # An index generation being rebuilt for a column's type change (row or chunks index).
            "migration": migrating.get(route.alias) or migrating.get(route.chunks_alias),
            # Spent, remaining and queued this period (None: no budget applies; docs/profiles.md).
            "embed_budget": self.pipe.ledger.view(key),
            "snapshot": {"rows_read": read, "source_rows": src, "progress": progress, "done": done,
                         "finished_ms": finished if done else None,
                         "duration_s": round((finished - started) / 1000, 1) if done and started else None},
        }

    async def tables(self, routes: list[Route] | None = None) -> list[dict[str, Any]]:
        pass

        docs, rows = await asyncio.gather(doc_counts(self.pipe, self.cache),
                                          source_row_counts(self.pipe, self.slow_cache))
        totals = table_totals(self.pipe)
        return [self.table_view(r, totals, docs, rows) for r in (routes or list(self.pipe.router.by_key.values()))]

    async def connectors(self) -> list[dict[str, Any]]:
        return await connectors(self.pipe, self.cache)

    def workers(self) -> dict[str, Any]:
        from cdcstream.runtime.control import LIVE_WITHIN_S

        now = time.time()
        out = {}
        for w, v in self.pipe.tables.workers.items():
            if v:
                out[w] = {**v, "live": now - float(v.get("ts", 0)) < LIVE_WITHIN_S}
        return out

    async def snapshot(self) -> dict[str, Any]:
        tables, conns = await asyncio.gather(self.tables(), self.connectors())
        return {"worker": self.pipe.worker_id, "ts": time.time(), "tables": tables, "connectors": conns,
                "workers": self.workers(), "series": self.sampler.series(), "lag_error": self.sampler.lag_error,
                "in_flight": {"messages": int(self.pipe.app.monitor.messages_active),
                              "cap": in_flight_cap(self.pipe.settings, self.pipe.router)},
                "migrations": list(self.migrations().values()),
                "blocked": self.blocked(), "embed_budget": self.embed_budget()}

    def embed_budget(self) -> dict[str, Any] | None:
        """The budget over all tables together (``CDCSTREAM_EMBED_BUDGET``), None if unset."""
        from cdcstream.pipeline.budget import ALL

        return self.pipe.ledger.view(ALL)

    def migrations(self) -> dict[str, dict[str, Any]]:
        """Index rebuilds in progress on this worker (alias -> copied, total, rate)."""
        mirror = self.pipe.mirror
        return {} if mirror is None else {m["index"]: m for m in mirror.migration_views()}

    def blocked(self) -> list[dict[str, Any]]:
        """Sinks this worker waits for (an operational error; nothing is acked meanwhile)."""
        b = self.pipe.checkpoint.blocked
        if b is None:
            return []
        return [{**b.view(), "worker": self.pipe.worker_id,
                 "for_s": round(max(0.0, time.time() - b.since_ms / 1000), 1)}]


def in_flight_cap(settings: Any, router: Router) -> int:
    """Events one worker can hold between fetch and commit: two polls of read-ahead (one in
    the stream buffer, one already fetched when the buffer fills), a batch, and the archive
    records held until their object fills (per partition of every archive table)."""
    archive_tables = sum(1 for r in router.by_key.values() if r.table.profile.archives)
    return int(2 * settings.read_ahead + settings.batch_size
            + archive_tables * settings.partitions * settings.archive_max_records)


def table_totals(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    """Cluster-wide counters per table, summed over partitions from the stats GlobalTable."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for key, v in pipe.tables.stats.items():
        if not v:
            continue
        tk = key.rsplit("|", 1)[0]
        for k, n in v.items():
            if k in ("last_event_ms", "updated_ms", "snapshot_finished_ms"):
                out[tk][k] = max(out[tk][k], int(n))
            elif k == "snapshot_started_ms":
                # Earliest start over the partitions; 0 means "not seen yet".
                out[tk][k] = min(out[tk][k] or int(n), int(n))
            elif isinstance(n, int):
                out[tk][k] += n
    return {k: dict(v) for k, v in out.items()}

