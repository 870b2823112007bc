"""cdcstream/runtime/consumer.py: Faust's consumer across a rebalance and the seek that ends recovery.

Found by the scale-out benchmark: with two workers of one app, the rebalance when the
second joined lost events (the group committed every partition to its end, documents
were missing) or stopped a partition's commits. The consumer is the real ``FixedConsumer``
(a subclass of the aiokafka driver's ``Consumer``), built by an app through the transport
``create_app`` gives it; only its I/O (fetch, seek, assignment) is stubbed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
import faust.transport.consumer
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import Message

from cdcstream.core.config import Config
from cdcstream.core.settings import Settings
from cdcstream.runtime import consumer as faust_fixes
from cdcstream.runtime.app import create_app

TOPIC = "shop.public.orders"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)
CHANGELOG = TP("fix-test-rows-changelog", 0)


def consumer() -> Any:
    app = faust.App("fix-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport = faust_fixes.fixed_transport(app)  # as create_app does
    assert type(app.consumer) is faust_fixes.FixedConsumer
    c: Any = app.consumer  # typed loosely: its methods are replaced by stubs
    c._is_changelog_tp = lambda tp: tp.topic.endswith("-changelog")
    c.assignment = lambda: {P0, P1, CHANGELOG}
    c.highwater = lambda tp: 10_000
    return c


def stub_seeks(c: Any, committed: Mapping[TP, int | None]) -> list[TP]:
    """Committed offsets as the broker returns them; returns the seek-to-beginning calls."""
    to_beginning: list[TP] = []

    async def seek_to_committed() -> Mapping[TopicPartition, int | None]:
        return {TopicPartition(tp.topic, tp.partition): o for tp, o in committed.items()}

    class Thread:
        async def seek_to_beginning(self, *tps: TopicPartition) -> None:
            to_beginning.extend(TP(t.topic, t.partition) for t in tps)

    c.seek_to_committed = seek_to_committed
    c._thread = Thread()
    return to_beginning


def message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)


def stub_fetch(c: Any, records: dict[TP, list[int]], ready: asyncio.Event | None = None) -> None:
    async def _getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[int]]:
        if ready is not None:
            await ready.wait()
        return {tp: offs for tp, offs in records.items() if tp in active_partitions}

    c._getmany = _getmany
    c._to_message = lambda tp, offset: message(tp, offset)


def test_regression_a_drained_buffer_does_not_resume_a_partition_paused_by_the_rebalance() -> None:
    """Bug: a partition whose stream buffer was full when the rebalance paused it was put
    back into the fetch set when its (cleared) buffer drained, so it was consumed during
    recovery, before the seek to its committed offset."""
    c = consumer()
    c._set_active_tps({P0, P1})
    c.on_buffer_full(P0)  # backpressure: the agent is slower than the fetcher
    c.pause_partitions({P0, P1})  # the rebalance
    c.on_buffer_drop(P0)  # flow_control.clear() emptied the buffer
    assert P0 not in c._get_active_partitions()
    c.resume_partitions({P0, P1})  # recovery done
    assert c._get_active_partitions() == {P0, P1}


def test_regression_the_seek_after_recovery_moves_every_stream_partition() -> None:
    """Bug: aiokafka seeks only committed offsets > 0. A partition without a commit kept the
    position its early fetches had reached (1226 in the benchmark), while Faust cleared the
    records fetched before it from the stream buffer: offsets 0-1225 were never processed and
    the next commit went past them. And gaps/read offsets recorded before the seek survived it."""
    c = consumer()
    to_beginning = stub_seeks(c, {P0: 250, P1: None, CHANGELOG: None})
    c._set_active_tps({P0, P1, CHANGELOG})
    c._read_offset[P1] = 1225
    c._gap[P0].addi(251, 2251)  # recorded from a record fetched before the seek

    asyncio.run(c.perform_seek())

    assert to_beginning == [P1]  # changelogs are recovery's business
    assert c._read_offset[P0] == 250 and c._read_offset[P1] is None
    assert not c._gap[P0]
    assert c._new_offset(P0) is None  # nothing counts as acked past 250
    # Held until Faust has cleared the stream buffers and resumes the flow.
    assert c._get_active_partitions() == {CHANGELOG}
    c.resume_flow()
    assert c._get_active_partitions() == {P0, P1, CHANGELOG}


def test_regression_records_fetched_before_a_seek_are_not_delivered_after_it() -> None:
    """Bug: a fetch result being delivered when the seek happened kept flowing: the drain
    loop recorded its offsets over the sought position, dropped the re-fetched records below
    them as duplicates, and counted the range between as a compaction gap (acked)."""

    async def run() -> None:
        c = consumer()
        stub_seeks(c, {P0: None, P1: None, CHANGELOG: None})
        stub_fetch(c, {P1: [1226, 1227, 1228]})
        c._set_active_tps({P0, P1, CHANGELOG})
        it = c.getmany(timeout=1.0)
        tp, first = await it.__anext__()
        await c.perform_seek()  # while the drain loop delivers 1226 ...
        c._read_offset[tp] = first.offset  # ... which it then records as read
        rest = [m.offset async for _, m in it]
        assert rest == []  # 1227, 1228: fetched again from the new position
        assert c._read_offset[P1] is None
        c.ack(first)  # if the stale record reached the agent, its ack must not count
        assert c._new_offset(P1) is None

    asyncio.run(run())


def test_records_fetched_after_the_seek_are_delivered() -> None:
    async def run() -> None:
        c = consumer()
        stub_seeks(c, {P0: None, P1: None, CHANGELOG: None})
        ready = asyncio.Event()
        stub_fetch(c, {P1: [0, 1, 2]}, ready)
        c._set_active_tps({P0, P1, CHANGELOG})
        it = c.getmany(timeout=1.0)
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)  # the fetch is waiting for records
        await c.perform_seek()
        c.resume_flow()
        ready.set()  # records from the new position
        offsets = [(await first)[1].offset] + [m.offset async for _, m in it]
        assert offsets == [0, 1, 2]

    asyncio.run(run())


def test_a_new_assignment_starts_without_the_old_generations_read_offsets() -> None:
    """The drain loop records the offset of the message in flight after the revocation
    popped it; the next generation must not start from it."""

    async def run() -> None:
        c = consumer()
        c._read_offset[P1] = 44
        c._gap[P1].addi(10, 20)

        async def no_callbacks(assigned: set[TP], generation_id: int = 0) -> None:
            return None

        c._on_partitions_assigned = no_callbacks
        c.app.on_rebalance_return = lambda: None
        await c.on_partitions_assigned({P1}, 2)
        assert c._read_offset[P1] is None and not c._gap[P1]

    asyncio.run(run())


def settings(tmp_path: Path) -> Settings:
    return Settings(app_id="fix-test", broker="kafka://127.0.0.1:1", store="memory://", data_dir=tmp_path,
                    elasticsearch_url=None, archive_url=None, embed_url=None)


def test_the_app_consumes_through_the_fixed_consumer(tmp_path: Path) -> None:
    app, _ = create_app(settings(tmp_path), Config())
    assert type(app.transport) is faust_fixes.FixedTransport
    assert issubclass(faust_fixes.FixedTransport, aiokafka_driver.Transport)
    assert issubclass(faust_fixes.FixedConsumer, aiokafka_driver.Consumer)
    assert type(app.consumer) is faust_fixes.FixedConsumer


def test_building_the_app_leaves_fausts_consumer_classes_unmodified(tmp_path: Path) -> None:
    classes = (faust.transport.consumer.Consumer, aiokafka_driver.Consumer, aiokafka_driver.Transport)
    before = [dict(vars(cls)) for cls in classes]
    app, _ = create_app(settings(tmp_path), Config())
    assert type(app.consumer) is faust_fixes.FixedConsumer
    assert [dict(vars(cls)) for cls in classes] == before
    # Nor were they modified when cdcstream was imported: the methods FixedConsumer overrides
    # are still Faust's own on its base class.
    base = faust.transport.consumer.Consumer
    for name in ("on_buffer_drop", "on_partitions_revoked", "on_partitions_assigned", "perform_seek",
                 "resume_flow", "_wait_next_records", "getmany"):
        method = getattr(base, name)
        assert method.__module__ == "faust.transport.consumer", name
        assert getattr(faust_fixes.FixedConsumer, name) is not method, name
    assert not [k for k in vars(base) if "cdcstream" in k]
    # And a plain Faust app still gets Faust's own consumer.
    plain = faust.App("fix-test-plain", broker="kafka://127.0.0.1:1", store="memory://")
    assert type(plain.consumer) is aiokafka_driver.Consumer


def test_regression_each_app_id_keeps_its_state_in_its_own_directory(tmp_path: Path) -> None:
    """Bug: every app id shared `data_dir` and Faust names table stores by table only (rows-0.db), so a
    worker of a new app id read another app's persisted changelog offsets and crashed at recovery
    ("persisted offset ... is higher than the last offset in that topic")."""
    a, _ = create_app(settings(tmp_path), Config())
    b, _ = create_app(settings(tmp_path).model_copy(update={"app_id": "other-app"}), Config())
    assert Path(a.conf.datadir) == tmp_path / "fix-test" and Path(b.conf.datadir) == tmp_path / "other-app"
