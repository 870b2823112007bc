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
``tests/unit/runtime/test_faust_fixes.py`` pins each one.

They live in ``FixedConsumer``, a subclass of the aiokafka driver's consumer whose
overrides call Faust's own method and add the fix around it; ``FixedTransport`` (the
aiokafka transport building that consumer) is handed to the app by ``create_app``
(``app.transport = fixed_transport(app)``). Faust's classes are not modified.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiokafka.structs import TopicPartition
from faust.transport import by_url
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, AppT, ConsumerT, Message


class FixedConsumer(aiokafka_driver.Consumer):
    """The aiokafka driver's consumer, delivering stream records only from their latest seek."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Stream partitions taken out of the fetch set by ``perform_seek`` until ``resume_flow``.
        self._cdcstream_held: set[TP] = set()
        #: Seeks done per partition, and the count each fetched record is as new as.
        self._cdcstream_seeks: defaultdict[TP, int] = defaultdict(int)
        self._cdcstream_fetched_at: dict[TP, int] = {}
        #: The read offset each partition had right after its latest seek.
        self._cdcstream_read_after_seek: dict[TP, int | None] = {}

    def on_buffer_drop(self, tp: TP) -> None:
        if tp in self._paused_partitions:
            # A paused partition (rebalance, recovery) stays paused: only resume_partitions
            # may fetch it again, after the seek. Faust would put it back into the fetch set.
            self._buffered_partitions.discard(tp)
            return
        super().on_buffer_drop(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._buffered_partitions.difference_update(revoked)
        self._cdcstream_held.difference_update(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Whatever the drain loop recorded since the revocation belongs to the old generation.
        for tp in assigned:
            self._read_offset.pop(tp, None)
            self._gap.pop(tp, None)
        self._buffered_partitions.difference_update(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        streams = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
        # The fetcher yields none of them until flow resumes (``resume_flow`` below): Faust
        # clears the stream buffers when it resumes the flow after this seek, and anything
        # delivered between the seek and that clear would be lost.
        held = self._cdcstream_held
        active = self._get_active_partitions()
        held |= active & streams
        active.difference_update(held)
        # Faust's seek: aiokafka's seek_to_committed, then read and committed offsets set
        # from the committed offsets it returns (read offset: the committed one if >= 0).
        await super().perform_seek()
        assigned = self.assignment()
        after_seek = {tp: self._read_offset.get(tp) for tp in assigned}
        # aiokafka sought only the partitions whose committed offset is > 0.
        seeked = {tp for tp in streams if (after_seek.get(tp) or 0) > 0}
        unseeked = streams - seeked
        if unseeked and self.app.conf.consumer_auto_offset_reset == "earliest":
            # The others kept the position the fetcher reached, past records fetched before
            # this seek.
            await self._thread.seek_to_beginning(*(TopicPartition(tp.topic, tp.partition) for tp in unseeked))
            seeked |= unseeked
            # The drain loop may have recorded a record fetched before the seek meanwhile.
            self._read_offset.update(after_seek)
        seeks = self._cdcstream_seeks
        for tp in seeked:
            seeks[tp] += 1
            self._gap.pop(tp, None)  # gaps seen before the seek are re-seen after it
        self._cdcstream_read_after_seek = {tp: after_seek.get(tp) for tp in seeked}

    def resume_flow(self) -> None:
        super().resume_flow()
        held = self._cdcstream_held
        if held:
            self._get_active_partitions().update((held - self._paused_partitions) & self.assignment())
            held.clear()

    async def _wait_next_records(self, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
        result = await super()._wait_next_records(timeout)
        # What the fetched records are as new as: the seeks done by the time they arrived.
        self._cdcstream_fetched_at = dict(self._cdcstream_seeks)
        return result

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        seeks = self._cdcstream_seeks
        async for tp, message in super().getmany(timeout):
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


class FixedTransport(aiokafka_driver.Transport):
    """The aiokafka transport (``kafka://``), with ``FixedConsumer`` as its consumer."""

    Consumer: ClassVar[type[ConsumerT]] = FixedConsumer


def fixed_transport(app: AppT) -> FixedTransport:
    """The consumer transport for ``app`` (set it as ``app.transport`` before anything uses
    the app's consumer): ``FixedTransport`` on the app's ``broker_consumer`` URLs."""
    urls = app.conf.broker_consumer
    driver = by_url(urls[0])
    if not issubclass(FixedTransport, driver):
        raise ValueError(f"broker {urls[0]}: the consumer fixes need Faust's aiokafka transport "
                         f"(kafka:// or aiokafka://), not {driver.__module__}.{driver.__qualname__}")
    return FixedTransport(urls, app)
