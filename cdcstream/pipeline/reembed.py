"""Embedding model changes without downtime: re-embed a chunks alias into its next generation.

A dense vector's ``dims`` cannot change in place, and vectors of two models must not be mixed
in one kNN field. So a model (or dimensions) change builds the next generation of the chunks
alias with the new vector mapping, re-embeds the chunks of the current one into it in the
background (cheapest chunks first: fewest tokens), and swaps the alias in one ``_aliases``
call, with the mirror's migration machinery (``cdcstream/sinks/elasticsearch.py``):

* the new generation is registered as the alias's migration, so every write of the mirror
  goes to it meanwhile, and ``get_many`` reads both;
* each re-embedded chunk is written with the version stored with it as its external version:
  a live change written meanwhile is newer and wins (409), a delete leaves a tombstone kept
  for ``FILL_GC_DELETES``;
* searches keep reading the old generation through the alias, and embed their query with the
  model that generation records (:func:`serving_model`), until the swap.

:func:`plan` is the cost estimate shown before a re-embed starts: the tiktoken count of every
chunk text not produced by the wanted model and dimensions, and the requests it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tiktoken
from elasticsearch import AsyncElasticsearch

from cdcstream.core.faults import crash_point
from cdcstream.pipeline.embeddings import Embedder
from cdcstream.sinks.base import IndexOp, SinkUnavailable
from cdcstream.sinks.elasticsearch import FILL_GC_DELETES, MARK, EsMirror, kept_settings, physical
from cdcstream.sinks.embed_queue import QUEUE_FIELDS
from cdcstream.sinks.migration import Migration

log = logging.getLogger(__name__)

#: Chunks per page of the fill (and of the plan's request count: each page is embedded alone).
PAGE = 256
_READ = ["text", "tokens", "model", "dimensions"]


def _gen(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def stale(source: dict[str, Any], model: str, dims: int | None) -> bool:
    """The chunk's vector is not (or will not be) ``model``'s at ``dims``: re-embed it. A chunk
    written before chunks recorded their model is stale."""
    return source.get("model") != model or (dims is not None and source.get("dimensions") != dims)


@dataclass
class ReembedPlan:
    """What re-embedding ``alias`` with ``model`` at ``dimensions`` costs."""

    alias: str
    model: str
    dimensions: int | None
    chunks: int = 0  # all chunks behind the alias
    stale: int = 0  # chunks to re-embed
    tokens: int = 0  # tiktoken count of their texts
    requests: int = 0
    current: dict[str, int] = field(default_factory=dict)  # "model/dims" -> chunks

    def price(self, usd_per_million: float) -> float:
        return self.tokens * usd_per_million / 1e6

    def lines(self, usd_per_million: float) -> list[str]:
        now = ", ".join(f"{k}: {v}" for k, v in sorted(self.current.items())) or "no chunks"
        return [f"{self.alias}: {self.chunks} chunks ({now})",
                f"  re-embed with {self.model}/{self.dimensions}: {self.stale} chunks, {self.tokens} tokens "
                f"(tiktoken), {self.requests} requests, ~${self.price(usd_per_million):.4f}"]


def requests_for(counts: Sequence[int], embedder: Embedder) -> int:
    """Requests the fill sends for chunks of these token counts (cheapest first, by page)."""
    ordered = sorted(counts)
    return sum(len(embedder.batches(ordered[i:i + PAGE])) for i in range(0, len(ordered), PAGE))


async def plan(es: AsyncElasticsearch, alias: str, embedder: Embedder, encoding: tiktoken.Encoding) -> ReembedPlan:
    """Count the chunks behind ``alias`` that ``embedder``'s model/dimensions would re-embed."""
    out = ReembedPlan(alias, embedder.model, embedder.dimensions)
    counts: list[int] = []
    async for hits in _pages(es, alias, sort=["_doc"]):
        texts = []
        for h in hits:
            s = h["_source"]
            key = f"{s.get('model', '?')}/{s.get('dimensions', '?')}"
            out.current[key] = out.current.get(key, 0) + 1
            out.chunks += 1
            if stale(s, embedder.model, embedder.dimensions):
                texts.append(str(s.get("text", "")))
        if texts:
            counts += await _count(encoding, texts)
    out.stale, out.tokens, out.requests = len(counts), sum(counts), requests_for(counts, embedder)
    return out


async def _count(encoding: tiktoken.Encoding, texts: list[str]) -> list[int]:
    """tiktoken counts of a page of chunk texts: milliseconds to tens, off the event loop all the same."""
    if not texts:
        return []
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: [len(x) for x in encoding.encode_ordinary_batch(texts)])


