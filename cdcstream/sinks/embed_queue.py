"""The queue of chunks waiting for an embedding budget, kept in the chunk indices themselves.

A chunk the budget cannot pay for now is written like any other chunk, without its vector
and with ``pending_embedding: true``, ``queued_ms`` (when it was queued) and ``queue_key``
(``<table key>|<source partition>``, so the owner of that partition sends it). The bulk write
that puts it there is the write the event's ack waits for: once acked, the queue entry is as
durable as the row. Finding the queue again after a restart is a search, oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from elasticsearch import AsyncElasticsearch

#: The chunk-mapping fields of a queued chunk.
QUEUE_FIELDS: dict[str, Any] = {"pending_embedding": {"type": "boolean"}, "queued_ms": {"type": "long"},
                                "queue_key": {"type": "keyword"}}


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk document waiting in the queue for its vector."""

    index: str  # the physical chunk index it is in
    id: str
    version: int  # its external version in the index
    source: dict[str, Any]

    @property
    def table(self) -> str:
        return str(self.source.get("queue_key", "|")).rsplit("|", 1)[0]

    @property
    def tokens(self) -> int:
        return int(self.source.get("tokens", 0))


class EmbedQueue(Protocol):
    async def oldest(self, aliases: Sequence[str], queue_keys: Sequence[str], size: int) -> list[PendingChunk]:
        """Pending chunks of ``queue_keys``, oldest first (refreshed first: a chunk queued a
        moment ago is found)."""

    async def counts(self, aliases: Sequence[str]) -> dict[str, tuple[int, int]]:
        """alias -> (pending chunks, their tokens)."""


_PENDING = {"term": {"pending_embedding": True}}


class EsEmbedQueue:
    def __init__(self, es: AsyncElasticsearch) -> None:
        self.es = es

    async def oldest(self, aliases: Sequence[str], queue_keys: Sequence[str], size: int) -> list[PendingChunk]:
        if not aliases or not queue_keys:
            return []
        index = ",".join(aliases)
        await self.es.indices.refresh(index=index, ignore_unavailable=True, allow_no_indices=True)
        resp = await self.es.search(
            index=index, ignore_unavailable=True, allow_no_indices=True, size=size, version=True,
            query={"bool": {"filter": [_PENDING, {"terms": {"queue_key": list(queue_keys)}}]}},
            sort=[{"queued_ms": "asc"}, {"parent_id": "asc"}, {"column": "asc"}, {"n": "asc"}])
        return [PendingChunk(h["_index"], h["_id"], int(h["_version"]), h["_source"]) for h in resp["hits"]["hits"]]

    async def counts(self, aliases: Sequence[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for alias in aliases:
            resp = await self.es.search(index=alias, ignore_unavailable=True, allow_no_indices=True, size=0,
                                        track_total_hits=True, query={"bool": {"filter": [_PENDING]}},
                                        aggs={"tokens": {"sum": {"field": "tokens"}}})
            out[alias] = (int(resp["hits"]["total"]["value"]), int(resp["aggregations"]["tokens"]["value"] or 0))
        return out
