"""Archive exactly-once with bounded latency (issue 16): cuts are recorded before their objects
are written, so time-based cuts replay identically; leaving the archive profile stores the
buffered tail; a failing mixed batch never acks archive events held only in memory."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import Pipeline, pipeline
from tests.e2e.test_durability import _offsets
from tests.support import CONNECTION_ERRORS, WorkerApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TOKEN = "archive-cuts-test-token"
#: A worker just started lists no table yet (IndexError) or answers {"error": ...} (KeyError).
API_NOT_YET = (*CONNECTION_ERRORS, KeyError, IndexError)


def objects(p: Pipeline) -> dict[str, bytes]:
    return {str(f.relative_to(p.archive_dir)): f.read_bytes() for f in sorted(p.archive_dir.rglob("*.jsonl.gz"))}


def positions(objs: dict[str, bytes]) -> list[tuple[int, int]]:
    out = []
    for name, body in objs.items():
        lines = [json.loads(x) for x in gzip.decompress(body).splitlines()]
        first, last = (int(x) for x in name.rsplit("/", 1)[1].removesuffix(".jsonl.gz").split("-")[1:])
        assert lines[0]["kafka"]["offset"] == first and lines[-1]["kafka"]["offset"] == last, name
        out += [(x["kafka"]["partition"], x["kafka"]["offset"]) for x in lines]
    return out


def assert_exactly_once(p: Pipeline, expected: int) -> dict[str, bytes]:
    objs = objects(p)
    pos = positions(objs)
    assert len(pos) == len(set(pos)), f"a position archived twice: {sorted(pos)}"
    assert len(pos) == expected, (len(pos), sorted(objs))
    return objs


def archived_ids(p: Pipeline) -> list[int]:
    ids = []
    for body in objects(p).values():
        ids += [json.loads(x)["after"]["id"] for x in gzip.decompress(body).splitlines()]
    return sorted(ids)


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    for svc in ("kafka", "connect", "postgres"):
        require(svc)
    return require


def test_a_quiet_table_is_archived_within_max_wait_and_every_crash_point_replays_identically(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 5 (reproduced: a small archive table stored 0 objects, commits pinned)
    and test 6: kill -9 before the cut is recorded, after, after the put, after the acks."""
    wait_s = 3
    tables = [{"name": "public.audit_log", "profile": "archive"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        p.env.update({"CDCSTREAM_ARCHIVE_MAX_RECORDS": "1000", "CDCSTREAM_ARCHIVE_MAX_WAIT_S": str(wait_s)})
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'login' FROM generate_series(1, 3) g")
        p.apply()
        p.start_worker()
        p.wait("the first events", lambda: p.api("/api/tables")["tables"][0]["events"]["r"] == 3,
               retry_on=API_NOT_YET)
        t0 = time.monotonic()
        p.wait("3 rows archived", lambda: archived_ids(p) == [1, 2, 3], timeout=wait_s + 10)
        assert time.monotonic() - t0 <= wait_s + 10
        seen = assert_exactly_once(p, 3)
        p.kill_worker(signal.SIGKILL)
        n = 3
        for point in ("before_cut_record", "after_cut_record", "after_archive_put", "after_archive_release"):
            p.env["CDCSTREAM_CRASH_POINT"] = point
            p.start_worker()
            p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'logout' FROM generate_series(%s::int, %s::int) g",
                  (n + 1, n + 3))
            n += 3
            p.wait(f"the crash at {point}", lambda: p.worker is not None and p.worker.poll() is not None,
                   worker_may_exit=True, timeout=wait_s + 120)
            del p.env["CDCSTREAM_CRASH_POINT"]
            p.start_worker()

            def all_archived(upto: int = n) -> bool:
                return archived_ids(p) == list(range(1, upto + 1))

            p.wait(f"every row archived after {point}", all_archived, timeout=wait_s + 120)
            objs = assert_exactly_once(p, n)
            for name, body in seen.items():  # a replay never rewrites an object differently
                assert objs[name] == body, f"{name} differs after the crash at {point}"
            seen = objs
            p.kill_worker(signal.SIGKILL)


def test_leaving_the_archive_profile_stores_the_buffered_tail(tmp_path: Path,
                                                              stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 4 and test 5: 3 buffered events, the table switched to index_only, 1,000 more
    rows, kill -9, restart: the 3 are archived once, commits advance, held events stay bounded."""
    tables = [{"name": "public.audit_log", "profile": "archive"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        # No time-based cut: only the profile change may store the tail.
        p.env.update({"CDCSTREAM_ARCHIVE_MAX_RECORDS": "1000", "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "0",
                      "CDCSTREAM_API_TOKEN": "env:E2E_API_TOKEN", "E2E_API_TOKEN": TOKEN})
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'login' FROM generate_series(1, 3) g")
        p.apply()
        p.start_worker()
        api = WorkerApi(p.web_port, TOKEN)
        p.wait("3 events buffered", lambda: api.json("/api/tables")["tables"][0]["events"]["r"] == 3,
               retry_on=API_NOT_YET)
        assert objects(p) == {}
        tid = f"{p.connector}.public.audit_log"
        r = api.put(f"/api/tables/{tid}/profile", json={"profile": "index_only"})
        assert r.status_code == 200, r.text
        p.wait("the tail stored", lambda: archived_ids(p) == [1, 2, 3], timeout=60)
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'view' FROM generate_series(4, 1003) g")
        p.wait("1,000 rows indexed", lambda: len(p.docs("audit_log")) == 1000, timeout=180)
        metrics = requests.get(f"http://127.0.0.1:{p.web_port}/metrics", timeout=10).text
        flight = next(float(x.split()[-1]) for x in metrics.splitlines()
                      if x.startswith("cdcstream_in_flight_messages"))
        cap = next(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("cdcstream_in_flight_cap"))
        assert flight <= cap
        topic = p.topic("audit_log")

        def committed_to_the_end() -> bool:
            ends, committed = asyncio.run(_offsets(topic, f"e2e-{p.tag}"))
            return bool(ends) and ends == committed

        p.wait("commits advance to the end", committed_to_the_end, timeout=60)
        p.kill_worker(signal.SIGKILL)
        p.start_worker()
        p.wait("the restarted worker", lambda: p.api("/api/tables")["tables"][0]["documents"] == 1000,
               retry_on=API_NOT_YET)
        p.sql("INSERT INTO audit_log VALUES (1004, 'u', 'after restart')")
        p.wait("the row after the restart",
               lambda: p.es("GET", f"/{p.alias('audit_log')}/_doc/1004").get("found"))
        assert_exactly_once(p, 3)  # archived once, not again on the restart
        assert archived_ids(p) == [1, 2, 3]
        stats = p.api("/api/tables")["tables"][0]["stats"]
        # Nothing was replayed: the restart started from the committed end.
        assert stats["op_r"] == 3 and stats["op_c"] == 1001, stats


def test_a_failing_mixed_batch_never_acks_its_archive_events(tmp_path: Path,
                                                              stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 3 and test 4: archive events and a `full` event in one transaction; the
    embeddings API fails the batch; kill -9 while it waits; after the restart every archive
    position is stored exactly once."""
    from tests.e2e.test_runbook import private_embeddings

    tables: list[dict[str, Any]] = [{"name": "public.audit_log", "profile": "archive"},
                                    {"name": "public.articles", "profile": "full", "text_columns": ["body"]}]
    with private_embeddings(tmp_path) as emb, pipeline(
            tmp_path, stack("postgres"), stack("elasticsearch"),
            {**stack("embeddings"), "base_url": f"{emb.url}/v1"}, tables) as p:
        p.env.update({"CDCSTREAM_ARCHIVE_MAX_RECORDS": "4", "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "2",
                      "CDCSTREAM_PARTITIONS": "2"})
        # Texts unique to the run: the embedding cache (an index shared by every run) must not
        # answer for them, or the embeddings API is never asked and never fails.
        p.sql("INSERT INTO articles VALUES (1, 't', %s)", (f"the first article of run {p.tag}",))
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: "1" in p.docs("articles"), timeout=180)
        r = requests.post(f"{emb.url}/admin/faults", json={"status": 401, "seconds": 600}, timeout=10)
        assert r.status_code == 200
        # One transaction: archive rows and an article in the same batch (batch_wait_s 0.2).
        p.sql("BEGIN; INSERT INTO audit_log SELECT g, 'u' || g, 'x' FROM generate_series(1, 10) g; "
              f"INSERT INTO articles VALUES (2, 't2', 'an article whose embedding fails, run {p.tag}'); COMMIT")
        p.wait("blocked on the embeddings", lambda: any(b["sink"] == "embeddings" for b in p.api(
            "/api/tables").get("blocked") or []), timeout=60)
        time.sleep(3)  # several retries, each re-buffering the archive events
        p.kill_worker(signal.SIGKILL)
        requests.post(f"{emb.url}/admin/faults", json={"status": 0, "seconds": 0}, timeout=10)
        p.start_worker()
        p.wait("every archive row", lambda: archived_ids(p) == list(range(1, 11)), timeout=120)
        p.wait("the article", lambda: "2" in p.docs("articles"), timeout=120)
        assert_exactly_once(p, 10)
