"""The archive buffer's attempts and recorded cuts (issue 16): retries re-buffer, replays cut
where the first life cut, time-based cuts included."""

from __future__ import annotations

from cdcstream.core.events import ChangeEvent, KafkaOrigin, Op, SnapshotMarker, SourcePosition, TableId
from cdcstream.pipeline.archive import ArchiveBuffer

T = TableId("c", "db", "public", "audit")


def ev(offset: int, key: int | None = None, partition: int = 0) -> ChangeEvent:
    k = offset if key is None else key
    return ChangeEvent(T, Op.CREATE, {"id": k}, None, {"id": k, "n": offset}, SourcePosition(1000 + offset, "p"),
                       SnapshotMarker.NONE, 1_700_000_000_000, 1_700_000_000_000,
                       KafkaOrigin("topic", partition, offset))


def run(buf: ArchiveBuffer, offsets: range, *, expire_after: int | None = None) -> list[tuple[str, int, int]]:
    out = []
    for o in offsets:
        assert not buf.duplicate(ev(o))
        out += buf.add(ev(o), now=float(o))
        if expire_after is not None and o == expire_after:
            out += buf.expire(now=1e9, max_wait_s=1)
    return [(x.name, x.first_offset, x.last_offset) for x in out]


def test_regression_a_failed_attempt_rebuffers_its_archive_events() -> None:
    """Bug (issue 16 path 3): a failed mixed batch was retried event by event; the retry took
    the archive events it had buffered as Debezium re-sends, never held them, and acked them
    with nothing stored. An attempt now rolls back whole."""
    buf = ArchiveBuffer(max_records=4)
    run(buf, range(0, 2))
    buf.begin()
    first = run(buf, range(2, 6))  # cuts [0..3], buffers 4, 5
    buf.rollback()
    assert buf.pending() == {("topic", 0): 0}
    buf.begin()
    again = run(buf, range(2, 6))  # the retry: no event is taken for a re-send
    buf.commit()
    assert again == first and [c[1:] for c in again] == [(0, 3)]
    assert buf.pending() == {("topic", 0): 4}


def test_a_replay_cuts_where_a_time_based_cut_was_recorded() -> None:
    life1 = ArchiveBuffer(max_records=4)
    cuts = run(life1, range(0, 7), expire_after=2)  # a quiet moment: [0..2] by time, then [3..6] by count
    assert [c[1:] for c in cuts] == [(0, 2), (3, 6)]
    # Without the record, a replay would cut [0..3]: offset 3 in two objects.
    assert [c[1:] for c in run(ArchiveBuffer(max_records=4), range(0, 7))] == [(0, 3)]
    life2 = ArchiveBuffer(max_records=4)
    life2.plan(("topic", 0), [(0, 2), (3, 6)])
    assert run(life2, range(0, 7)) == cuts  # same names, same offsets


def test_a_recorded_cut_wins_over_count_and_time() -> None:
    buf = ArchiveBuffer(max_records=2)
    buf.plan(("topic", 0), [(0, 4)])
    assert run(buf, range(0, 4)) == []  # 4 records, max 2: still inside the recorded cut
    assert buf.expire(now=1e9, max_wait_s=1) == []  # and no clock cuts it either
    assert [c[1:] for c in run(buf, range(4, 5))] == [(0, 4)]


def test_leaving_the_archive_profile_cuts_the_tail() -> None:
    buf = ArchiveBuffer(max_records=100)
    run(buf, range(0, 3))
    objs = buf.cut_topics({"topic"})
    assert [(o.first_offset, o.last_offset, o.records) for o in objs] == [(0, 2, 3)]
    assert buf.pending() == {}
    assert buf.cut_topics({"other"}) == []


def test_regression_a_rollback_after_a_revocation_does_not_restore_the_revoked_buffer() -> None:
    """Bug (found by the deep fault run, archive 'archived-twice'): a revocation cancels the batch's
    attempt; its rollback restored the revoked partition's held events, which the partition's next
    owner (this worker again) re-read from the committed offset, so they were archived twice."""
    buf = ArchiveBuffer(max_records=4)
    run(buf, range(0, 2))  # held: offsets 0, 1 of partition 0
    buf.add(ev(0, partition=1))
    buf.begin()
    run(buf, range(2, 3))
    buf.drop_partitions({("topic", 0)})  # the revocation, while the attempt is open
    buf.rollback()  # the cancelled attempt
    assert buf.pending() == {("topic", 1): 0}  # partition 1 as before the attempt; partition 0 gone
    # Re-read from the committed offset (0): each event once, none taken for a re-send.
    again = run(buf, range(0, 4))
    assert [c[1:] for c in again] == [(0, 3)]
