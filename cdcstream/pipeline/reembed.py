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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tiktoken
from elasticsearch import AsyncElasticsearch

from cdcstream.pipeline.embeddings import Embedder
from cdcstream.sinks.base import IndexOp
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
    came from (a query vector must come from the same): from the generation's marker, else
    from the vector mapping's ``dims`` (model unknown: None)."""
    behind = sorted((await es.indices.get_alias(name=alias)).body)
    index = behind[-1]
    m = (await es.indices.get_mapping(index=index)).body[index]["mappings"]
    mark = m.get("_meta", {}).get(MARK, {}).get("embedding", {})
    dims = m.get("properties", {}).get("embedding", {}).get("dims")
    return index, mark.get("model"), int(mark.get("dimensions") or dims) if (mark or dims) else None


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
    """Re-embeds chunks aliases of ``mirror`` with ``embedder``'s model and dimensions."""

    def __init__(self, mirror: EsMirror, embedder: Embedder, encoding: tiktoken.Encoding) -> None:
        self.mirror = mirror
        self.es = mirror.es
        self.embedder = embedder
        self.encoding = encoding

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
        await self._fill(mig)
        es = self.es
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
        async for hits in _pages(es, mig.source, sort=[{"tokens": {"order": "asc", "missing": "_last"}}, "_doc"]):
            todo = [h for h in hits if stale(h["_source"], emb.model, emb.dimensions)]
            texts = [str(h["_source"].get("text", "")) for h in todo]
            counts = await _count(self.encoding, texts)
            before = emb.stats.requests
            vecs, used = await emb.embed_counted(texts, counts) if texts else ([], 0)
            mig.tokens += used
            mig.requests += emb.stats.requests - before
            fresh = dict(zip((h["_id"] for h in todo), vecs, strict=True))
            ops = []
            for h in hits:
                doc = {k: v for k, v in h["_source"].items() if k not in QUEUE_FIELDS}
                if h["_id"] in fresh:
                    doc.update(embedding=fresh[h["_id"]], model=emb.model, dimensions=emb.dimensions)
                ops.append(IndexOp("index", mig.target, h["_id"], h["_version"], doc))
            res = await self.mirror.apply(ops)
            mig.refused += len(res.failed)
            mig.reembedded += len(todo)
            mig.copied += len(hits)
