"""Logic of chunking, request packing and archive cutting (no servers)."""

from __future__ import annotations

import gzip
import json

import pytest

from cdcstream.core.events import ChangeEvent, KafkaOrigin, Op, SnapshotMarker, SourcePosition, TableId
from cdcstream.pipeline.archive import ArchiveBuffer
from cdcstream.pipeline.chunking import Chunker
from cdcstream.pipeline.embeddings import Embedder, EmbeddingError
from cdcstream.pipeline.tokens import get_encoding

PARAS = [f"Paragraph {i}: " + " ".join(f"word{i}_{j}" for j in range(30 + i % 7)) for i in range(40)]


def test_chunks_respect_the_token_cap() -> None:
    ch = Chunker(get_encoding(), max_tokens=64, overlap=8)
    chunks = ch.chunk("body", "\n\n".join(PARAS) + "\n\n" + "long " * 500)
    enc = get_encoding()
    assert chunks and all(len(enc.encode(c.text)) <= 64 + 2 for c in chunks)
    assert [c.n for c in chunks] == list(range(len(chunks)))


def test_editing_one_paragraph_changes_few_chunks() -> None:
    ch = Chunker(get_encoding(), max_tokens=120, overlap=8)
    before = ch.chunk("body", "\n\n".join(PARAS))
    edited = list(PARAS)
    edited[20] = edited[20] + " and one more sentence about it."
    after = ch.chunk("body", "\n\n".join(edited))
    changed = {c.hash for c in after} - {c.hash for c in before}
    assert 1 <= len(changed) <= 2, f"{len(changed)} of {len(after)} chunks changed"


def test_empty_text_has_no_chunks() -> None:
    assert Chunker(get_encoding()).chunk("body", "  \n\n ") == []


def test_request_packing_respects_limits() -> None:
    e = Embedder(client=None, model="m", max_inputs=3, max_request_tokens=100, max_input_tokens=60)  # type: ignore[arg-type]
    assert e.batches([10, 10, 10, 10]) == [[0, 1, 2], [3]]
    assert e.batches([60, 50, 10]) == [[0], [1, 2]]
    with pytest.raises(EmbeddingError, match="input 1 has 61 tokens"):
        e.batches([1, 61])


def _ev(offset: int, ts_ms: int, version: int) -> ChangeEvent:
    return ChangeEvent(TableId("c", "db", "public", "audit"), Op.CREATE, {"id": offset}, None,
                       {"id": offset, "msg": "x" * 10}, SourcePosition(version, f"v{version}"), SnapshotMarker.NONE,
                       ts_ms, ts_ms, KafkaOrigin("c.public.audit", 2, offset))


def test_archive_objects_are_deterministic_and_named_by_offsets() -> None:
    day1, day2 = 1_700_000_000_000, 1_700_000_000_000 + 86_400_000
    evs = [_ev(i, day1 if i < 7 else day2, i) for i in range(10)]

    def run() -> list[tuple[str, bytes]]:
        buf = ArchiveBuffer(max_records=3)
        return [(o.name, o.body) for e in evs for o in buf.add(e)]

    a, b = run(), run()
    assert a == b  # a replay cuts byte-identical objects
    names = [n for n, _ in a]
    assert names[0] == "c/public.audit/dt=2023-11-14/0002-00000000000000000000-00000000000000000002.jsonl.gz"
    # The day change cuts at offset 6 even though the object is not full.
    assert any(n.endswith("-00000000000000000006-00000000000000000006.jsonl.gz") for n in names)
    lines = [json.loads(x) for x in gzip.decompress(a[0][1]).splitlines()]
    assert [x["kafka"]["offset"] for x in lines] == [0, 1, 2] and lines[0]["op"] == "c"


def test_archive_skips_debezium_resends_but_never_a_replay_after_a_revoke() -> None:
    """Debezium re-sends what it produced since its last offset flush after a Connect or
    broker restart (new Kafka offsets, same source positions): archived once. A replay after
    the partition was revoked (same events, its buffer dropped) is archived again."""

    def ev(key: int, version: int, offset: int, op: Op = Op.UPDATE) -> ChangeEvent:
        return ChangeEvent(TableId("c", "db", "public", "audit"), op, {"id": key}, None, {"id": key},
                           SourcePosition(version, f"v{version}"), SnapshotMarker.NONE, 1, 1,
                           KafkaOrigin("c.public.audit", 0, offset))

    buf = ArchiveBuffer(max_records=100)
    assert not buf.duplicate(ev(1, 100, 0, Op.CREATE)) and not buf.duplicate(ev(1, 200, 1))
    assert buf.duplicate(ev(1, 100, 2, Op.CREATE)) and buf.duplicate(ev(1, 200, 3))  # the re-send
    assert not buf.duplicate(ev(1, 300, 4)) and not buf.duplicate(ev(2, 100, 5, Op.CREATE))
    buf.drop_partitions({("c.public.audit", 0)})
    assert not buf.duplicate(ev(1, 200, 1))  # replayed from the committed offset: archived again
