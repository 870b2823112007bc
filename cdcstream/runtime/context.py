"""What the agents and views share, built once per worker process: settings, config, tables,
the sink clients (built lazily inside the running loop), profiles and counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import faust
from elasticsearch import AsyncElasticsearch
from openai import AsyncOpenAI

from cdcstream.core.config import Config, ProcessingProfile
from cdcstream.core.counters import merge_counters
from cdcstream.core.events import ChangeEvent
from cdcstream.core.faults import crash_point
from cdcstream.core.masking import mask_text
from cdcstream.core.resolver import Resolver
from cdcstream.core.route import Router, RowState
from cdcstream.core.secrets import SecretRef
from cdcstream.core.settings import Settings
from cdcstream.pipeline.archive import ArchiveBuffer
from cdcstream.pipeline.budget import BudgetLedger
from cdcstream.pipeline.chunking import Chunker
from cdcstream.pipeline.embeddings import Embedder
from cdcstream.pipeline.processor import BatchProcessor
from cdcstream.pipeline.reembed import Vectors
from cdcstream.pipeline.tokens import counts_exactly, get_encoding
from cdcstream.runtime.checkpoint import Checkpoint
from cdcstream.sinks.archive import open_store
from cdcstream.sinks.base import ArchiveObject, ArchiveStore, Mirror
from cdcstream.sinks.elasticsearch import EsMirror, client_options, fast_serializers
from cdcstream.sinks.embed_queue import EsEmbedQueue
from tables import Tables


class Pipeline:
    """Everything the agents share, built once per worker process."""

    def __init__(self, app: faust.App, settings: Settings, config: Config, tables: Tables,
                 resolver: Resolver | None = None) -> None:
        self.app = app
        self.settings = settings
        self.config = config
        self.tables = tables
        self.router = Router(config)
        self.resolver = resolver or Resolver()
        self.worker_id = f"{socket.gethostname()}:{settings.web_port}:{os.getpid()}"
        self.data_topics: list[str] = []
        self.processor: BatchProcessor | None = None
        self.es: AsyncElasticsearch | None = None
        self.mirror: Mirror | None = None
        self.archive: ArchiveStore | None = None
        self.embedder: Embedder | None = None
        self.vectors: Vectors | None = None  # per chunks alias: its model/size, re-embeds
        self._ready = asyncio.Lock()
        # The one owner of acks and of the blocked state (runtime/checkpoint.py).
        self.checkpoint = Checkpoint()
        # Table key -> the operator's reason: move the blocking event of that table to the DLQ
        # (`cdcstream dlq skip`); ``skip_wake`` cuts the blocked batch's backoff short.
        self.skip_requests: dict[str, str] = {}
        self.skip_wake = asyncio.Event()
        self.buffer = ArchiveBuffer(settings.archive_max_records, settings.archive_max_bytes)
        self.control_topic = app.topic(f"{settings.app_id}-control", partitions=1, internal=True,
                                       value_serializer="json", key_serializer="raw")
        self.dlq_topic = app.topic(f"{settings.app_id}-dlq", partitions=1, internal=True,
                                   value_serializer="json", key_serializer="raw")
        self.batches = 0
        self._own_stats: dict[str, dict[str, Any]] = {}
        self._own_cuts: dict[str, list[tuple[int, int]]] = {}
        self._own_truncations: dict[str, int] = {}
        self.stream: Any = None
        # One batch or one idle-archive flush at a time (acks stay in offset order).
        self.archive_lock = asyncio.Lock()
        # Embedding token budgets (docs/profiles.md, "Token budgets"): spend per table and worker
        # in the embed_budget table, the queue in the chunk indices.
        self.ledger = BudgetLedger(
            {key: r.table.budget for key, r in self.router.by_key.items() if r.table.budget is not None},
            settings.budget, self.worker_id, lambda: list(tables.embed_budget.items()),
            exact=counts_exactly(settings.embed_model), margin=settings.embed_budget_margin)

    def secret(self, ref: Any) -> str | None:
        if ref is None:
            return None
        assert isinstance(ref, SecretRef)
        return self.resolver.resolve(ref).get_secret_value()

    async def ready(self) -> BatchProcessor:
        """Build the sink clients on first use, inside the running loop."""
        if self.processor is not None:
            return self.processor
        async with self._ready:
            if self.processor is not None:
                return self.processor
            s = self.settings
            loop = asyncio.get_running_loop()
            if s.es_http_url:
                user = await loop.run_in_executor(None, self.secret, s.elasticsearch_user)
                pw = await loop.run_in_executor(None, self.secret, s.elasticsearch_password)
                api_key = await loop.run_in_executor(None, self.secret, s.elasticsearch_api_key)
                self.es = AsyncElasticsearch(s.es_http_url, request_timeout=30, serializers=fast_serializers(),
                                             **client_options(user, pw, api_key, s.elasticsearch_ca))
                self.mirror = EsMirror(self.es, on_wait=self._on_wait)
            if s.archive_url:
                ak = await loop.run_in_executor(None, self.secret, s.archive_access_key)
                sk = await loop.run_in_executor(None, self.secret, s.archive_secret_key)
                self.archive = open_store(s.archive_url, ak, sk)
            chunker = None
            if s.embed_base_url:
                key = await loop.run_in_executor(None, self.secret, s.embed_api_key) or "unused"
                client = AsyncOpenAI(base_url=s.embed_base_url, api_key=key, max_retries=0, timeout=s.embed_timeout_s)
                self.embedder = Embedder(client, s.embed_model, dimensions=s.embed_dimensions,
                                         max_inputs=s.embed_max_inputs,
                                         max_input_tokens=s.embed_max_input_tokens, concurrency=s.embed_concurrency,
                                         tokens_per_minute=s.embed_tokens_per_minute,
                                         send_dimensions=s.embed_send_dimensions, on_wait=self._on_wait)
                chunker = Chunker(get_encoding(s.chunk_encoding), s.effective_chunk_tokens, s.effective_chunk_overlap)
                if isinstance(self.mirror, EsMirror):
                    self.vectors = Vectors(self.mirror, self.embedder, get_encoding(s.chunk_encoding),
                                           charge=self.charge_reembed)
            self.processor = BatchProcessor(self.router, self.mirror, self.archive, self.embedder, chunker,
                                            archive_buffer=self.buffer, embed_dims=s.embed_dimensions,
                                            record_cut=self.record_cut, on_wait=self._on_wait,
                                            truncated_at=self.truncated_at,
                                            record_truncation=self.record_truncation,
                                            ledger=self.ledger, queue=EsEmbedQueue(self.es) if self.es else None,
                                            record_spend=self.record_spend, vectors=self.vectors)
            return self.processor

    def _on_wait(self, sink: str, exc: BaseException | None, detail: str) -> None:
        self.checkpoint.waiting(sink, exc, detail, mask=mask_text)

    async def reset_clients(self) -> None:
        """Forget the sink clients: the next batch builds them again from freshly resolved
        secrets (a rotated or corrected password is picked up without a restart)."""
        async with self._ready:
            es, self.es = self.es, None
            if self.mirror is not None:
                self.mirror.stop()  # a rebuild's fill resumes with the new client
            if self.vectors is not None:
                self.vectors.stop()  # so does a re-embed (its generation is found at the next load)
            self.processor = self.mirror = self.archive = self.embedder = self.vectors = None
        if es is not None:
            with contextlib.suppress(Exception):
                await es.close()

    # --- archive cuts ---------------------------------------------------------------------
    #: Recorded cuts kept per partition: more than a partition can have stored and not yet
    #: committed (objects are stored one after another and committed every few seconds).
    CUTS_KEPT = 64

    def recorded_cuts(self, tp: tuple[str, int]) -> list[tuple[int, int]]:
        key = f"{tp[0]}|{tp[1]}"
        own = self._own_cuts.get(key) or []
        table = (self.tables.archive_cuts.get(key) or {}).get("cuts") or []
        return sorted({(int(a), int(b)) for a, b in [*own, *table]})

    async def record_cut(self, obj: ArchiveObject) -> None:
        """Make the cut durable (changelog written and acknowledged) before its object is stored."""
        tp = (obj.topic, obj.partition)
        cuts = self.recorded_cuts(tp)
        if (obj.first_offset, obj.last_offset) in cuts:
            return  # a replay of a recorded cut
        crash_point("before_cut_record")
        cuts = [*cuts, (obj.first_offset, obj.last_offset)][-self.CUTS_KEPT:]
        key = f"{obj.topic}|{obj.partition}"
        # Like the counters: this worker is the key's only writer and keeps what it wrote
        # (the table's local copy is updated only when the changelog record comes back).
        self._own_cuts[key] = cuts
        self.tables.archive_cuts[key] = {"cuts": [list(c) for c in cuts]}
        await self.app.producer.flush()
        self.buffer.plan(tp, cuts)
        crash_point("after_cut_record")

    def load_cut_plans(self, tps: Iterable[tuple[str, int]]) -> None:
        """Hand the recorded cuts of newly seen partitions to the archive buffer."""
        for tp in tps:
            if not self.buffer.has_plan(tp):
                self.buffer.plan(tp, self.recorded_cuts(tp))

    # --- truncations ------------------------------------------------------------------------
    def truncated_at(self, table_key: str) -> int:
        own = self._own_truncations.get(table_key, 0)
        rec = self.tables.truncations.get(table_key) or {}
        return max(own, int(rec.get("version", 0)))

    async def record_truncation(self, table_key: str, version: int) -> None:
        """Durable before any document is deleted: a replay or another worker sees it."""
        if self.truncated_at(table_key) >= version:
            return
        self._own_truncations[table_key] = version
        self.tables.truncations[table_key] = {"version": version, "at_ms": int(time.time() * 1000)}
        await self.app.producer.flush()

    async def flush_archive(self, objs: list[ArchiveObject]) -> None:
        """Record, store and release cut objects outside a batch (timer, profile change);
        the caller holds ``archive_lock``."""
        if not objs:
            return
        processor = await self.ready()
        for obj in objs:
            await self.record_cut(obj)
            await processor.store(obj)
            crash_point("after_archive_put")
            self.checkpoint.archived((obj.topic, obj.partition), obj.last_offset)
        if self.stream is not None:
            await self.checkpoint.release(self.stream, {(o.topic, o.partition) for o in objs})
        self.checkpoint.unblock()
        crash_point("after_archive_release")

    # --- token budgets ----------------------------------------------------------------------
    async def record_spend(self) -> None:
        """Make this worker's spend durable (changelog written and acknowledged) before the
        tokens it reserves are sent: after a kill -9 the next worker counts them."""
        for key, rec in self.ledger.pending_records().items():
            self.tables.embed_budget[key] = rec
        await self.app.producer.flush()

    async def charge_reembed(self, alias: str, tokens: int) -> None:
        """A re-embed's tokens (as the server counted them) count against its table's budget:
        spent after each page, not reserved before it. The re-embed does not wait for a
        period; once the budget is spent, the table's live changes queue."""
        key = next((k for k, r in self.router.by_key.items() if r.chunks_alias == alias), None)
        if key is None or not self.ledger.applies(key):
            return
        self.ledger.settle(key, 0, tokens, self.ledger.clock())
        await self.record_spend()

    def owned_queue_keys(self) -> list[str]:
        """``<table key>|<partition>`` of the captured partitions assigned to this worker: the
        queued chunks this worker sends (each queue key has one sender, like each counter)."""
        out = []
        for tp in self.app.assignor.assigned_actives():
            tid = self.router.topics.get(tp.topic)
            if tid is not None and self.ledger.applies(tid.key):
                out.append(f"{tid.key}|{tp.partition}")
        return sorted(out)

    async def drain_embed_queue(self) -> None:
        """Send what the budgets pay for now from the queue, oldest first; count the queue."""
        processor = await self.ready()
        aliases = {key: r.chunks_alias for key, r in self.router.by_key.items() if self.ledger.applies(key)}
        if processor.queue is None or not aliases:
            return
        out = await processor.drain_queue(aliases, self.owned_queue_keys())
        if out.stats:
            self.record_stats(None, [], out)
        counts = await processor.queue.counts(sorted(set(aliases.values())))
        self.ledger.queued = {key: counts.get(alias, (0, 0)) for key, alias in aliases.items()}
        for key in aliases:
            self.ledger.check_warnings(key)

    # --- profiles -------------------------------------------------------------------------
    def profile_of(self, ev: ChangeEvent) -> ProcessingProfile:
        live = self.tables.profiles.get(ev.table.key)
        if live is not None:
            return ProcessingProfile(live["profile"])
        return self.router.default_profile(ev.table)

    def applied_profile_version(self) -> int:
        return max((int(v.get("version", 0)) for v in self.tables.profiles.values() if v), default=0)

    # --- state ----------------------------------------------------------------------------
    def get_state(self, rk: str) -> RowState | None:
        return RowState.load(self.tables.rows.get(rk))

    # Counters: this worker is the only writer of the keys of its partitions, and keeps them
    # here. Reading them back from the GlobalTable is not safe: its local copy is updated
    # only when the changelog write comes back, so under load read-modify-write lost
    # increments (index_ops read 22,616 for 47,352 events in the throughput benchmark).
    # Every field only grows (counters, timestamps), so the field-wise maximum of what this
    # worker wrote and what the table shows is right both ways: after a partition came back
    # from another worker (the table is ahead) and while our own writes are in flight (we are).
    def stat(self, key: str) -> dict[str, Any]:
        own = self._own_stats.get(key) or {}
        table = self.tables.stats.get(key) or {}
        return {k: max(int(own.get(k, 0) or 0), int(table.get(k, 0) or 0)) for k in {*own, *table}}

    def set_stat(self, key: str, value: dict[str, Any]) -> None:
        self._own_stats[key] = value
        self.tables.stats[key] = value

    def record_stats(self, stream: Any, batch: list[Any], out: Any) -> None:
        now = int(time.time() * 1000)
        for (tk, part), delta in out.stats.items():
            key = f"{tk}|{part}"
            cur = self.stat(key)
            merged = merge_counters(cur, delta)
            last = out.last_event_ms.get((tk, part))
            if last:
                merged["last_event_ms"] = max(int(cur.get("last_event_ms", 0)), last)
            snap = out.snapshot.get((tk, part))
            if snap:
                if "started_ms" in snap and not cur.get("snapshot_started_ms"):
                    merged["snapshot_started_ms"] = snap["started_ms"]
                if "finished_ms" in snap:
                    merged["snapshot_finished_ms"] = snap["finished_ms"]
            merged["updated_ms"] = now
            self.set_stat(key, merged)

