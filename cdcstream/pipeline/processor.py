"""Branch a batch of routed events by processing profile and write them to the sinks.

``BatchProcessor.process`` is the whole per-batch data path after decoding:

    archive     -> ArchiveBuffer (objects cut at record-determined boundaries) -> store
    index_only  -> row document (external version)                             -> Elasticsearch
    full        -> row document + chunks (tiktoken) -> embeddings (cache, then API) -> Elasticsearch

It returns what the agent must do afterwards (row-state writes, stats, DLQ entries,
which events are durable) and never writes Faust tables itself, so it runs the same in
unit tests with dict-backed state and in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cdcstream.core.config import ProcessingProfile
from cdcstream.core.events import ChangeEvent, Op, SnapshotMarker, bounded_id
from cdcstream.core.faults import crash_point
from cdcstream.core.route import Route, Router, RowState, is_stale, keep_toast, row_key
from cdcstream.pipeline.archive import ArchiveBuffer
from cdcstream.pipeline.budget import BudgetLedger
from cdcstream.pipeline.chunking import Chunk, Chunker
from cdcstream.pipeline.embeddings import Embedder
from cdcstream.pipeline.reembed import Vectors
from cdcstream.sinks.base import ArchiveObject, ArchiveStore, IndexOp, Mirror, OnWait, SinkUnavailable
from cdcstream.sinks.documents import META, field_mapping, jsonable, row_document, row_mapping
from cdcstream.sinks.embed_queue import QUEUE_FIELDS, EmbedQueue, PendingChunk

log = logging.getLogger(__name__)
BIG_TEXT_CHARS = 64 * 1024

EMBED_CACHE_INDEX = "cdcstream-embedding-cache"

Counters = dict[str, int]


@dataclass
class Outcome:
    """What one batch did."""

    # row key -> (new state or None to keep, index of the event that wrote it)
    states: dict[str, tuple[RowState, int]] = field(default_factory=dict)
    # (table key, partition) -> counter deltas
    stats: dict[tuple[str, int], Counters] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    dlq: list[tuple[int, str]] = field(default_factory=list)  # (event index, reason)
    # Events whose durability depends on a later archive flush (index in batch).
    held: list[int] = field(default_factory=list)
    # Archive objects written in this batch: (topic, partition, last offset) each.
    flushed: list[ArchiveObject] = field(default_factory=list)
    # TRUNCATEs applied in this batch: (table key, version).
    truncated: list[tuple[str, int]] = field(default_factory=list)
    last_event_ms: dict[tuple[str, int], int] = field(default_factory=dict)
    # (table key, partition) -> {"started_ms"/"finished_ms": ts} from source.snapshot markers.
    snapshot: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)

    def count(self, ev: ChangeEvent, name: str, n: int = 1) -> None:
        part = ev.origin.partition if ev.origin else 0
        self.stats[(ev.table.key, part)][name] += n


def cache_key(model: str, dims: int | None, chunk_hash: str) -> str:
    return hashlib.sha256(f"{model}|{dims or 0}|{chunk_hash}".encode()).hexdigest()[:40]


class BatchProcessor:
    def __init__(self, router: Router, es: Mirror | None, archive: ArchiveStore | None,
                 embedder: Embedder | None, chunker: Chunker | None, *,
                 archive_buffer: ArchiveBuffer | None = None, embed_dims: int | None = None,
                 record_cut: Callable[[ArchiveObject], Awaitable[None]] | None = None,
                 on_wait: OnWait | None = None,
                 truncated_at: Callable[[str], int] | None = None,
                 record_truncation: Callable[[str, int], Awaitable[None]] | None = None,
                 ledger: BudgetLedger | None = None, queue: EmbedQueue | None = None,
                 record_spend: Callable[[], Awaitable[None]] | None = None,
                 vectors: Vectors | None = None) -> None:
        self.router = router
        self.es = es
        self.archive = archive
        self.buffer = archive_buffer or ArchiveBuffer()
        self.embedder = embedder
        self.chunker = chunker
        self.embed_dims = embed_dims
        # Makes a cut durable before its object is stored, so a replay cuts the same objects.
        self.record_cut = record_cut
        self.on_wait = on_wait
        # The newest TRUNCATE applied per table (its version), and how to record one durably.
        self.truncated_at: Callable[[str], int] = truncated_at or (lambda _key: 0)
        self.record_truncation = record_truncation
        self._vec_lru: dict[str, list[float]] = {}
        self.archive_retries = 0
        # Token budgets: the ledger of spend, the queue of chunks waiting, and how the spend is
        # made durable (before the tokens are sent: a restart must not forget them).
        self.ledger = ledger
        self.queue = queue
        self.record_spend = record_spend
        # Per chunks alias: the model/size its writes use (the serving generation's until a
        # re-embed runs); None: always the embedder's (tests, tools).
        self.vectors = vectors

    # ------------------------------------------------------------------------------------
    async def process(self, events: list[ChangeEvent | None], profile_of: Callable[[ChangeEvent], ProcessingProfile],
                      get_state: Callable[[str], RowState | None], now_ms: int | None = None) -> Outcome:
        """Apply ``events`` (None entries are tombstones/ignored records) to the sinks."""
        out = Outcome()
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        index_ops: list[IndexOp] = []
        full_rows: list[tuple[int, ChangeEvent, Route, RowState | None]] = []
        toast_missing: list[tuple[int, ChangeEvent, Route, RowState | None, list[IndexOp]]] = []
        mappings: dict[str, dict[str, Any]] = {}
        mapped: dict[str, dict[str, Any]] = {}  # alias -> the row schema its mapping was made from
        schema_at: dict[str, int] = {}  # alias -> source version of an event with that schema
        seen: dict[str, RowState | None] = {}
        truncates: list[tuple[int, ChangeEvent, Route]] = []
        table_profiles: dict[str, ProcessingProfile] = {}
        truncated: dict[str, int] = {}

        # Row key -> its state before this batch: what the index holds for the row, since only
        # the newest change per row in a batch writes to the index (coalescing, below).
        before: dict[str, RowState | None] = {}
        applied: dict[int, str] = {}  # event index -> row key, for the changes applied to row state

        def state_of(rk: str) -> RowState | None:
            if rk in seen:
                return seen[rk]
            if rk not in before:
                before[rk] = get_state(rk)
            return before[rk]

        for i, ev in enumerate(events):
            if ev is None:
                continue
            route = self.router.route(ev.table)
            if route is None:
                out.dlq.append((i, f"table {ev.table} is not in the config"))
                continue
            out.count(ev, f"op_{ev.op.value}")
            tp = (ev.table.key, ev.origin.partition if ev.origin else 0)
            out.last_event_ms[tp] = max(out.last_event_ms.get(tp, 0), ev.ts_source_ms)
            if ev.snapshot.in_snapshot:
                track_snapshot(out, tp, ev)
            # Once per table and batch (a lookup in a Faust table is not cheap); nothing changes
            # them before this loop ends (it never awaits).
            tkey = ev.table.key
            if tkey not in table_profiles:
                table_profiles[tkey] = profile_of(ev)
                truncated[tkey] = self.truncated_at(tkey)
            profile = table_profiles[tkey]
            if profile.archives:
                if self.buffer.duplicate(ev):
                    out.count(ev, "duplicates")
                    continue
                for obj in self.buffer.add(ev, time.monotonic()):
                    out.flushed.append(obj)
                out.held.append(i)
                continue
            if ev.op is Op.TRUNCATE:
                truncates.append((i, ev, route))
                continue
            rk = row_key(ev.table, ev.doc_id)
            state = state_of(rk)
            # A change older than a TRUNCATE already applied (a row that reached another
            # partition late) is stale: the truncate removed it.
            if is_stale(ev, state, now_ms) or ev.position.version < truncated[tkey]:
                out.count(ev, "stale")
                continue
            new_state = RowState(version=ev.position.version)
            if ev.op is Op.DELETE:
                new_state.deleted, new_state.deleted_at_ms = True, now_ms
                index_ops.append(IndexOp("delete", route.alias, ev.doc_id, ev.position.version, ref=i))
                indexed = before.get(rk)
                if profile.embeds and indexed is not None:
                    for col, hashes in indexed.chunks.items():
                        for n in range(len(hashes)):
                            index_ops.append(IndexOp("delete", route.chunks_alias, chunk_id(ev.doc_id, col, n),
                                                     ev.position.version, ref=i))
            else:
                assert ev.after is not None
                if ev.unavailable:
                    filled = {c: state.toast[c] for c in ev.unavailable if state and c in state.toast}
                    ev.after.update(filled)
                    out.count(ev, "toast_filled", len(filled))
                    missing = [c for c in ev.unavailable if c not in filled]
                    if missing:
                        toast_missing.append((i, ev, route, state, []))
                new_state.toast = keep_toast(ev.after)
                if (ev.row_schema and mapped.get(route.alias) is not ev.row_schema
                        and ev.position.version >= schema_at.get(route.alias, -1)):
                    # Once per schema and batch: decoding shares one row schema among its events.
                    # The newest schema wins: an older one from another partition later in the
                    # batch would hide a type change (its event was dead-lettered, found by
                    # tests/e2e/test_migration.py).
                    mapped[route.alias] = ev.row_schema
                    mappings[route.alias] = row_mapping(ev.row_schema, route.table.text_columns)
                    schema_at[route.alias] = ev.position.version
                index_ops.append(IndexOp("index", route.alias, ev.doc_id, ev.position.version, ref=i))
                if profile.embeds:
                    # The chunks to replace are those in the index, not an earlier change's of this batch.
                    full_rows.append((i, ev, route, before.get(rk)))
            seen[rk] = new_state
            applied[i] = rk
            # Every applied change writes its row state, index_only included. Writing only delete
            # markers and TOAST changes (issue 19, lever 1: -28% CPU) let the deeper fault rounds
            # (10,000 changes, 12 kills, injected sink faults) end with 3 and 23 deleted rows back
            # in the mirror; with every state written the same run was clean. Replays must be stale
            # here, not left to Elasticsearch's external versions (whose tombstones expire after 60 s).
            out.states[rk] = (new_state, i)

        # Coalescing: of a row's changes in this batch only the newest reaches the index and the
        # embeddings API (the earlier ones still chain its row state: TOAST values, staleness).
        # Elasticsearch's external versions would end at the same documents, after indexing each
        # superseded one and embedding its text: TPC-B updates a branch row and ten teller rows
        # in every transaction, so most of a busy batch is superseded (docs/benchmarks.md).
        superseded = {i for i, rk in applied.items() if out.states[rk][1] != i}
        if superseded:
            for i in superseded:
                ev_s = events[i]
                assert ev_s is not None
                out.count(ev_s, "coalesced")
            index_ops = [op for op in index_ops if op.ref not in superseded]
            dropped = [r for r in full_rows if r[0] in superseded]
            full_rows = [r for r in full_rows if r[0] not in superseded]
            if dropped:
                await self._count_coalesced_tokens(dropped, out)
            toast_missing = [t for t in toast_missing if t[0] not in superseded]

        if self.archive is not None:
            for obj in out.flushed:
                if self.record_cut is not None:
                    await self.record_cut(obj)
                await self.store(obj)
                crash_point("after_archive_put")
        elif out.flushed:
            raise SinkUnavailable("archive", "not configured", "a table has profile archive: set archive_url")

        if toast_missing:
            await self._fill_toast_from_mirror(toast_missing, out)
        # Documents are built only now: TOAST values may have come from the mirror.
        for op in index_ops:
            if op.action == "index":
                ev_i = events[op.ref]
                assert ev_i is not None and ev_i.after is not None
                op.doc = row_document(ev_i, ev_i.after)
        dims_of: dict[str, int | None] = {}  # chunks alias -> the vector size written to it
        # Embedding and writing chunks pass the re-embed gate together (pipeline/reembed.py).
        gate = self.vectors.gate.writing() if full_rows and self.vectors is not None else contextlib.nullcontext()
        async with gate:
            if full_rows:
                index_ops += await self._chunk_and_embed(full_rows, out, dims_of)
            if index_ops:
                if self.es is None:
                    raise SinkUnavailable("elasticsearch", "not configured",
                                          "a table has an indexing profile: set elasticsearch_url")
                for alias, mapping in mappings.items():
                    await self.es.ensure_index(alias, mapping, self.router.index_settings(alias), schema_at[alias])
                for ev_i, route, _ in ((events[i], r, s) for i, _, r, s in full_rows):
                    assert ev_i is not None
                    await self.es.ensure_index(route.chunks_alias,
                                               self._chunk_mapping(ev_i, route, dims_of[route.chunks_alias]),
                                               route.index_settings, ev_i.position.version)
                res = await self.es.apply(index_ops)
                crash_point("after_bulk")
                failed_events: set[int] = set()
                for op, reason in res.failed:
                    if op.ref not in failed_events:
                        failed_events.add(op.ref)
                        out.dlq.append((op.ref, f"Elasticsearch refused {op.action} of {op.index}/{op.id}: {reason}"))
                # A row whose document was refused keeps its old state: a fixed replay can apply it.
                for rk, (_, i) in list(out.states.items()):
                    if i in failed_events:
                        del out.states[rk]
                for op in index_ops:
                    ev_i = events[op.ref]
                    assert ev_i is not None
                    out.count(ev_i, "index_ops")
                if res.conflicts:
                    first = next(e for e in events if e is not None)
                    out.count(first, "version_conflicts", res.conflicts)
        if truncates:
            await self._truncate(truncates, out)
        return out

    async def _truncate(self, truncates: list[tuple[int, ChangeEvent, Route]], out: Outcome) -> None:
        """TRUNCATE as a barrier by version: the table's watermark is recorded first (every
        worker then treats older changes as stale), then every document older than it is
        deleted. Changes after the truncate, in this batch or on other partitions, carry newer
        versions and stay; a replayed truncate deletes nothing more."""
        if self.es is None:
            raise SinkUnavailable("elasticsearch", "not configured",
                                  "a table has an indexing profile: set elasticsearch_url")
        for _i, ev, route in truncates:
            version = ev.position.version
            if self.record_truncation is not None:
                await self.record_truncation(ev.table.key, version)
            n = await self.es.delete_older_than(route.alias, version)
            n += await self.es.delete_older_than(route.chunks_alias, version)
            crash_point("after_truncate")
            out.truncated.append((ev.table.key, version))
            out.count(ev, "truncated_docs", n)
            log.warning("truncate of %s at %s: %d documents older than it deleted", ev.table, ev.position.text, n)

    # ------------------------------------------------------------------------------------
    async def store(self, obj: ArchiveObject) -> None:
        """Store one archive object, retrying until the store answers.

        The object is cut from the buffer already, so the batch cannot be retried or sent to
        the DLQ without archiving its events twice or never: an outage pauses the stream.
        """
        assert self.archive is not None
        backoff = 0.5
        while True:
            try:
                await self.archive.put(obj)
                return
            except Exception as e:  # noqa: BLE001 - any store failure: retry, the events stay unacked
                self.archive_retries += 1
                if self.on_wait is not None:
                    self.on_wait("archive", e, f"storing {obj.name}")
                log.warning("archive: storing %s failed (%s: %s); retrying in %.1fs", obj.name,
                            type(e).__name__, str(e)[:200], backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _fill_toast_from_mirror(self, todo: list[tuple[int, ChangeEvent, Route, RowState | None,
                                                             list[IndexOp]]], out: Outcome) -> None:
        assert self.es is not None
        by_alias: dict[str, list[ChangeEvent]] = defaultdict(list)
        for _, ev, route, _, _ in todo:
            by_alias[route.alias].append(ev)
        for alias, evs in by_alias.items():
            docs = await self.es.get_many(alias, {e.doc_id for e in evs})
            for ev in evs:
                assert ev.after is not None
                doc = docs.get(ev.doc_id, {})
                for col in ev.unavailable:
                    if col in ev.after:
                        continue
                    if col in doc:
                        ev.after[col] = doc[col]
                        out.count(ev, "toast_from_mirror")
                    else:
                        # Omitted: the row document is written without the column rather than
                        # with the placeholder; counted so operators can set REPLICA IDENTITY FULL.
                        out.count(ev, "toast_missing")

    def _chunk_mapping(self, ev: ChangeEvent, route: Route, dims: int | None) -> dict[str, Any]:
        row_props = {f["field"]: field_mapping(f) for f in (ev.row_schema or {}).get("fields", ())
                     if f["field"] not in route.table.text_columns}
        vec: dict[str, Any] = {"type": "dense_vector", "dims": dims, "index": True,
                               "similarity": "cosine"}
        return {"dynamic": False, "properties": {
            "parent_id": {"type": "keyword"}, "column": {"type": "keyword"}, "n": {"type": "integer"},
            "text": {"type": "text"}, "hash": {"type": "keyword"}, "tokens": {"type": "integer"},
            "embedding": vec, "model": {"type": "keyword"}, "dimensions": {"type": "integer"},
            "row": {"properties": row_props}, **QUEUE_FIELDS,
            META: {"properties": {"version": {"type": "long"}, "table": {"type": "keyword"}}},
        }}

    async def _count_coalesced_tokens(self, rows: list[tuple[int, ChangeEvent, Route, RowState | None]],
                                      out: Outcome) -> None:
        """Tokens a re-embed-every-change pipeline would have sent for changes coalesced away:
        money saved, counted like unchanged chunks (``tokens_saved``)."""
        if self.chunker is None:
            return
        for _i, ev, route, _old in rows:
            out.count(ev, "tokens_saved", sum(c.tokens for c in await self._chunks_of(ev, route)))

    async def _chunks_of(self, ev: ChangeEvent, route: Route) -> list[Chunk]:
        """The chunks of a row's text columns, in column order."""
        assert self.chunker is not None and ev.after is not None
        chunks: list[Chunk] = []
        for col in route.table.text_columns:
            v = ev.after.get(col)
            text = v if isinstance(v, str) else None
            if text is not None and len(text) > BIG_TEXT_CHARS:
                # Tokenizing megabytes takes seconds: off the event loop, so heartbeats
                # and the web pages keep going.
                chunks += await asyncio.get_running_loop().run_in_executor(None, self.chunker.chunk, col, text)
            else:
                chunks += self.chunker.chunk(col, text)
        return chunks

    async def _chunk_and_embed(self, rows: list[tuple[int, ChangeEvent, Route, RowState | None]],
                               out: Outcome, dims_of: dict[str, int | None]) -> list[IndexOp]:
        """Chunks and vectors of ``rows``, each chunks alias embedded with the model and size
        its writes use now (``dims_of`` gets them)."""
        if self.chunker is None or self.embedder is None:
            raise SinkUnavailable("embeddings", "not configured", "a table has profile full: set embed_url")
        groups: dict[int, tuple[Embedder, int | None, list[tuple[int, ChangeEvent, Route, RowState | None]]]] = {}
        group_of: dict[str, int] = {}
        for row in rows:
            alias = row[2].chunks_alias
            if alias not in dims_of:
                emb, dims = (await self.vectors.for_alias(alias) if self.vectors is not None
                             else (self.embedder, self.embed_dims))
                dims_of[alias] = dims
                groups.setdefault(id(emb), (emb, dims, []))
                group_of[alias] = id(emb)
            groups[group_of[alias]][2].append(row)
        ops: list[IndexOp] = []
        for emb, dims, group in groups.values():
            ops += await self._chunk_and_embed_with(emb, dims, group, out)
        return ops

    async def _chunk_and_embed_with(self, embedder: Embedder, dims: int | None,
                                    rows: list[tuple[int, ChangeEvent, Route, RowState | None]],
                                    out: Outcome) -> list[IndexOp]:
        assert self.es is not None and self.chunker is not None
        ops: list[IndexOp] = []
        wanted: dict[str, tuple[Chunk, ChangeEvent]] = {}  # cache key -> first chunk needing it
        plan: list[tuple[int, ChangeEvent, Route, list[Chunk], RowState | None]] = []
        model = embedder.model
        for i, ev, route, old in rows:
            chunks = await self._chunks_of(ev, route)
            plan.append((i, ev, route, chunks, old))
            new_state = out.states[row_key(ev.table, ev.doc_id)][0]
            new_state.chunks = {}
            for c in chunks:
                new_state.chunks.setdefault(c.column, []).append(c.hash)
            for c in chunks:
                wanted.setdefault(cache_key(model, dims, c.hash), (c, ev))
            out.count(ev, "chunks", len(chunks))
        # 1) vectors from the in-process LRU, 2) the cache index, 3) the API.
        await self._cached(wanted)
        to_embed = [k for k in wanted if k not in self._vec_lru]
        send, queued = self._budget_split(to_embed, [(wanted[k][0].tokens, wanted[k][1].table.key) for k in to_embed])
        if send:
            await self._embed_keys(send, {k: (wanted[k][0].text, wanted[k][0].tokens) for k in to_embed},
                                   lambda k: _tp(wanted[k][1]), out, embedder)
        to_embed = [k for g in send for k in g.keys]
        queued_ms = int(time.time() * 1000)
        paid = {(k, id(wanted[k][0])) for k in to_embed}
        for i, ev, route, chunks, old in plan:
            assert ev.after is not None
            for c in chunks:
                # Every chunk not sent to the API now is a chunk a re-embed-every-change
                # pipeline would have paid for: unchanged text, the cache, or a duplicate.
                ck = cache_key(model, dims, c.hash)
                if (ck, id(c)) not in paid and ck not in queued:
                    out.count(ev, "tokens_saved", c.tokens)
                    out.count(ev, "chunks_reused")
            row_fields = {k: jsonable(v) for k, v in ev.after.items() if k not in route.table.text_columns}
            for c in chunks:
                # model and dimensions: what produced (or, queued, will produce) the vector, so
                # a model change knows which chunks to re-embed (pipeline/reembed.py).
                doc = {"parent_id": ev.doc_id, "column": c.column, "n": c.n, "text": c.text, "hash": c.hash,
                       "tokens": c.tokens, "row": row_fields, "model": model, "dimensions": dims,
                       META: {"version": ev.position.version, "table": str(ev.table)}}
                version = ev.position.version
                ck = cache_key(model, dims, c.hash)
                if ck in queued:
                    # Waits for a budget: written now without its vector, one version below the
                    # event's, so the vector (written later at the event's own version) completes
                    # it while any newer change of the row still wins over both.
                    doc.update(pending_embedding=True, queued_ms=queued_ms, queue_key="|".join(map(str, _tp(ev))))
                    version -= 1
                    out.count(ev, "embed_queued")
                else:
                    doc["embedding"] = self._vec_lru[ck]
                ops.append(IndexOp("index", route.chunks_alias, chunk_id(ev.doc_id, c.column, c.n), version, doc,
                                   ref=i))
            # Text that shrank: delete the surplus chunks (ids from the old row state).
            if old is not None:
                now_n: dict[str, int] = defaultdict(int)
                for c in chunks:
                    now_n[c.column] += 1
                for col, hashes in old.chunks.items():
                    for n in range(now_n[col], len(hashes)):
                        ops.append(IndexOp("delete", route.chunks_alias, chunk_id(ev.doc_id, col, n),
                                           ev.position.version, ref=i))
        return ops

    # --- token budgets ----------------------------------------------------------------------
    def _budget_split(self, keys: list[str], meta: list[tuple[int, str]]) -> tuple[list[SendGroup], set[str]]:
        """Which of ``keys`` (each with its tiktoken count and table) the budgets pay for now,
        grouped by table with the tokens reserved; the others go to the queue. A table with
        chunks in the queue queues new ones behind them (oldest first)."""
        ledger = self.ledger
        if not keys:
            return [], set()
        if ledger is None or not ledger.active:
            return [SendGroup(None, keys)], set()
        now = ledger.clock()
        groups: dict[str | None, SendGroup] = {}
        queued: set[str] = set()
        stopped: set[str] = set()
        for k, (tokens, table) in zip(keys, meta, strict=True):
            if not ledger.applies(table):
                groups.setdefault(None, SendGroup(None, [])).keys.append(k)
                continue
            est = ledger.estimate(tokens)
            if table in stopped or ledger.has_backlog(table) or not ledger.reserve(table, est, now):
                stopped.add(table)
                queued.add(k)
                continue
            g = groups.setdefault(table, SendGroup(table, [], 0, now))
            g.keys.append(k)
            g.reserved += est
        for t in stopped:
            ledger.queued_behind(t)
        return list(groups.values()), queued

    async def _embed_keys(self, groups: list[SendGroup], items: dict[str, tuple[str, int]],
                          tp_of: Callable[[str], tuple[str, int]], out: Outcome,
                          embedder: Embedder | None = None) -> None:
        """Embed each group's keys (text, tiktoken count), settle the reservations with the
        server's count, remember and cache the vectors, count them under ``tp_of(key)``."""
        embedder = embedder or self.embedder
        assert embedder is not None and self.es is not None
        if self.record_spend is not None and any(g.table is not None for g in groups):
            await self.record_spend()  # durable before a token is sent: a restart must count them
        model = embedder.model
        before = embedder.stats.requests
        cache_ops = []
        for g in groups:
            vecs, used = await embedder.embed_counted([items[k][0] for k in g.keys], [items[k][1] for k in g.keys])
            if g.table is not None and self.ledger is not None:
                self.ledger.settle(g.table, g.reserved, used, g.at)
            crash_point("mid_embedding")
            for k, v in zip(g.keys, vecs, strict=True):
                self._remember(k, v)
                tp = tp_of(k)
                out.stats[tp]["embed_inputs"] += 1
                out.stats[tp]["embed_tokens"] += items[k][1]
                cache_ops.append(IndexOp("index", EMBED_CACHE_INDEX, k, 1, {"v": v, "model": model}))
        if self.record_spend is not None and self.ledger is not None and self.ledger.dirty:
            await self.record_spend()
        if not cache_ops:
            return
        out.stats[tp_of(groups[0].keys[0])]["embed_requests"] += embedder.stats.requests - before
        await self.es.ensure_index(EMBED_CACHE_INDEX, {"dynamic": False, "properties": {
            "v": {"type": "float", "index": False, "doc_values": False}, "model": {"type": "keyword"}}})
        # Cache writes are plain upserts: same key, same vector, any order.
        res = await self.es.apply(cache_ops)
        if res.failed:
            log.warning("embedding cache: %d writes failed: %s", len(res.failed), res.failed[0][1])

    async def _cached(self, keys: Iterable[str]) -> None:
        """Vectors of ``keys`` from the cache index into the in-process LRU."""
        assert self.es is not None
        missing = [k for k in dict.fromkeys(keys) if k not in self._vec_lru]
        if missing:
            for k, d in (await self.es.get_many(EMBED_CACHE_INDEX, missing)).items():
                if "v" in d:
                    self._remember(k, d["v"])

    async def drain_queue(self, chunk_aliases: dict[str, str], owned: list[str], page: int = 256) -> Outcome:
        """Send the queued chunks of ``owned`` queue keys (``<table key>|<partition>``) that
        the budgets pay for now, oldest first, and write their vectors. ``chunk_aliases``:
        table key -> its chunks alias. A table stops at its first chunk that does not fit.

        A chunk waits at its event's version - 1; its vector is written at the version read
        with it + 1, so a newer change of the row written meanwhile (or its delete, whose
        tombstone outlives this round trip) wins and the stale text is not completed."""
        out = Outcome()
        ledger, queue = self.ledger, self.queue
        if ledger is None or queue is None or self.es is None or self.embedder is None or not owned:
            return out
        model, dims = self.embedder.model, self.embed_dims
        keys_left = list(owned)
        gens = {k.rsplit("|", 1)[0]: ledger.scan_started(k.rsplit("|", 1)[0]) for k in owned}
        first = True
        aliases = sorted({chunk_aliases[t] for t in gens if t in chunk_aliases})
        if self.vectors is not None:
            # An alias still served by another model's vectors keeps its queue for its re-embed
            # (which embeds every chunk not of the configured model, queued ones included).
            aliases = [a for a in aliases if (await self.vectors.for_alias(a))[0] is self.embedder]
        for _round in range(50):
            pending = await queue.oldest(aliases, keys_left, page)
            if first and len(pending) < page:
                for t in set(gens) - {p.table for p in pending}:
                    ledger.scan_found_empty(t, gens[t])
            first = False
            if not pending:
                break
            keys = [cache_key(model, dims, str(p.source.get("hash"))) for p in pending]
            await self._cached(keys)
            now = ledger.clock()
            groups: dict[str, SendGroup] = {}
            items: dict[str, tuple[str, int]] = {}
            tps: dict[str, tuple[str, int]] = {}
            stopped: set[str] = set()
            ready: list[tuple[PendingChunk, str]] = []
            for p, k in zip(pending, keys, strict=True):
                t = p.table
                if k in self._vec_lru or k in items:
                    ready.append((p, k))
                    continue
                if t in stopped:
                    continue
                est = ledger.estimate(p.tokens)
                if not ledger.reserve(t, est, now):
                    stopped.add(t)
                    budget = ledger.tables.get(t) or ledger.overall
                    if budget is not None and est > budget.tokens:
                        log.error("embedding budget of %s (%s) can never pay for chunk %s (%d tokens reserved): "
                                  "raise the budget", t, budget.text, p.id, est)
                    continue
                g = groups.setdefault(t, SendGroup(t, [], 0, now))
                g.keys.append(k)
                g.reserved += est
                items[k] = (str(p.source.get("text", "")), p.tokens)
                tps[k] = (t, int(str(p.source.get("queue_key", "|0")).rsplit("|", 1)[1] or 0))
                ready.append((p, k))
            if groups:
                await self._embed_keys(list(groups.values()), items, tps.__getitem__, out)
            ops = []
            for p, k in ready:
                doc = {f: v for f, v in p.source.items() if f not in QUEUE_FIELDS}
                doc["embedding"] = self._vec_lru[k]
                ops.append(IndexOp("index", chunk_aliases.get(p.table, p.index), p.id, p.version + 1, doc))
                tp = (p.table, int(str(p.source.get("queue_key", "|0")).rsplit("|", 1)[1] or 0))
                out.stats[tp]["embed_dequeued"] += 1
            if ops:
                await self.es.apply(ops)
            keys_left = [k for k in keys_left if k.rsplit("|", 1)[0] not in stopped]
            if not ready or len(pending) < page or not keys_left:
                break
        return out

    def _remember(self, key: str, vec: list[float]) -> None:
        if len(self._vec_lru) > 50_000:
            # Drop the oldest half; dicts keep insertion order.
            for k in list(self._vec_lru)[:25_000]:
                del self._vec_lru[k]
        self._vec_lru[key] = vec


