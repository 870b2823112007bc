"""The faust-streaming internals the pipeline relies on, pinned to the installed version.

If an upgrade breaks one of these, this test names it before the pipeline silently
commits offsets too early or writes state to the wrong changelog partition.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import faust
from faust.streams import Stream
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
    assert m.ack(Consumer()) is False  # take_events' ack: still referenced
    assert m.acked is False
    assert m.ack(Consumer()) is True  # the archive flushed: now safe to commit
    assert m.acked is True


def test_global_table_with_partitioner_needs_no_current_event() -> None:
    app = faust.App("seam-test", broker="memory://", store="memory://")
    t = app.GlobalTable("g", default=None, partitions=1, use_partitioner=True)
    assert t.partition_for_key("k") is None
