"""The data path: one agent over every captured topic, processing batches.

    take_events (a batch) -> checkpoint.admit -> decode -> processor (route, branch, sinks)
        -> DLQ records -> row state, counters -> checkpoint.settle/release (acks, in offset order)

Acks belong to ``cdcstream/runtime/checkpoint.py``: every event is admitted (an extra
reference on its message) before anything can fail and released only once durable, so
neither a crash of this body nor a stop while it waits acks an unwritten event. An
exception is never the event's fault here (those arrive as ``Outcome.dlq``): the batch is
retried with capped backoff, whole, until it goes through, and ``/status`` names the cause.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import faust

from cdcstream.core.events import ChangeEvent, KafkaOrigin
from cdcstream.core.faults import crash_point
from cdcstream.core.masking import mask_text
from cdcstream.pipeline.decode import DecodeError, decode
from cdcstream.runtime.checkpoint import BatchRevoked, backoff_after, sleep_or_wake

if TYPE_CHECKING:
    from cdcstream.pipeline.processor import Outcome
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger("cdcstream.changes")


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def register(app: faust.App, pipe: Pipeline) -> None:
    if not pipe.data_topics:
        log.warning("no captured topic exists yet; the worker restarts itself when one appears")
        return
    topic = app.topic(*pipe.data_topics, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="cdcstream.changes")
    async def changes(stream: Any) -> None:
        pipe.stream = stream
        async for batch in stream.take_events(pipe.settings.batch_size, within=pipe.settings.batch_wait_s):
            async with pipe.archive_lock:
                await handle_batch(pipe, stream, list(batch))

    @app.task  # type: ignore[untyped-decorator]
    async def resume_migrations() -> None:
        """An index rebuild a killed worker left half-done resumes at start (without this, at
        its table's next change). Best effort: that next change resumes it too."""
        # Every table's, whatever its profile: a live profile change may have made it index.
        aliases = [a for r in pipe.router.by_key.values() for a in (r.alias, r.chunks_alias)]
        try:
            processor = await pipe.ready()
            if processor.es is not None and await processor.es.resume(aliases):
                log.warning("resumed the index rebuilds a stopped worker left half-done")
        except Exception as e:  # noqa: BLE001 - the table's next change resumes it instead
            log.warning("resuming index rebuilds at start failed (%s: %s)", type(e).__name__, mask_text(str(e)))

    wait_s = pipe.settings.archive_max_wait_s
    if wait_s:
        @app.timer(max(0.5, min(5.0, wait_s / 2)))  # type: ignore[untyped-decorator]
        async def flush_idle_archive() -> None:
            """Store archive objects whose oldest event waited ``archive_max_wait_s``.

            Under the batch lock, so acks leave in offset order. The cut is recorded before
            the object is stored (``Pipeline.flush_archive``): a replay cuts it again at the
            same offsets, so a time-based cut is as deterministic as a count-based one.
            """
            if pipe.processor is None or pipe.stream is None:
                return
            async with pipe.archive_lock:
                await pipe.flush_archive(pipe.buffer.expire(time.monotonic(), wait_s))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Held events of revoked partitions are never acked here: their new owner replays
        # them from the committed offset and cuts the same archive objects.
        tps = {(tp.topic, tp.partition) for tp in revoked}
        pipe.buffer.drop_partitions(tps)
        pipe.checkpoint.revoke(tps)


async def send_dlq(pipe: Pipeline, event: Any, reason: str) -> None:
    m = event.message
    # send() + the returned future: the record is acknowledged by the broker before the event is.
    fut = await pipe.dlq_topic.send(key=m.key, value={
        "reason": reason, "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "timestamp_ms": int((m.timestamp or 0) * 1000), "key": _text(m.key), "value": _text(m.value),
        "worker": pipe.worker_id,
    })
    await fut
    log.warning("DLQ %s[%d]@%d: %s", m.topic, m.partition, m.offset, reason)


def _table_of(pipe: Pipeline, event: Any) -> str:
    tid = pipe.router.topics.get(event.message.topic)
    return tid.key if tid else event.message.topic


async def handle_batch(pipe: Pipeline, stream: Any, batch: list[Any]) -> None:
    """Process ``batch`` until it goes through; ack only what is durable."""
    checkpoint = pipe.checkpoint
    # Fetched before a rebalance, delivered after it (take_events had them already): the
    # partition was revoked meanwhile and its owner re-reads them. Never admitted.
    generation = stream.app.consumer_generation_id
    batch = [e for e in batch if e.message.generation_id == generation]
    checkpoint.admit(batch)
    skipped: dict[int, str] = {}
    attempts = 0
    pipe.load_cut_plans({(e.message.topic, e.message.partition) for e in batch})
    while True:
        batch, skipped = _still_owned(pipe, stream, batch, skipped)
        if not batch:
            _dropped_revoked(pipe)
            return
        pipe.buffer.begin()
        try:
            out, dlq = await checkpoint.guard(_attempt(pipe, batch, skipped))
            if len(_still_owned(pipe, stream, batch, skipped)[0]) < len(batch):
                # Revoked while the attempt finished: nothing of it is applied (row state, stats,
                # acks); the events still owned are attempted again (writes are idempotent).
                raise BatchRevoked
        except BatchRevoked:
            pipe.buffer.rollback()
            continue
        except Exception as e:  # noqa: BLE001 - never the event's fault (checkpoint.classify): wait, retry
            pipe.buffer.rollback()
            attempts += 1
            delay = backoff_after(attempts)
            culprit: int | None = getattr(e, "cdc_event_index", None)
            first: dict[str, dict[str, Any]] = {}
            for i, ev in sorted(enumerate(batch), key=lambda x: x[0] != culprit):
                if i not in skipped:
                    m = ev.message
                    first.setdefault(_table_of(pipe, ev), {"topic": m.topic, "partition": m.partition,
                                                             "offset": m.offset})
            b = checkpoint.block(e, batch, first, attempts, delay, mask=mask_text)
            log.error("blocked (%s: %s), attempt %d, retrying in %.1fs: %s", b.sink, b.reason, attempts, delay,
                      b.error)
            if attempts == 1:
                log.debug("%s", traceback.format_exc())
            if "credentials" in b.reason or b.sink == "secrets":
                # Resolve the secrets again before the retry: the fix may be a new password.
                await pipe.reset_clients()
            with contextlib.suppress(BatchRevoked):  # the loop's head drops the revoked events
                await checkpoint.guard(sleep_or_wake(delay, pipe.skip_wake))
            _take_skips(pipe, batch, skipped, b.error, culprit)
            continue
        pipe.buffer.commit()
        break
    was = checkpoint.unblock()
    if was is not None:
        log.warning("unblocked after %d attempts (%s: %s)", was.attempts, was.sink, was.reason)
    # Table writes route by the *current* event, a field the stream shares with take_events'
    # background drainer, which reads it after its own awaits. So: no await from here until
    # it is restored, and it is restored to exactly what the drainer left there.
    saved = stream.current_event
    try:
        apply_outcome(pipe, stream, batch, out)
        for i, _reason in dlq:
            key = f"{_table_of(pipe, batch[i])}|{batch[i].message.partition}"
            cur = pipe.stat(key)
            pipe.set_stat(key, {**cur, "dlq": int(cur.get("dlq", 0)) + 1})
    finally:
        stream._set_current_event(saved)
    checkpoint.settle(batch, out.held)
    for obj in out.flushed:
        checkpoint.archived((obj.topic, obj.partition), obj.last_offset)
    await checkpoint.release(stream, {(e.message.topic, e.message.partition) for e in batch}
                             | {(o.topic, o.partition) for o in out.flushed})
    pipe.batches += 1
    crash_point("after_batch")


def _still_owned(pipe: Pipeline, stream: Any, batch: list[Any],
                 skipped: dict[int, str]) -> tuple[list[Any], dict[int, str]]:
    """The events of ``batch`` whose partitions were not revoked since admission, and the
    operator's skips renumbered for them."""
    generation = stream.app.consumer_generation_id
    keep = [i for i, e in enumerate(batch) if pipe.checkpoint.live(e) and e.message.generation_id == generation]
    if len(keep) == len(batch):
        return batch, skipped
    at = {old: new for new, old in enumerate(keep)}
    return [batch[i] for i in keep], {at[i]: r for i, r in skipped.items() if i in at}


def _dropped_revoked(pipe: Pipeline) -> None:
    was = pipe.checkpoint.unblock()
    log.warning("batch dropped: its partitions were revoked by a rebalance; their owner re-reads them from the "
                "committed offset%s", f" (it was blocked: {was.sink}: {was.reason})" if was else "")


async def _attempt(pipe: Pipeline, batch: list[Any], skipped: dict[int, str]) -> tuple[Outcome, list[tuple[int, str]]]:
    """One try at the whole batch: every sink write, then the DLQ records. Raises on any
    operational error; writes are idempotent (external versions, deterministic archive
    objects), so a retry after a partial attempt rewrites the same data."""
    processor = await pipe.ready()
    decoded: list[ChangeEvent | None] = []
    dlq: list[tuple[int, str]] = []
    for i, event in enumerate(batch):
        if i in skipped:
            decoded.append(None)
            dlq.append((i, skipped[i]))
            continue
        m = event.message
        try:
            decoded.append(decode(m.key, m.value, origin=KafkaOrigin(m.topic, m.partition, m.offset),
                                  tables=pipe.router.topics))
        except DecodeError as e:
            decoded.append(None)
            dlq.append((i, f"decode: {e}"))
        except Exception as e:
            # Not known to be the record's fault (a decoder bug, say): block on it, naming it,
            # so that `dlq skip` can move exactly this record if an operator decides it is.
            e.cdc_event_index = i  # type: ignore[attr-defined]
            raise
    out = await processor.process(decoded, pipe.profile_of, pipe.get_state)
    dlq += out.dlq
    for i, reason in dlq:
        await send_dlq(pipe, batch[i], reason)
    return out, dlq


def _take_skips(pipe: Pipeline, batch: list[Any], skipped: dict[int, str], error: str,
                culprit: int | None) -> None:
    """The operator's ``dlq skip TABLE``: the event that blocks TABLE goes to the DLQ (the
    one named by the error when known, else TABLE's first event in the batch)."""
    for table, reason in list(pipe.skip_requests.items()):
        for i, ev in sorted(enumerate(batch), key=lambda x: x[0] != culprit):
            if i not in skipped and _table_of(pipe, ev) == table:
                skipped[i] = f"skipped by operator: {reason} (it was blocked by: {error})"
                m = ev.message
                log.warning("operator skip: %s[%d]@%d goes to the DLQ", m.topic, m.partition, m.offset)
                del pipe.skip_requests[table]
                break


def apply_outcome(pipe: Pipeline, stream: Any, batch: list[Any], out: Outcome) -> None:
    # Faust routes a table write to the changelog partition of the current event: set it to
    # the event that produced the state (private API, pinned by tests/unit/runtime/test_faust_seams.py).
    for rk, (state, i) in out.states.items():
        stream._set_current_event(batch[i])
        pipe.tables.rows[rk] = state.dump()
    pipe.record_stats(stream, batch, out)


def dumps(v: Any) -> str:
    return json.dumps(v, default=str)
