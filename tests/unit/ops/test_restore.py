"""cdcstream/ops/restore.py without a server: cuts, the state at a cut, history, targets' files."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from cdcstream.ops import restore as r
from cdcstream.sinks.archive import FileStore
from cdcstream.sinks.base import ArchiveObject


def ev(op: str, key: int, version: int, ts: int, after: dict[str, Any] | None = None,
       unavailable: list[str] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"table": "c/d/public/t", "op": op, "key": {"id": key}, "before": None, "after": after,
                           "position": {"version": version, "text": f"v{version}"}, "snapshot": "false",
                           "ts_source_ms": ts, "ts_event_ms": ts, "kafka": {"topic": "c.public.t", "partition": 0,
                                                                          "offset": version}}
    if unavailable:
        rec["unavailable"] = unavailable
    return rec


def test_cuts_parse() -> None:
    assert r.parse_cut("lsn=0/2E912040").version == (0x2E912040 << 1) | 1
    assert r.parse_cut("1/0").version == ((1 << 32) << 1) | 1
    assert r.parse_cut("version=42").version == 42
    assert r.parse_cut("mariadb-bin.000003:5065").version is not None
    assert r.parse_cut("2026-12-05T10:30:00Z").ts_ms == 1796466600000
    assert r.parse_cut("2026-12-05T10:30:00").ts_ms == 1796466600000  # UTC unless zoned
    assert r.parse_cut("2026-12-05T11:30:00+01:00").ts_ms == 1796466600000
    with pytest.raises(r.RestoreError, match="not a time"):
        r.parse_cut("yesterday")
    cut = r.parse_cut("2026-12-05T10:30:00Z")
    assert cut.skips_day("2026-12-06") and not cut.skips_day("2026-12-05")


def test_the_newest_change_per_key_deletes_truncates_and_unsent_columns() -> None:
    events = [
        ev("r", 1, 10, 100, {"id": 1, "a": "x", "body": "long"}),
        ev("r", 2, 10, 100, {"id": 2, "a": "y", "body": "b"}),
        ev("u", 1, 20, 200, {"id": 1, "a": "x2"}, unavailable=["body"]),  # unchanged TOAST keeps its value
        ev("d", 2, 30, 300),
        ev("c", 2, 40, 400, {"id": 2, "a": "again", "body": "c"}),
        ev("u", 1, 20, 200, {"id": 1, "a": "x2"}, unavailable=["body"]),  # the same change again
        ev("c", 3, 15, 150, {"id": 3, "a": "z", "body": "d"}),  # read late, older: still applies to key 3
    ]
    rows, keys, deleted, truncates = r.rebuild(iter(events))
    assert rows == {"1": {"id": 1, "a": "x2", "body": "long"}, "2": {"id": 2, "a": "again", "body": "c"},
                    "3": {"id": 3, "a": "z", "body": "d"}}
    assert keys["1"] == {"id": 1} and deleted == 0 and truncates == 0
    cut = r.parse_cut("version=35")
    rows, _, deleted, _ = r.rebuild(e for e in events if cut.includes(e))
    assert set(rows) == {"1", "3"} and deleted == 1
    trunc = {**ev("t", 0, 45, 450), "key": None}
    rows, _, deleted, truncates = r.rebuild(iter([*events, trunc, ev("c", 4, 50, 500, {"id": 4})]))
    assert set(rows) == {"4"} and truncates == 1 and deleted == 3


def _store(tmp_path: Path, objects: list[tuple[str, list[dict[str, Any]]]]) -> FileStore:
    store = FileStore(f"file://{tmp_path}/archive")
    for name, recs in objects:
        body = gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in recs), mtime=0)
        asyncio.run(store.put(ArchiveObject(name, body, "c.public.t", 0, 0, 0, len(recs))))
    return store


def test_restore_reads_objects_in_order_skips_later_days_and_writes_jsonl(tmp_path: Path) -> None:
    day1, day2 = 1796428800000, 1796515200000  # 2026-12-05, 2026-12-06 00:00 UTC
    store = _store(tmp_path, [
        ("c/public.t/dt=2026-12-05/0000-00000000000000000000-00000000000000000001.jsonl.gz",
         [ev("c", 1, 1, day1 + 10, {"id": 1, "v": "a"}), ev("c", 2, 2, day1 + 20, {"id": 2, "v": "b"})]),
        ("c/public.t/dt=2026-12-05/0000-00000000000000000002-00000000000000000002.jsonl.gz",
         [ev("u", 1, 3, day1 + 30, {"id": 1, "v": "a2"})]),
        ("c/public.t/dt=2026-12-06/0000-00000000000000000003-00000000000000000003.jsonl.gz",
         [ev("d", 2, 4, day2 + 10)]),
    ])
    seen: list[str] = []
    res = r.restore(store, "c", "public.t", r.parse_cut("2026-12-05T00:00:00.025Z"),
                    r.JsonlTarget(str(tmp_path / "out.jsonl")), on_progress=lambda p: seen.append(p.line()))
    assert res.rows == {"1": {"id": 1, "v": "a"}, "2": {"id": 2, "v": "b"}}
    assert res.progress.skipped == 1 and res.progress.objects_total == 3 and len(seen) == 3
    assert (tmp_path / "out.jsonl").read_text() == '{"id":1,"v":"a"}\n{"id":2,"v":"b"}\n'
    assert "2 rows" in res.summary() and "jsonl" in res.summary()
    assert res.notes() == []  # the cut lies inside what the archive covers
    early = r.restore_rows(store, "c", "public.t", r.parse_cut("2026-12-04T00:00:00Z"))
    assert early.rows == {} and "before the archive's oldest change" in early.notes()[0]
    late = r.restore_rows(store, "c", "public.t", r.parse_cut("2026-12-07T00:00:00Z"))
    assert "newest change is from 2026-12-06T00:00:00.010+00:00" in late.notes()[0]
    res = r.restore(store, "c", "public.t", r.parse_cut("version=100"),
                    r.JsonlTarget(str(tmp_path / "now.jsonl.gz")))
    assert gzip.decompress((tmp_path / "now.jsonl.gz").read_bytes()) == b'{"id":1,"v":"a2"}\n'
    assert [v["op"] for v in r.history(store, "c", "public.t", "1")] == ["c", "u"]
    assert [v["op"] for v in r.history(store, "c", "public.t", {"id": 2})] == ["c", "d"]
    with pytest.raises(r.RestoreError, match="no archive objects"):
        r.restore_rows(store, "c", "public.other", r.parse_cut("now"))
    assert r.parse_key('{"id": 2}') == {"id": 2} and r.parse_key("7") == "7"
