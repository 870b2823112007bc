"""The one owner of "may this event be acked", and of what an error means.

Per topic-partition, an event is acked only when every write derived from it is durable:
its Elasticsearch bulk items acknowledged, its archive object stored, its DLQ record
acknowledged by the broker. Acks reach Faust strictly in offset order per partition
(Faust's commit check lets one acked offset right behind an unacked one through after a
restart, so an out-of-order ack could commit past an unwritten event).

How it holds them: every event of a batch gets one extra reference (``incref``) when the
batch is admitted, before anything can fail. Faust's ``take_events`` drops its own
reference when the batch leaves the agent body, *also* when the agent is cancelled or
crashes; the message is acked only when ours is dropped too, and ours is dropped only
here, in offset order, once the event is settled. A worker stopped mid-batch or while a
sink is blocked therefore commits nothing of that batch.

Errors fall in two classes, decided by :func:`classify`:

* **event errors** — this event can never be written as it is (undecodable, a document
  Elasticsearch refuses for its own content, a table not in the config): the event goes to
  the DLQ with its reason, then is acked. They are reported by the pipeline as
  ``Outcome.dlq`` entries, never raised.
* **operational errors** — everything raised: authentication, connection, timeouts,
  HTTP 5xx and 429, an index-level mapping conflict, an unresolvable secret, and any
  exception not known to be the event's fault. Nothing is acked; the batch is retried with
  capped backoff until it goes through, and the cause shows on ``/status``, on ``/metrics``
  (``cdcstream_sink_blocked{sink,reason}``) and in the log. An operator who decides the
  blocking event is at fault after all moves it to the DLQ with ``cdcstream dlq skip``.

A rebalance revokes partitions (with aiokafka's eager protocol: every partition, at every
rebalance) while a batch may be in flight, blocked or not. Faust neither waits for it
(``stream_wait_empty=False``) nor stops it, and its new owner re-reads its events from the
committed offset. So :meth:`Checkpoint.revoke` forgets the revoked events and cancels the
batch's attempt (run through :meth:`Checkpoint.guard`), which then raises
:class:`BatchRevoked`; the agent keeps only the events still held (:meth:`Checkpoint.live`)
and writes nothing for the others — no document, no row state, no ack. A batch that had
gone on would have written, once its sink was back, row states older than the ones the new
owner wrote meanwhile, and a restarted worker would have recovered those.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from cdcstream.core.secrets import SecretError
from cdcstream.sinks.base import SinkUnavailable

#: Backoff between retries of a blocked batch: doubles from the first to the cap.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0

T = TypeVar("T")


class BatchRevoked(Exception):
    """Partitions of the batch in flight were revoked: its attempt (or its wait) was stopped."""


def classify(exc: BaseException) -> tuple[str, str]:
    """(sink, reason) of an exception that escaped a batch: every one is operational.

    The reason is a short, stable label (a metric label value), never the exception's text,
    which may quote values or credentials; the text goes to ``Blocked.error``, masked.
    """
    if isinstance(exc, SinkUnavailable):
        return exc.sink, exc.reason
    if isinstance(exc, SecretError):
        return "secrets", "secret unresolvable"
    mod = type(exc).__module__.split(".")[0]
    status = _status(exc)
    sink = {"elasticsearch": "elasticsearch", "elastic_transport": "elasticsearch", "openai": "embeddings",
            "httpx": "embeddings", "botocore": "archive", "boto3": "archive", "aiokafka": "kafka",
            "kafka": "kafka"}.get(mod, "worker")
    if status in (401, 403):
        return sink, f"HTTP {status} (credentials)"
    if status == 404:
        return sink, "HTTP 404 (not found)"
    if status == 429:
        return sink, "HTTP 429 (rate limited)"
    if status and status >= 500:
        return sink, f"HTTP {status}"
    if status == 400:
        return sink, "HTTP 400 (request refused)"
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return sink, "timeout"
    if "Connection" in name or isinstance(exc, ConnectionError | OSError):
        return sink, "unreachable"
    return sink, name


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    meta = getattr(exc, "meta", None)
    v = getattr(meta, "status", None)
    if isinstance(v, int):
        return v
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):  # botocore ClientError
        code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if isinstance(code, int) else None
    return None


@dataclass
class Blocked:
    """A batch that cannot go through, as ``/status`` shows it."""

    sink: str
    reason: str
    error: str
    since_ms: int
    attempts: int
    tables: list[str]
    # The first event of the blocked batch per table: what `cdcstream dlq skip TABLE` moves.
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    retry_in_s: float = 0.0

    def view(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Held:
    event: Any
    settled: bool = False  # every write derived from it is durable (or it went to the DLQ)
    waits_archive: bool = False


class Checkpoint:
    """Per-partition queues of admitted events; acks leave them in offset order."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, int], deque[_Held]] = {}
        self._by_id: dict[int, _Held] = {}
        self.blocked: Blocked | None = None
        self.blocked_total = 0  # batches that were ever blocked (a counter)
        self._guarded: asyncio.Future[Any] | None = None
        self._stopped_by_revoke: asyncio.Future[Any] | None = None
        self.revoked_batches = 0  # batches (or parts of them) dropped because a rebalance revoked them

    # --- the life of a batch -------------------------------------------------------------
    def admit(self, batch: list[Any]) -> None:
        """Take a reference on every event before anything can fail."""
        for event in batch:
            m = event.message
            m.incref()
            h = _Held(event)
            self._queues.setdefault((m.topic, m.partition), deque()).append(h)
            self._by_id[id(event)] = h

    def settle(self, batch: list[Any], waits_archive: Iterable[int]) -> None:
        """The batch went through: its events are durable except those waiting for an archive cut."""
        waiting = set(waits_archive)
        for i, event in enumerate(batch):
            h = self._by_id.pop(id(event), None)
            if h is None:  # its partition was revoked meanwhile
                continue
            if i in waiting:
                h.waits_archive = True
            else:
                h.settled = True

    def archived(self, tp: tuple[str, int], upto: int) -> None:
        """An archive object up to ``upto`` is stored: its events are durable."""
        for h in self._queues.get(tp, ()):
            if h.waits_archive and h.event.message.offset <= upto:
                h.waits_archive, h.settled = False, True

    async def release(self, stream: Any, tps: Iterable[tuple[str, int]] | None = None) -> int:
        """Drop our reference on settled events, from the head of each queue; returns how many."""
        n = 0
        for tp in list(self._queues if tps is None else tps):
            q = self._queues.get(tp)
            while q and q[0].settled:
                await stream.ack(q.popleft().event)
                n += 1
        return n

    def revoke(self, tps: Iterable[tuple[str, int]]) -> None:
        """Forget revoked partitions: their events are never acked here; the new owner replays them.

        Events not yet settled belong to the batch in flight: its guarded attempt is cancelled
        (a blocked sink retries inside it for as long as the sink is down)."""
        lost = False
        for tp in tps:
            for h in self._queues.pop(tp, ()):
                lost |= self._by_id.pop(id(h.event), None) is not None
        if lost:
            self.revoked_batches += 1
            task = self._guarded
            if task is not None and not task.done():
                self._stopped_by_revoke = task
                task.cancel()

    def live(self, event: Any) -> bool:
        """``event`` is admitted and its partition was not revoked since."""
        return id(event) in self._by_id

    async def guard(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` (a batch's attempt, or its wait before a retry) as a task that a revocation
        of the batch's partitions cancels: raises :class:`BatchRevoked` then. A cancellation of
        the caller itself (a stopping worker) cancels ``aw`` too and propagates as usual."""
        task = asyncio.ensure_future(aw)
        self._guarded = task
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._stopped_by_revoke is task and task.cancelled() and not (me and me.cancelling()):
                raise BatchRevoked from None
            raise
        finally:
            self._guarded = self._stopped_by_revoke = None

    def held(self) -> dict[tuple[str, int], int]:
        """Events admitted and not yet released, per partition."""
        return {tp: len(q) for tp, q in self._queues.items() if q}

    # --- blocking ------------------------------------------------------------------------
    def block(self, exc: BaseException, batch: list[Any], tables: dict[str, dict[str, Any]], attempts: int,
              retry_in_s: float, mask: Any = None) -> Blocked:
        sink, reason = classify(exc)
        text = f"{type(exc).__name__}: {exc}"
        if mask is not None:
            text = mask(text)
        since = self.blocked.since_ms if self.blocked is not None else int(time.time() * 1000)
        if self.blocked is None:
            self.blocked_total += 1
        self.blocked = Blocked(sink, reason, text[:500], since, attempts, sorted(tables), tables, retry_in_s)
        return self.blocked

    def waiting(self, sink: str, exc: BaseException | None, detail: str, mask: Any = None) -> None:
        """A sink client retries a write inside a batch (5xx, 429, unreachable): shown as blocked
        until the batch goes through."""
        reason = classify(exc)[1] if exc is not None else detail
        text = f"{type(exc).__name__}: {exc}" if exc is not None else detail
        if mask is not None:
            text = mask(text)
        if self.blocked is None:
            self.blocked_total += 1
            self.blocked = Blocked(sink, reason, text[:500], int(time.time() * 1000), 1, [], {}, 0.0)
        else:
            b = self.blocked
            b.sink, b.reason, b.error, b.attempts = sink, reason, text[:500], b.attempts + 1

    def unblock(self) -> Blocked | None:
        was, self.blocked = self.blocked, None
        return was


def backoff_after(attempts: int) -> float:
    return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** max(0, attempts - 1)))


async def sleep_or_wake(seconds: float, wake: asyncio.Event) -> None:
    """Sleep ``seconds`` or until ``wake`` is set (an operator's skip), then clear it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
    wake.clear()
