"""Fixes to faust-streaming 0.15.3's consumer bookkeeping across rebalances and seeks.

Two workers joining one group lost events (or stopped committing) after the rebalance,
because Faust delivered records of a stream partition *before* the seek to the committed
offset that ends table recovery, and then lost track of them:

* A partition whose stream buffer was full when the rebalance paused it stayed in
  ``Consumer._buffered_partitions``; when the cleared buffer drained, ``on_buffer_drop``
  put it back into the active set, so it was fetched while recovery still held it paused.
* ``perform_seek`` (end of recovery) relies on aiokafka's ``seek_to_committed``, which
  seeks only committed offsets > 0: a partition without a commit kept the fetch position
  it had reached, past records that ``flow_control.resume()`` then cleared from the stream
  buffer. They were never fetched again, and the next commit (no committed offset: no
  head-gap check) went past them.
* Where it did seek, records fetched before the seek kept flowing: the first one after
  the seek made ``_drain_messages`` record the skipped range as a compaction gap (which
  ``_new_offset`` counts as acked), its read offset then dropped the re-fetched records
  below it as duplicates, and the commit went past records nobody processed.
* The drain loop records the read offset of the message in flight *after* a revocation
  popped it, so the next generation started with a stale read offset and dropped the
  records between the committed offset and it.

The fixes keep one rule: records of a stream partition are delivered only from the
position of its latest seek, with read offsets and gaps recorded since that seek.
``tests/unit/test_faust_fixes.py`` pins each one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

_MARK = "_cdcstream_fixed"


def install() -> None:
    """Patch ``faust.transport.consumer.Consumer`` (idempotent; before the app starts)."""
    if getattr(Consumer, _MARK, False):
        return
    orig_revoked = Consumer.on_partitions_revoked
    orig_assigned = Consumer.on_partitions_assigned
    orig_getmany = Consumer.getmany
    orig_resume_flow = Consumer.resume_flow
    orig_wait_next_records = Consumer._wait_next_records

    def on_buffer_drop(self: Any, tp: TP) -> None:
        buffered = self._buffered_partitions
        if tp in buffered:
            buffered.discard(tp)
            # A paused partition (rebalance, recovery) stays paused: only resume_partitions
            # may fetch it again, after the seek.
            if tp not in self._paused_partitions:
                self._get_active_partitions().add(tp)

    async def on_partitions_revoked(self: Any, revoked: set[TP]) -> None:
        self._buffered_partitions.difference_update(revoked)
        getattr(self, "_cdcstream_held", set()).difference_update(revoked)
        await orig_revoked(self, revoked)

    async def on_partitions_assigned(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        # Whatever the drain loop recorded since the revocation belongs to the old generation.
        for tp in assigned:
            self._read_offset.pop(tp, None)
            self._gap.pop(tp, None)
        self._buffered_partitions.difference_update(assigned)
        await orig_assigned(self, assigned, generation_id)

    async def perform_seek(self: Any) -> None:
        streams = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
        # The fetcher yields none of them until flow resumes (``resume_flow`` below): Faust
        # clears the stream buffers when it resumes the flow after this seek, and anything
        # delivered between the seek and that clear would be lost.
        active = self._get_active_partitions()
        held: set[TP] = getattr(self, "_cdcstream_held", set())
        self._cdcstream_held = held
        held |= active & streams
        active.difference_update(held)
        committed: Mapping[Any, int | None] = await self.seek_to_committed()
        seeked = {tp for tp in streams if (committed.get(tp) or 0) > 0}
        unseeked = streams - seeked
        if unseeked and self.app.conf.consumer_auto_offset_reset == "earliest":
            # aiokafka seeks only committed offsets > 0; the others keep the position the
            # fetcher reached, past records fetched before this seek.
            from aiokafka.structs import TopicPartition

            await self._thread.seek_to_beginning(*(TopicPartition(tp.topic, tp.partition) for tp in unseeked))
            seeked |= unseeked
        seeks = _seeks(self)
        for tp in seeked:
            seeks[tp] += 1
            self._gap.pop(tp, None)  # gaps seen before the seek are re-seen after it
        self._read_offset.update({TP(tp.topic, tp.partition): o if o is not None and o >= 0 else None
                                  for tp, o in committed.items()})
        self._committed_offset.update({TP(tp.topic, tp.partition): o or None
                                       for tp, o in committed.items() if o is not None})
        self._cdcstream_read_after_seek = {tp: self._read_offset.get(tp) for tp in seeked}

    def resume_flow(self: Any) -> None:
        orig_resume_flow(self)
        held: set[TP] = getattr(self, "_cdcstream_held", set())
        if held:
            self._get_active_partitions().update((held - self._paused_partitions) & self.assignment())
            held.clear()

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        result = await orig_wait_next_records(self, timeout)
        # What the fetched records are as new as: the seeks done by the time they arrived.
        self._cdcstream_fetched_at = dict(_seeks(self))
        return result

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        seeks = _seeks(self)
        async for tp, message in orig_getmany(self, timeout):
            fetched_at = self._cdcstream_fetched_at.get(tp, 0)
            if seeks[tp] != fetched_at:
                continue  # fetched before its partition was sought: fetched again from there
            yield tp, message
            if seeks[tp] != fetched_at:
                # Sought while the drain loop delivered it: the loop has just recorded it as
                # read, over the offset the seek set; and if it reached a stream, its ack
                # must not count (it is fetched again from the new position).
                self._read_offset[tp] = self._cdcstream_read_after_seek.get(tp)
                message.acked = True

    Consumer.on_buffer_drop = on_buffer_drop  # type: ignore[method-assign]
    Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]
    Consumer.on_partitions_assigned = on_partitions_assigned  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    Consumer.resume_flow = resume_flow  # type: ignore[method-assign]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
    Consumer.getmany = getmany  # type: ignore[assignment,method-assign]
    setattr(Consumer, _MARK, True)


def _seeks(consumer: Any) -> defaultdict[TP, int]:
    seeks: defaultdict[TP, int] | None = getattr(consumer, "_cdcstream_seeks", None)
    if seeks is None:
        seeks = consumer._cdcstream_seeks = defaultdict(int)
    return seeks
