"""The faust-streaming internals the pipeline relies on, pinned to the installed version.

If an upgrade breaks one of these, this test names it before the pipeline silently
commits offsets too early or writes state to the wrong changelog partition.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import cast

import faust
from faust.streams import Stream
from faust.types import ConsumerT
from faust.types.tuples import TP, Message


def test_pinned_version() -> None:
    assert version("faust-streaming") == "0.15.3"


def test_set_current_event_exists() -> None:
    # agents/changes.py sets the current event before each table write in a take_events batch.
    assert callable(getattr(Stream, "_set_current_event", None))


def test_take_events_acks_after_the_batch_body() -> None:
    src = inspect.getsource(Stream.take_events)
    body_then_ack = src.index("yield list(events)") < src.index("await self.ack(event)")
    assert body_then_ack, "take_events must ack only after the consumer body returns"


def test_extra_reference_delays_the_final_ack() -> None:
    class Consumer:
        pass

    m = Message("t", 0, 5, 0.0, 0, None, b"k", b"v", None, tp=TP("t", 0))
    m.incref()  # the stream's own reference
    m.incref()  # held by the archive buffer
    assert m.ack(cast(ConsumerT, Consumer())) is False  # take_events' ack: still referenced
    assert m.acked is False
    assert m.ack(cast(ConsumerT, Consumer())) is True  # the archive flushed: now safe to commit
    assert m.acked is True


def test_global_table_with_partitioner_needs_no_current_event() -> None:
    app = faust.App("seam-test", broker="memory://", store="memory://")
    t = app.GlobalTable("g", default=None, partitions=1, use_partitioner=True)
    assert t.partition_for_key("k") is None


def test_regression_acks_stay_in_offset_order_behind_a_buffered_event() -> None:
    """Bug: a tombstone acked behind an archive-buffered event let Faust (after a restart,
    committed offset c, acked [c + 1]) commit past the buffered event; a clean stop before
    its object was written lost it from the archive. Every later event of the partition is
    now held too, and acks are released strictly in offset order (runtime/checkpoint.py)."""
    import asyncio
    from types import SimpleNamespace

    from cdcstream.runtime.checkpoint import Checkpoint

    def ev(offset: int) -> SimpleNamespace:
        m = Message("t", 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP("t", 0))
        m.incref()
        return SimpleNamespace(message=m)

    acked: list[int] = []

    class Stream:
        async def ack(self, event: SimpleNamespace) -> None:
            acked.append(event.message.offset)

    cp = Checkpoint()
    batch = [ev(10), ev(11), ev(12)]  # 10 buffered, 11 a tombstone, 12 buffered
    cp.admit(batch)
    cp.settle(batch, {0, 2})
    asyncio.run(cp.release(Stream()))
    assert acked == [] and cp.held() == {("t", 0): 3}
    cp.archived(("t", 0), 10)  # an object [..10] stored
    asyncio.run(cp.release(Stream()))
    assert acked == [10, 11]  # the tombstone follows the event it waited behind
    later = [ev(13)]  # nothing buffered before it any more... except 12
    cp.admit(later)
    cp.settle(later, set())
    asyncio.run(cp.release(Stream()))
    assert acked == [10, 11]  # 13 waits behind 12
    cp.archived(("t", 0), 12)
    asyncio.run(cp.release(Stream()))
    assert acked == [10, 11, 12, 13]
    assert cp.held() == {}
    cp.admit([e14 := ev(14)])
    cp.settle([e14], set())
    asyncio.run(cp.release(Stream()))
    assert acked[-1] == 14 and cp.held() == {}  # nothing buffered before it: released at once


def test_regression_a_batch_is_never_acked_before_it_settles() -> None:
    """Bug (issue 16, path 1): an exception escaping the batch handler closed take_events'
    generator, whose ``finally`` acked the whole batch: events with no write and no DLQ
    record were committed. Admitted events keep a reference until they settle, so Faust's
    own ack alone never completes them."""
    import asyncio
    from types import SimpleNamespace

    from cdcstream.runtime.checkpoint import Checkpoint

    class Consumer:
        pass

    m = Message("t", 0, 5, 0.0, 0, None, b"k", b"v", None, tp=TP("t", 0))
    m.incref()  # the stream's own reference, dropped by take_events' finally
    cp = Checkpoint()
    cp.admit([SimpleNamespace(message=m)])
    assert m.ack(cast(ConsumerT, Consumer())) is False  # take_events' finally: not acked, ours is still held
    assert m.acked is False
    cp.revoke([("t", 0)])  # a stop: nothing is released
    asyncio.run(cp.release(SimpleNamespace(ack=lambda e: None)))
    assert m.acked is False


def test_regression_stats_increments_not_lost_while_the_table_lags() -> None:
    """Bug: counters were read back from the stats GlobalTable, whose local copy only sees a
    write when its changelog message comes back; increments made meanwhile were lost
    (index_ops 22,616 for 47,352 events under load). The worker now keeps what it wrote."""
    from types import SimpleNamespace

    from cdcstream.runtime.context import Pipeline

    lagging: dict[str, dict[str, int]] = {}  # a table whose writes have not come back yet

    class Stats(dict[str, dict[str, int]]):
        def __setitem__(self, key: str, value: dict[str, int]) -> None:
            pass  # the write is "in flight": reads keep returning `lagging`

        def get(self, key: str, default: object = None) -> dict[str, int] | None:  # type: ignore[override]
            return lagging.get(key)

    pipe = SimpleNamespace(_own_stats={}, tables=SimpleNamespace(stats=Stats()))
    for _ in range(5):
        cur = Pipeline.stat(pipe, "t|0")  # type: ignore[arg-type]
        Pipeline.set_stat(pipe, "t|0", {**cur, "index_ops": cur.get("index_ops", 0) + 10})  # type: ignore[arg-type]
    assert Pipeline.stat(pipe, "t|0")["index_ops"] == 50  # type: ignore[arg-type]
    # The partition came back from another worker that counted on: the table is ahead.
    lagging["t|0"] = {"index_ops": 80, "dlq": 1}
    assert Pipeline.stat(pipe, "t|0") == {"index_ops": 80, "dlq": 1}  # type: ignore[arg-type]


def test_revocation_waits_for_unacked_events_only_with_stream_wait_empty() -> None:
    """A batch blocked by a sink holds its events unacked: with ``stream_wait_empty`` (on by
    default) Faust's revocation would wait for them and stall the group's rebalance. The app
    turns it off; agents/changes.py stops the batch itself (checkpoint.revoke/guard)."""
    from faust.app.base import App

    src = inspect.getsource(App._consumer_wait_empty)
    assert "if self.conf.stream_wait_empty:" in src and "await consumer.wait_empty()" in src
    assert "_consumer_wait_empty" in inspect.getsource(App._on_partitions_revoked)
    app_src = inspect.getsource(__import__("cdcstream.runtime.app", fromlist=["create_app"]).create_app)
    assert "stream_wait_empty=False" in app_src


def test_messages_carry_the_consumer_generation_they_were_fetched_in() -> None:
    # agents/changes.py drops events fetched before a rebalance (message.generation_id older
    # than app.consumer_generation_id, which the driver sets on each assignment).
    from faust.transport.drivers import aiokafka as driver

    assert "generation_id=self.app.consumer_generation_id" in inspect.getsource(driver)
    assert "app.consumer_generation_id = generation" in inspect.getsource(
        driver.ConsumerRebalanceListener.on_partitions_assigned)
    assert "generation_id" in inspect.signature(Message).parameters