async def _pages(es: AsyncElasticsearch, index: str, sort: list[Any], size: int = PAGE) -> Any:
    resp = await es.search(index=index, scroll="5m", size=size, sort=sort, version=True, source=True)
    sid = resp.get("_scroll_id")
    try:
        while hits := resp["hits"]["hits"]:
            yield hits
            resp = await es.scroll(scroll_id=sid, scroll="5m")
            sid = resp.get("_scroll_id", sid)
    finally:
        if sid:
            with contextlib.suppress(Exception):
                await es.clear_scroll(scroll_id=sid)


async def serving_model(es: AsyncElasticsearch, alias: str) -> tuple[str, str | None, int | None]:
    """The generation answering searches on ``alias`` and the model/dimensions its vectors
    came from (a query vector must come from the same): see :func:`index_model`."""
    behind = sorted((await es.indices.get_alias(name=alias)).body)
    index = behind[-1]
    return (index, *await index_model(es, index))


async def index_model(es: AsyncElasticsearch, index: str) -> tuple[str | None, int | None]:
    """The model/dimensions of the vectors in the chunks generation ``index``: from its
    marker, else its vector mapping's ``dims`` and the model its chunks record (None: no
    chunk yet)."""
    model, dims = vector_mark((await es.indices.get_mapping(index=index)).body[index]["mappings"])
    return model or await recorded_model(es, index), dims


def vector_mark(mappings: dict[str, Any]) -> tuple[str | None, int | None]:
    """The model (None: not marked) and dimensions a chunks generation's mappings declare."""
    mark = mappings.get("_meta", {}).get(MARK, {}).get("embedding", {})
    dims = mark.get("dimensions") or mappings.get("properties", {}).get("embedding", {}).get("dims")
    return mark.get("model"), int(dims) if dims else None


async def recorded_model(es: AsyncElasticsearch, index: str) -> str | None:
    """The model a chunk of ``index`` records (a generation from before the marker)."""
    resp = await es.search(index=index, size=1, source_includes=["model"], query={"exists": {"field": "model"}})
    hits = resp["hits"]["hits"]
    return hits[0]["_source"].get("model") if hits else None


@dataclass
class Reembedding(Migration):
    """A re-embed of a chunks alias, shown on ``/status`` beside mapping migrations."""

    model: str = ""
    dimensions: int | None = None
    reembedded: int = 0
    tokens: int = 0  # as the server counted them (usage.prompt_tokens)
    requests: int = 0

    def view(self) -> dict[str, Any]:
        return {**super().view(), "kind": "reembed", "model": self.model, "dimensions": self.dimensions,
                "reembedded": self.reembedded, "tokens_spent": self.tokens, "requests": self.requests}