@dataclass
class SendGroup:
    """Keys embedded together, charged to one table's budget (None: no budget applies)."""

    table: str | None
    keys: list[str]
    reserved: int = 0
    at: float = 0.0


def _tp(ev: ChangeEvent) -> tuple[str, int]:
    return ev.table.key, ev.origin.partition if ev.origin else 0


def track_snapshot(out: Outcome, tp: tuple[str, int], ev: ChangeEvent) -> None:
    """Snapshot assembly from Debezium's markers: first* opens, last* closes, every row counts."""
    snap = out.snapshot.setdefault(tp, {})
    m = ev.snapshot
    kind = "incremental" if m is SnapshotMarker.INCREMENTAL else "initial"
    out.count(ev, f"snapshot_rows_{kind}")
    if m in (SnapshotMarker.FIRST, SnapshotMarker.FIRST_IN_DATA_COLLECTION) or "started_ms" not in snap:
        snap.setdefault("started_ms", ev.ts_event_ms)
    if m in (SnapshotMarker.LAST, SnapshotMarker.LAST_IN_DATA_COLLECTION):
        snap["finished_ms"] = ev.ts_event_ms


def chunk_id(doc_id: str, column: str, n: int) -> str:
    return bounded_id(f"{doc_id}#{column}#{n}")  # hashed past Elasticsearch's 512-byte _id limit


