"""The data path: one agent over every captured topic, processing batches.

Offsets are committed only for durable events: ``take_events`` acks a batch after this
body returns, and the body returns only after the batch's Elasticsearch writes and
archive objects are stored. Events waiting in the archive buffer (objects are cut at
record-determined boundaries, so possibly several batches later) are held with an extra
reference on their message and acked when their object is written.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import faust

from cdcstream.core.events import ChangeEvent, KafkaOrigin
from cdcstream.core.faults import crash_point
from cdcstream.pipeline.decode import DecodeError, decode

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

    wait_s = pipe.settings.archive_max_wait_s
    if wait_s:
        @app.timer(max(0.5, min(5.0, wait_s / 2)))  # type: ignore[untyped-decorator]
        async def flush_idle_archive() -> None:
            """Opt-in: store archive objects that waited ``archive_max_wait_s`` for more events.

            Under the batch lock, so an object's acks are never released ahead of another's.
            The cut depends on time, not only on the records: a crash between storing and
            committing may cut the replay differently (docs/profiles.md).
            """
            if pipe.processor is None or pipe.stream is None:
                return
            async with pipe.archive_lock:
                for obj in pipe.buffer.expire(time.monotonic(), wait_s):
                    await pipe.processor.store(obj)
                    await release(pipe, pipe.stream, (obj.topic, obj.partition), obj.last_offset)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Held events of revoked partitions are never acked here: their new owner replays
        # them from the committed offset and cuts the same archive objects.
        tps = {(tp.topic, tp.partition) for tp in revoked}
        pipe.buffer.drop_partitions(tps)
        for tp in tps:
            pipe.held.pop(tp, None)


async def send_dlq(pipe: Pipeline, event: Any, reason: str) -> None:
    m = event.message
    await pipe.dlq_topic.send(key=m.key, value={
        "reason": reason, "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "timestamp_ms": int((m.timestamp or 0) * 1000), "key": _text(m.key), "value": _text(m.value),
        "worker": pipe.worker_id,
    })
    log.warning("DLQ %s[%d]@%d: %s", m.topic, m.partition, m.offset, reason)


async def handle_batch(pipe: Pipeline, stream: Any, batch: list[Any]) -> None:
    processor = await pipe.ready()
    decoded: list[ChangeEvent | None] = []
    dlq: list[tuple[int, str]] = []
    for i, event in enumerate(batch):
        m = event.message
        try:
            decoded.append(decode(m.key, m.value, origin=KafkaOrigin(m.topic, m.partition, m.offset),
                                  tables=pipe.router.topics))
        except DecodeError as e:
            decoded.append(None)
            dlq.append((i, f"decode: {e}"))
    try:
        out = await processor.process(decoded, pipe.profile_of, pipe.get_state)
    except Exception as e:  # noqa: BLE001 - isolate the poison event instead of crash-looping
        log.warning("batch of %d failed (%s: %s); retrying event by event", len(batch), type(e).__name__, e)
        out = await _one_by_one(pipe, decoded, dlq)
    else:
        dlq += out.dlq
    for i, reason in dlq:
        await send_dlq(pipe, batch[i], reason)
    # Table writes route by the *current* event, a field the stream shares with take_events'
    # background drainer, which reads it after its own awaits. So: no await from here until
    # it is restored, and it is restored to exactly what the drainer left there.
    saved = stream.current_event
    try:
        apply_outcome(pipe, stream, batch, out)
        for i, _reason in dlq:
            m = batch[i].message
            # Undecodable records have no ChangeEvent: the topic names their table.
            tid = pipe.router.topics.get(m.topic)
            key = f"{tid.key if tid else m.topic}|{m.partition}"
            cur = pipe.stat(key)
            pipe.set_stat(key, {**cur, "dlq": int(cur.get("dlq", 0)) + 1})
    finally:
        stream._set_current_event(saved)
    hold(pipe, batch, set(out.held))
    for obj in out.flushed:
        await release(pipe, stream, (obj.topic, obj.partition), obj.last_offset)
    for tp in {(e.message.topic, e.message.partition) for e in batch}:
        await release(pipe, stream, tp, -1)
    for alias in out.truncated:
        await truncate(pipe, alias)
    pipe.batches += 1
    crash_point("after_batch")


def hold(pipe: Pipeline, batch: list[Any], buffered: set[int]) -> None:
    """Hold the acks of archive-buffered events, and of every later event of their partition.

    Acks must reach Faust in offset order per partition: after a restart Faust's commit
    check lets one acked offset right behind an unacked one through (committed + 1), so a
    tombstone acked behind a buffered event would commit past it and lose it if the worker
    stopped before its object was written (tests/faults/test_crash_rounds.py found this).
    """
    for i, event in enumerate(batch):
        m = event.message
        tp = (m.topic, m.partition)
        if i in buffered or pipe.held.get(tp):
            m.incref()
            pipe.held[tp].append((event, i in buffered))


async def release(pipe: Pipeline, stream: Any, tp: tuple[str, int], upto: int) -> None:
    """Ack held events in order: buffered ones up to a stored object's last offset, and
    the unbuffered ones that only waited behind them."""
    q = pipe.held.get(tp)
    while q and (q[0][0].message.offset <= upto or not q[0][1]):
        await stream.ack(q.popleft()[0])


def apply_outcome(pipe: Pipeline, stream: Any, batch: list[Any], out: Outcome) -> None:
    # Faust routes a table write to the changelog partition of the current event: set it to
    # the event that produced the state (private API, pinned by tests/unit/test_faust_seams.py).
    for rk, (state, i) in out.states.items():
        stream._set_current_event(batch[i])
        pipe.tables.rows[rk] = state.dump()
    pipe.record_stats(stream, batch, out)


async def _one_by_one(pipe: Pipeline, decoded: list[ChangeEvent | None], dlq: list[tuple[int, str]]) -> Outcome:
    from cdcstream.pipeline.processor import Outcome

    assert pipe.processor is not None
    total = Outcome()
    for i, ev in enumerate(decoded):
        if ev is None:
            continue
        single: list[ChangeEvent | None] = [None] * len(decoded)
        single[i] = ev
        try:
            o = await pipe.processor.process(single, pipe.profile_of, pipe.get_state)
        except Exception as e:  # noqa: BLE001
            dlq.append((i, f"process: {type(e).__name__}: {e}"))
            log.debug("%s", traceback.format_exc())
            continue
        total.states.update(o.states)
        for k, v in o.stats.items():
            for n, c in v.items():
                total.stats[k][n] += c
        total.last_event_ms.update(o.last_event_ms)
        total.held += o.held
        total.flushed += o.flushed
        total.truncated += o.truncated
        dlq += o.dlq
    return total


async def truncate(pipe: Pipeline, alias: str) -> None:
    """TRUNCATE: point the table's aliases at fresh empty indices (no delete_by_query here)."""
    assert pipe.mirror is not None
    for a in (alias, f"{alias}-chunks"):
        if await pipe.mirror.truncate(a):
            log.warning("truncate: %s now points at an empty index", a)


def dumps(v: Any) -> str:
    return json.dumps(v, default=str)