class Reembedder:
    """Re-embeds chunks aliases of ``mirror`` with ``embedder``'s model and dimensions.
    ``charge``: told the tokens the server counted for each page (the token budget)."""

    def __init__(self, mirror: EsMirror, embedder: Embedder, encoding: tiktoken.Encoding,
                 charge: Callable[[str, int], Awaitable[None]] | None = None) -> None:
        self.mirror = mirror
        self.es = mirror.es
        self.embedder = embedder
        self.encoding = encoding
        self.charge = charge

    async def start(self, alias: str) -> Reembedding:
        """Create the next generation of ``alias`` with the new vector mapping (or find the one
        a killed process left half-filled), route the mirror's writes to it, start the fill."""
        es, emb = self.es, self.embedder
        behind = sorted((await es.indices.get_alias(name=alias)).body)
        source = behind[-1]
        mapping = (await es.indices.get_mapping(index=source)).body[source]["mappings"]
        props = dict(mapping.get("properties", {}))
        props["embedding"] = {**props.get("embedding", {}), "dims": emb.dimensions}
        existing = (await es.indices.get(index=f"{alias}-*", ignore_unavailable=True)).body
        resumed = [n for n, v in existing.items() if n not in behind and _gen(n) > _gen(source)
                   and v["mappings"].get("_meta", {}).get(MARK, {}).get("reembedding_from") == source]
        target = resumed[0] if resumed else physical(alias, _gen(source) + 1)
        if not resumed:
            settings = kept_settings((await es.indices.get_settings(index=source)).body[source]["settings"])
            meta = {MARK: {"reembedding_from": source, "changed": ["embedding"],
                           "embedding": {"model": emb.model, "dimensions": emb.dimensions}}}
            await es.indices.create(index=target, mappings={**mapping, "properties": props, "_meta": meta},
                                    settings={"number_of_shards": 1, "number_of_replicas": 0, **settings,
                                              "gc_deletes": FILL_GC_DELETES})
        mig = Reembedding(alias, source, target, props, ["embedding"], model=emb.model,
                          dimensions=emb.dimensions, resumed=bool(resumed))
        # The mirror's migration hooks: writes go to the target, reads fall back to the source.
        self.mirror.migrations[alias] = mig
        self.mirror._known[alias] = props
        log.warning("%s: re-embedding %s -> %s with %s/%s", alias, source, target, emb.model, emb.dimensions)
        return mig

    async def run(self, mig: Reembedding) -> None:
        """Fill, swap, drop the old generation. Errors propagate (the caller retries: the fill
        is idempotent, each write carrying its stored version)."""
        mig.attempts += 1
        es = self.es
        if mig.target not in (await es.indices.get_alias(name=mig.alias)).body:  # else: swapped, then failed
            await self._fill(mig)
            await es.indices.refresh(index=mig.target)
            await es.indices.update_aliases(actions=[
                {"remove": {"index": mig.source, "alias": mig.alias}},
                {"add": {"index": mig.target, "alias": mig.alias, "is_write_index": True}}])
        await es.indices.put_settings(index=mig.target, settings={"index.gc_deletes": None})
        await es.indices.put_mapping(index=mig.target, meta={MARK: {"changed": ["embedding"], "embedding": {
            "model": mig.model, "dimensions": mig.dimensions}}})
        await es.indices.delete(index=mig.source, ignore_unavailable=True)
        self.mirror.migrations.pop(mig.alias, None)
        log.warning("%s: re-embedded into %s (%d chunks, %d tokens)", mig.alias, mig.target, mig.reembedded,
                    mig.tokens)

    async def _fill(self, mig: Reembedding) -> None:
        es, emb = self.es, self.embedder
        await es.indices.refresh(index=mig.source)
        mig.total = int((await es.count(index=mig.source))["count"])
        mig.copied = 0
        # Cheapest first: a budget or a stop part-way has re-embedded the most chunks it could.
        async for page in _pages(es, mig.source, sort=[{"tokens": {"order": "asc", "missing": "_last"}}, "_doc"]):
            mig.copied += len(page)
            # Already in the new generation: a live change written meanwhile (newer, with the
            # new model) or this fill before a restart. Not paid twice.
            have = await es.mget(index=mig.target, ids=[h["_id"] for h in page], source=False)
            there = {d["_id"] for d in have["docs"] if d.get("found")}
            hits = [h for h in page if h["_id"] not in there]
            todo = [h for h in hits if stale(h["_source"], emb.model, emb.dimensions)]
            texts = [str(h["_source"].get("text", "")) for h in todo]
            counts = await _count(self.encoding, texts)
            before = emb.stats.requests
            vecs, used = await emb.embed_counted(texts, counts) if texts else ([], 0)
            mig.tokens += used
            mig.requests += emb.stats.requests - before
            if used and self.charge is not None:
                await self.charge(mig.alias, used)
            fresh = dict(zip((h["_id"] for h in todo), vecs, strict=True))
            ops = []
            for h in hits:
                doc = {k: v for k, v in h["_source"].items() if k not in QUEUE_FIELDS}
                if h["_id"] in fresh:
                    doc.update(embedding=fresh[h["_id"]], model=emb.model, dimensions=emb.dimensions)
                ops.append(IndexOp("index", mig.target, h["_id"], h["_version"], doc))
            res = await self.mirror.apply(ops) if ops else None
            mig.refused += len(res.failed) if res else 0
            mig.reembedded += len(todo)
            crash_point("mid_reembed")


