"""The archive buffer: change events per topic-partition, cut into objects.

A cut happens at a record boundary (count, bytes, event date) or when the oldest buffered
event waited ``archive_max_wait_s`` (a quiet table still reaches the store). Every cut is
recorded durably *before* its object is written (``runtime/context.py``, the
``archive_cuts`` table) and handed back here as the partition's *plan* after a restart or
a rebalance: a replay cuts exactly at the recorded offsets, whatever the clock does, so
each change is stored once, under the same name, with the same bytes.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections import OrderedDict
from dataclasses import dataclass, field

from cdcstream.core.events import ChangeEvent
from cdcstream.sinks.base import ArchiveObject
from cdcstream.sinks.documents import change_record


@dataclass
class _Buffer:
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    first: int = -1
    last: int = -1
    day: str = ""
    prefix: str = ""
    opened_at: float = 0.0


class ArchiveBuffer:
    """Buffers per topic-partition and cuts objects at record-determined boundaries."""

    def __init__(self, max_records: int = 5000, max_bytes: int = 8 << 20, remember_keys: int = 50_000) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.remember_keys = remember_keys
        self._buf: dict[tuple[str, int], _Buffer] = {}
        # Per partition, the newest (version, op) archived or buffered per key, most recent last.
        self._seen: dict[tuple[str, int], OrderedDict[str, tuple[int, str]]] = {}
        # Undo records of the open attempt (begin/rollback): a batch that fails is retried
        # whole, and its archive events must then be buffered again, not taken for re-sends.
        self._undo_seen: list[tuple[tuple[str, int], str, tuple[int, str] | None]] | None = None
        self._undo_buf: dict[tuple[str, int], _Buffer | None] = {}
        # Per partition, cuts recorded by an earlier life: (first, last) offsets.
        self._plan: dict[tuple[str, int], list[tuple[int, int]]] = {}

    def plan(self, tp: tuple[str, int], cuts: list[tuple[int, int]]) -> None:
        """Cuts recorded for ``tp`` (by this worker or a former owner): replays cut exactly there."""
        self._plan[tp] = sorted(set(self._plan.get(tp, [])) | {(int(a), int(b)) for a, b in cuts})

    def has_plan(self, tp: tuple[str, int]) -> bool:
        return tp in self._plan

    def _planned(self, tp: tuple[str, int], offset: int) -> tuple[int, int] | None:
        for first, last in self._plan.get(tp, ()):
            if first <= offset <= last:
                return first, last
        return None

    def begin(self) -> None:
        """Open an attempt: what ``add``/``duplicate`` change until ``commit`` can be undone."""
        self._undo_seen, self._undo_buf = [], {}

    def commit(self) -> None:
        self._undo_seen, self._undo_buf = None, {}

    def rollback(self) -> None:
        """Undo the open attempt: buffers and re-send memory as they were at ``begin``.

        Objects the attempt cut are cut again by the retry at the same offsets (boundaries
        depend only on the records), so storing them twice writes the same bytes under the
        same names.
        """
        if self._undo_seen is None:
            return
        for tp, key, mark in reversed(self._undo_seen):
            seen = self._seen.setdefault(tp, OrderedDict())
            if mark is None:
                seen.pop(key, None)
            else:
                seen[key] = mark
        for tp, b in self._undo_buf.items():
            if b is None:
                self._buf.pop(tp, None)
            else:
                self._buf[tp] = b
        self.commit()

    def _note_seen(self, tp: tuple[str, int], key: str, mark: tuple[int, str] | None) -> None:
        if self._undo_seen is not None:
            self._undo_seen.append((tp, key, mark))

    def _note_buf(self, tp: tuple[str, int]) -> None:
        if self._undo_seen is not None and tp not in self._undo_buf:
            b = self._buf.get(tp)
            self._undo_buf[tp] = None if b is None else _Buffer(list(b.lines), b.size, b.first, b.last, b.day,
                                                                 b.prefix, b.opened_at)

    def duplicate(self, ev: ChangeEvent) -> bool:
        """True for an event already archived by source position: Debezium delivers at least
        once, and after a Connect or broker restart re-sends what it produced since its last
        offset flush, under new Kafka offsets. Within a partition a key's changes arrive in
        source order, so anything not newer than the last one seen is such a re-send.

        Remembered per partition for the last ``remember_keys`` keys (a re-send covers at
        most Connect's offset-flush interval) and forgotten with the partition's buffer, so
        a replay after a revoke or a crash is never mistaken for one.
        """
        assert ev.origin is not None
        tp = (ev.origin.topic, ev.origin.partition)
        seen = self._seen.setdefault(tp, OrderedDict())
        key = ev.doc_id
        mark = (ev.position.version, ev.op.value)
        last = seen.get(key)
        if last is not None and (mark[0] < last[0] or mark == last):
            return True
        self._note_seen(tp, key, last)
        seen[key] = mark
        seen.move_to_end(key)
        if len(seen) > self.remember_keys:
            old_key, old_mark = seen.popitem(last=False)
            self._note_seen(tp, old_key, old_mark)
        return False

    @staticmethod
    def _day(ev: ChangeEvent) -> str:
        return dt.datetime.fromtimestamp((ev.ts_source_ms or ev.ts_event_ms) / 1000, dt.UTC).strftime("%Y-%m-%d")

    def add(self, ev: ChangeEvent, now: float = 0.0) -> list[ArchiveObject]:
        """Buffer ``ev``; return the objects its arrival completed (at most two)."""
        assert ev.origin is not None, "archived events need their Kafka origin"
        tp = (ev.origin.topic, ev.origin.partition)
        self._note_buf(tp)
        out: list[ArchiveObject] = []
        day = self._day(ev)
        b = self._buf.get(tp)
        planned = self._planned(tp, b.first) if b is not None and b.lines else None
        if planned is not None:
            # Inside a recorded cut only its end cuts; past it (the recorded last event was
            # not buffered this time), cut before this one.
            if ev.origin.offset > planned[1]:
                out.append(self._cut(tp))
                b = None
        elif b is not None and b.lines and (b.day != day or self._planned(tp, ev.origin.offset) is not None):
            out.append(self._cut(tp))
            b = None
        if b is None:
            b = self._buf[tp] = _Buffer(day=day, prefix=f"{ev.table.connector}/{ev.table.short}", opened_at=now)
        line = json.dumps(change_record(ev), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if not b.lines:
            b.first = ev.origin.offset
            b.opened_at = now
        b.lines.append(line)
        b.size += len(line)
        b.last = ev.origin.offset
        planned = self._planned(tp, b.first)
        if planned is not None:
            if b.last >= planned[1]:
                out.append(self._cut(tp))
        elif len(b.lines) >= self.max_records or b.size >= self.max_bytes:
            out.append(self._cut(tp))
        return out

    def _cut(self, tp: tuple[str, int]) -> ArchiveObject:
        b = self._buf.pop(tp)
        name = f"{b.prefix}/dt={b.day}/{tp[1]:04d}-{b.first:020d}-{b.last:020d}.jsonl.gz"
        # mtime=0 and no file name in the header: identical input gives identical bytes.
        body = gzip.compress(b"".join(b.lines), compresslevel=6, mtime=0)
        return ArchiveObject(name, body, tp[0], tp[1], b.first, b.last, len(b.lines))

    def expire(self, now: float, max_wait_s: float) -> list[ArchiveObject]:
        """Cut buffers whose oldest event waited ``max_wait_s`` (not those inside a recorded cut,
        which end where it ends). The caller records each cut before storing it."""
        old = [tp for tp, b in self._buf.items()
               if b.lines and now - b.opened_at >= max_wait_s and self._planned(tp, b.first) is None]
        return [self._cut(tp) for tp in old]

    def cut_topics(self, topics: set[str]) -> list[ArchiveObject]:
        """Cut every buffer of ``topics`` now (a table leaves the archive profile)."""
        return [self._cut(tp) for tp, b in list(self._buf.items()) if tp[0] in topics and b.lines]

    def drop_partitions(self, tps: set[tuple[str, int]]) -> None:
        """Forget buffers of revoked partitions: their events were never acked and will be replayed."""
        for tp in list(self._buf):
            if tp in tps:
                del self._buf[tp]
        for tp in list(self._seen):
            if tp in tps:
                del self._seen[tp]
        for tp in list(self._plan):
            if tp in tps:
                del self._plan[tp]
        # An attempt open now must not bring them back: the revocation cancels it, and its
        # rollback would otherwise restore the held events, which the new owner (this worker
        # again, often) re-reads from the committed offset: archived twice.
        if self._undo_seen is not None:
            self._undo_seen = [u for u in self._undo_seen if u[0] not in tps]
        for tp in tps:
            self._undo_buf.pop(tp, None)

    def pending(self) -> dict[tuple[str, int], int]:
        """First buffered offset per topic-partition (not yet durable)."""
        return {tp: b.first for tp, b in self._buf.items() if b.lines}

