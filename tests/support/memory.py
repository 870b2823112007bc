"""In-memory sink doubles for unit tests of the batch logic (never the proof that a sink works:
that is tests/integration and tests/e2e on the real servers)."""

from __future__ import annotations

import json
from typing import Any

from cdcstream.sinks.base import ArchiveObject, BulkResult, IndexOp


class MemoryMirror:
    """The ``Mirror`` contract, versioned like Elasticsearch: external versions, stale writes are
    conflicts, and documents go through JSON as Elasticsearch keeps ``_source`` (so a value JSON
    cannot hold, NaN included, fails here as it would there)."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[int, dict[str, Any] | None]] = {}
        self.mappings: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (action, index, id) of every op applied

    async def ensure_index(self, alias: str, mapping: dict[str, Any], settings: Any = None, version: int = 0) -> None:
        self.mappings[alias] = mapping

    async def apply(self, ops: list[IndexOp]) -> BulkResult:
        r = BulkResult()
        for op in ops:
            self.writes.append((op.action, op.index, op.id))
            cur = self.docs.get((op.index, op.id))
            if cur is not None and cur[0] >= op.version:
                r.conflicts += 1
                continue
            doc = json.loads(json.dumps(op.doc, allow_nan=False)) if op.action == "index" else None
            self.docs[(op.index, op.id)] = (op.version, doc)
            if op.action == "index":
                r.indexed += 1
            else:
                r.deleted += 1
        return r

    async def resume(self, aliases: Any) -> int:
        return 0

    def stop(self) -> None:
        pass

    def migration_views(self) -> list[dict[str, Any]]:
        return []  # a type change rebuilds nothing here: the real node's is tests/integration/test_es_migration.py

    async def get_many(self, index: str, ids: Any, source: Any = None) -> dict[str, dict[str, Any]]:
        return {i: d for i in ids if (d := (self.docs.get((index, i)) or (0, None))[1]) is not None}

    async def delete_older_than(self, alias: str, version: int) -> int:
        old = [k for k, (v, d) in self.docs.items() if k[0] == alias and d is not None and v < version]
        for k in old:
            self.docs[k] = (version, None)
        return len(old)

    async def drop(self, alias: str) -> bool:
        found = [k for k in self.docs if k[0] == alias]
        for k in found:
            del self.docs[k]
        return bool(found)

    def live(self, alias: str) -> dict[str, dict[str, Any]]:
        return {i: d for (a, i), (_, d) in self.docs.items() if a == alias and d is not None}


class MemoryStore:
    """The ``ArchiveStore`` contract: objects by name."""

    url = "memory://"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, obj: ArchiveObject) -> None:
        self.objects[obj.name] = obj.body