class Gate:
    """Batches that embed and write chunks pass together; switching a chunks alias to a
    re-embed waits until none is in flight and holds new ones back, so that no batch embeds
    for one generation and writes into the other (the new one would refuse the vectors)."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._busy = 0
        self._switching = False

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._switching)
            self._busy += 1
        try:
            yield
        finally:
            async with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def switching(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._switching)
            self._switching = True
            await self._cond.wait_for(lambda: self._busy == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._switching = False
                self._cond.notify_all()


Choice = tuple[Embedder, int | None]


class Vectors:
    """Which model and size each chunks alias is written with, and its re-embeds.

    The settings name the model a table *should* have; the generation serving searches has
    the vectors it *has*. Until a re-embed of the alias runs, live changes are embedded with
    the serving generation's model and size (nothing blocks, one kNN field holds one model);
    while it runs, every write goes to the new generation, embedded with the new model; after
    the swap the serving generation is the new one. A re-embed starts only on request
    (:meth:`reembed`: ``cdcstream embeddings reembed``), and one a killed worker left
    half-done resumes when its alias is loaded (``EsMirror.on_reembed``)."""

    def __init__(self, mirror: EsMirror, embedder: Embedder, encoding: tiktoken.Encoding,
                 charge: Callable[[str, int], Awaitable[None]] | None = None) -> None:
        self.mirror = mirror
        self.embedder = embedder
        self.encoding = encoding
        self.charge = charge
        self.gate = Gate()
        self._serving: dict[str, Choice] = {}  # alias -> what its serving generation holds
        self._running: dict[str, tuple[Reembedding, Choice]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        mirror.on_reembed = self._resumed

    @property
    def configured(self) -> Choice:
        return self.embedder, self.embedder.dimensions

    def _choice(self, model: str | None, dims: int | None) -> Choice:
        emb = self.embedder
        if (model or emb.model) == emb.model and (dims is None or dims == emb.dimensions):
            return self.configured
        return emb.variant(model or emb.model, dims), dims

    async def for_alias(self, alias: str) -> Choice:
        """The embedder and size that writes to ``alias`` must use now."""
        # Loaded first: a re-embed a killed worker left half-done registers here (on_reembed),
        # and this batch must embed for it, not for the generation it replaces.
        await self.mirror.resume([alias])
        running = self._running.get(alias)
        if running is not None and self.mirror.migrations.get(alias) is running[0]:
            return running[1]
        if not self.mirror.loaded(alias):
            # No index yet (or dropped with its profile): created by this write, with the
            # settings' size.
            self._serving.pop(alias, None)
            return self.configured
        if alias not in self._serving:
            _, model, dims = await serving_model(self.mirror.es, alias)
            self._serving[alias] = self._choice(model, dims)
        return self._serving[alias]

    async def reembed(self, alias: str) -> Reembedding:
        """Start re-embedding ``alias`` with the configured model and size (or return the one
        running). Raises ValueError when there is nothing to change, SinkUnavailable while a
        mapping migration of the alias runs."""
        async with self.gate.switching():
            running = self._running.get(alias)
            if running is not None:
                return running[0]
            other = self.mirror.migrations.get(alias)
            if other is not None:
                raise SinkUnavailable("elasticsearch", "migration in progress",
                                      f"{alias}: a rebuild to {other.target} runs; re-embed after its swap")
            emb, dims = self.configured
            _, model, have = await serving_model(self.mirror.es, alias)
            if (model, have) == (emb.model, dims):
                raise ValueError(f"{alias} is embedded with {emb.model}/{dims} already")
            mig = await Reembedder(self.mirror, emb, self.encoding, self.charge).start(alias)
            self._launch(mig, self.configured)
            return mig

    def _resumed(self, alias: str, source: str, target: str, props: dict[str, Any],
                 embedding: dict[str, Any]) -> Migration | None:
        running = self._running.get(alias)
        if running is not None and running[0].target == target:
            return running[0]
        dims = embedding.get("dimensions")
        choice = self._choice(embedding.get("model"), int(dims) if dims else None)
        mig = Reembedding(alias, source, target, props, ["embedding"], model=choice[0].model,
                          dimensions=choice[1], resumed=True)
        self._launch(mig, choice)
        return mig

    def _launch(self, mig: Reembedding, choice: Choice) -> None:
        self._running[mig.alias] = (mig, choice)
        task = asyncio.get_running_loop().create_task(self._run(mig, choice), name=f"reembed {mig.alias}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, mig: Reembedding, choice: Choice) -> None:
        """Fill and swap, retried with backoff until done (the generation takes every write
        meanwhile, so giving up is not an option); then the alias serves the new model."""
        backoff = 1.0
        worker = Reembedder(self.mirror, choice[0], self.encoding, self.charge)
        while True:
            try:
                await worker.run(mig)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the cluster or the embeddings API: retry the fill
                mig.error = f"{type(e).__name__}: {str(e)[:200]}"
                log.warning("%s: re-embed into %s failed (%s); again in %.0fs", mig.alias, mig.target, mig.error,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            # No await between the swap's bookkeeping in run() and this: a batch sees either.
            self._serving[mig.alias] = choice
            self._running.pop(mig.alias, None)
            return

    def views(self) -> list[dict[str, Any]]:
        return [m.view() for m, _ in self._running.values()]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
