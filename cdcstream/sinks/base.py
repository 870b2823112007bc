"""The sink contracts: what the pipeline may ask of the mirror and of the archive store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: Called by a sink client each time it waits to retry a write it must not give up on:
#: (sink, the exception or None, a short description). The runtime shows it as "blocked".
OnWait = Callable[[str, BaseException | None, str], None]


class SinkUnavailable(Exception):
    """A sink cannot take writes now (credentials, a closed or missing index, a mapping conflict
    at index level...). Operational: the batch waits and retries; no event is at fault.

    ``reason`` is a short stable label (shown on /status and as a metric label); the details
    go in the message.
    """

    def __init__(self, sink: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{sink}: {reason}" + (f" ({detail})" if detail else ""))
        self.sink = sink
        self.reason = reason


@dataclass(slots=True)
class ArchiveObject:
    name: str
    body: bytes
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int


class ArchiveStore(Protocol):
    url: str

    async def put(self, obj: ArchiveObject) -> None: ...

    async def list(self, prefix: str = "") -> list[str]: ...

    async def get(self, name: str) -> bytes: ...


@dataclass(slots=True)
class IndexOp:
    action: Literal["index", "delete"]
    index: str  # alias
    id: str
    version: int
    doc: dict[str, Any] | None = None
    # Opaque handle the caller uses to route a failure (e.g. the event for the DLQ).
    ref: Any = None


@dataclass
class BulkResult:
    indexed: int = 0
    deleted: int = 0
    not_found: int = 0
    conflicts: int = 0  # stale writes: a newer version is already there (no-op)
    failed: list[tuple[IndexOp, str]] = field(default_factory=list)  # permanent per-item errors
    requests: int = 0
    retries: int = 0



class Mirror(Protocol):
    """The search mirror: one index per table behind an alias (and one for its chunks).

    Writes carry the event's source version (``IndexOp.version``): the mirror keeps the
    newest version of each document, so replays and reordering are no-ops (``conflicts``).
    ``apply`` returns only when every op is durable or failed for its own content
    (``BulkResult.failed``); an outage makes it wait or raise, never drop an op.
    """

    async def ensure_index(self, alias: str, mapping: dict[str, Any], settings: dict[str, Any] | None = None,
                           version: int = 0) -> None:
        """Create the index behind ``alias`` on first use; add new fields to its mapping.

        A field whose type changed incompatibly (``version``: the source position of an event
        with this schema) starts a migration instead: the next generation of the index is
        created and becomes the target of every write at once, the current one is copied into
        it in the background and the alias swapped when complete. ``apply`` is durable in the
        new generation from the moment this returns; searches read the old one until the swap."""

    async def apply(self, ops: list[IndexOp]) -> BulkResult:
        """Write ``ops``; per-item outcomes in the result."""

    async def get_many(self, index: str, ids: Iterable[str],
                       source: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The documents of ``ids`` that exist (``source`` limits the fields)."""

    async def delete_older_than(self, alias: str, version: int) -> int:
        """TRUNCATE at ``version``: delete every document of ``alias`` older than it (newer ones,
        written by changes after the truncate, stay). Idempotent, so a replayed truncate is a
        no-op; returns how many documents it deleted."""

    async def drop(self, alias: str) -> bool:
        """Delete every index behind ``alias``; False if there was none."""

    async def resume(self, aliases: Iterable[str]) -> int:
        """Resume the rebuilds a stopped worker left half-done behind ``aliases``; how many run."""

    def migration_views(self) -> list[dict[str, Any]]:
        """The index rebuilds in progress (``/status``): alias, generations, copied, total, rate."""

    def stop(self) -> None:
        """Stop background work (a rebuild's fill) before the client closes; it resumes later."""
