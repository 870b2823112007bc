"""Nothing silently lost (issue 16): values no decoder may refuse, and operational errors that
block and wait instead of filling the DLQ. Each test ran red on the code before the fix:

* odd values: ``OverflowError: date value out of range`` escaped the batch handler, Faust's
  ``take_events`` acked the batch, rows never reached Elasticsearch and the group committed;
* a changed Elasticsearch password: every event of the batch went to the DLQ one by one
  (401 is not retryable) and was acked; the mirror was missing them after the fix;
* an embeddings server answering 401: the same, through the embeddings client.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.e2e.harness import ROOT, Pipeline, pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ODD = """CREATE TABLE public.odd_values (id INT PRIMARY KEY, note TEXT NOT NULL, ts TIMESTAMP, tstz TIMESTAMPTZ,
                                         d DATE)"""


def _verify(p: Pipeline, table: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", table, "--full", "--settle", "30", "--json"],
                       env=p.env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


async def _offsets(topic: str, group: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """(end offsets, the group's committed offsets) per partition of ``topic``; empty if it does not exist."""
    c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, n) for n in sorted(parts)]
        if not tps:
            return {}, {}
        ends = {tp.partition: off for tp, off in (await c.end_offsets(tps)).items()}
        committed: dict[int, int] = {}
        if group:
            for tp in tps:
                committed[tp.partition] = (await c.committed(tp)) or 0
        return ends, committed
    finally:
        await c.stop()


def dlq_records(p: Pipeline) -> int:
    ends, _ = asyncio.run(_offsets(f"e2e-{p.tag}-dlq"))
    return sum(ends.values())


def blocked(p: Pipeline) -> list[dict[str, Any]]:
    return list(p.api("/api/tables").get("blocked") or [])


def es_file_user(*args: str) -> None:
    """``elasticsearch-users ARGS`` on the secured node: its file realm (the minimal distribution
    cannot hold native users) re-reads the users file within seconds, no restart."""
    from cdcstream.stack.base import StackPaths, run
    from cdcstream.stack.services.elasticsearch import SecureElasticsearchService

    svc = SecureElasticsearchService(StackPaths())
    run([svc.home() / "bin" / "elasticsearch-users", *args], env=svc.env(), user=svc.user, timeout=120,
        what="elasticsearch-users")


def es_login_ok(url: str, user: str, pw: str) -> bool:
    return requests.get(f"{url}/_security/_authenticate", auth=(user, pw), timeout=10).status_code == 200


class Load:
    """Inserts rows ``first..last`` into orders at about ``per_s`` a second, in the background."""

    def __init__(self, p: Pipeline, first: int, last: int, per_s: float = 20) -> None:
        self.p, self.first, self.last, self.per_s = p, first, last, per_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            for i in range(self.first, self.last + 1):
                self.p.sql("INSERT INTO orders VALUES (%s, %s, %s, 'new', now())", (i, f"c{i}", i))
                time.sleep(1 / self.per_s)
        except BaseException as e:  # reported by join()
            self.error = e

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the load did not finish"
        assert self.error is None, self.error


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    for svc in ("kafka", "connect", "postgres"):
        require(svc)
    return require


def test_regression_out_of_range_dates_and_infinity_are_mirrored_not_acked_unwritten(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 1 (reproduced: 22 of 60 rows lost, DLQ empty, group committed to the end)."""
    tables = [{"name": "public.odd_values", "profile": "index_only"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        p.sql(ODD)
        p.sql("INSERT INTO odd_values SELECT g, 'row ' || g, now(), now(), current_date FROM generate_series(1, 25) g")
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("odd_values")) == 25)
        p.sql("INSERT INTO odd_values VALUES (26, 'far future', '20000-01-01', now(), '20000-01-01')")
        p.sql("INSERT INTO odd_values VALUES (27, 'infinite', 'infinity', 'infinity', 'infinity'),"
              " (28, 'minus infinite', '-infinity', '-infinity', '-infinity')")
        p.sql("INSERT INTO odd_values SELECT g, 'row ' || g, now(), now(), current_date FROM generate_series(29, 52) g")
        p.wait("all 52 rows", lambda: len(p.docs("odd_values")) == 52, timeout=180)
        docs = p.docs("odd_values")
        far, inf, minus = docs["26"], docs["27"], docs["28"]
        # The documented form (docs/profiles.md): epoch milliseconds in the date field, the
        # source's text in _cdc.special.
        assert far["_cdc"]["special"]["ts"] == "+20000-01-01T00:00:00"
        assert far["ts"] == 568971820800000
        assert far["_cdc"]["special"]["d"] == "+20000-01-01"
        assert inf["_cdc"]["special"] == {"ts": "infinity", "tstz": "infinity", "d": "infinity"}
        assert inf["ts"] == 2**63 - 1 and minus["ts"] == -(2**63 - 1)
        assert minus["_cdc"]["special"]["tstz"] == "-infinity"
        # A range query orders them as PostgreSQL does: infinity after every finite time.
        r = p.es("POST", f"/{p.alias('odd_values')}/_search",
                 {"size": 3, "sort": [{"ts": "desc"}], "_source": False})
        assert [h["_id"] for h in r["hits"]["hits"]][:2] == ["27", "26"]
        assert dlq_records(p) == 0
        # The group commits to the end only because every event was written.
        topic = p.topic("odd_values")

        def committed_to_the_end() -> bool:
            ends, committed = asyncio.run(_offsets(topic, f"e2e-{p.tag}"))
            return bool(ends) and ends == committed

        p.wait("commits at the end", committed_to_the_end)


def test_wrong_elasticsearch_password_blocks_then_resumes_with_an_empty_dlq(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 2 (reproduced: 20 of 20 events in the DLQ, lag 0, 10 of 30 rows mirrored)."""
    secure = stack("elasticsearch-secure")
    admin = (secure["user"], secure["password"])
    tables = [{"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, stack("postgres"), secure, stack("embeddings"), tables) as p:
        p.es_auth = admin
        user, old_pw, new_pw = f"cdc_{p.tag}", uuid.uuid4().hex, uuid.uuid4().hex
        es_file_user("useradd", user, "-p", old_pw, "-r", "superuser")
        p.wait("the new user logs in", lambda: es_login_ok(secure["url"], user, old_pw), timeout=60)
        pw_file = tmp_path / "es-password"
        pw_file.write_text(old_pw)
        p.env.update({"CDCSTREAM_ELASTICSEARCH_URL": secure["url"].replace("http://", "es://"),
                      "CDCSTREAM_ELASTICSEARCH_USER": "env:E2E_ES_USER", "E2E_ES_USER": user,
                      "CDCSTREAM_ELASTICSEARCH_PASSWORD": f"file:{pw_file}"})
        try:
            p.sql("INSERT INTO orders SELECT g, 'c' || g, g, 'new', now() FROM generate_series(1, 10) g")
            p.apply()
            p.start_worker()
            p.wait("snapshot", lambda: len(p.docs("orders")) == 10)
            # The password changes under the running worker (a rotation it was not told of), and
            # rows keep coming.
            with Load(p, 11, 60, per_s=5):
                es_file_user("passwd", user, "-p", new_pw)
                p.wait("the node refuses the old password", lambda: not es_login_ok(secure["url"], user, old_pw))
                p.wait("blocked on the 401", lambda: any(
                    b["sink"] == "elasticsearch" and "401" in b["reason"] for b in blocked(p)))
            b = blocked(p)[0]
            assert new_pw not in json.dumps(b) and old_pw not in json.dumps(b)
            metrics = requests.get(f"http://127.0.0.1:{p.web_port}/metrics", timeout=10).text
            assert 'cdcstream_sink_blocked{sink="elasticsearch",reason="HTTP 401 (credentials)"} 1' in metrics
            assert "HTTP 401" in requests.get(f"http://127.0.0.1:{p.web_port}/status", timeout=10).text
            assert dlq_records(p) == 0
            time.sleep(3)
            assert len(p.docs("orders")) < 60  # it waits: nothing after the change is written
            # The fix: the setting's secret holds the new password; no restart.
            pw_file.write_text(new_pw)
            p.wait("all rows after the fix", lambda: len(p.docs("orders")) == 60, timeout=180)
            p.wait("unblocked", lambda: blocked(p) == [])
            rc, out, err = _verify(p, "public.orders")
            assert rc == 0, (out, err)
            assert dlq_records(p) == 0
            assert new_pw not in p.worker_log() and old_pw not in p.worker_log()
        finally:
            es_file_user("userdel", user)


def test_embeddings_401_blocks_then_resumes_by_itself_with_an_empty_dlq(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]], full_size: bool) -> None:
    """Issue 16 test 3: the embeddings API answers 401 for a while under load."""
    from tests.e2e.test_runbook import private_embeddings

    tables = [{"name": "public.articles", "profile": "full", "text_columns": ["body"]}]
    outage_s = 60 if full_size else 20
    with private_embeddings(tmp_path) as emb, pipeline(
            tmp_path, stack("postgres"), stack("elasticsearch"),
            {**stack("embeddings"), "base_url": f"{emb.url}/v1"}, tables) as p:
        # Texts unique to the run: the embedding cache (shared by every run) must not answer for them.
        p.sql("INSERT INTO articles SELECT g, 'title ' || g, %s || g FROM generate_series(1, 5) g",
              (f"body of run {p.tag}, article ",))
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("articles")) == 5, timeout=180)
        r = requests.post(f"{emb.url}/admin/faults", json={"status": 401, "seconds": outage_s}, timeout=10)
        assert r.status_code == 200
        for i in range(6, 31):
            p.sql("INSERT INTO articles VALUES (%s, %s, %s)", (i, f"title {i}", f"run {p.tag}: a new body for {i}"))
            time.sleep(0.1)
        p.wait("blocked on the 401", lambda: any(
            b["sink"] == "embeddings" and "401" in b["reason"] for b in blocked(p)), timeout=60)
        assert dlq_records(p) == 0
        p.wait("all rows after the outage", lambda: len(p.docs("articles")) == 30, timeout=outage_s + 180)
        p.wait("unblocked", lambda: blocked(p) == [])
        assert emb.stats()["rejected_fault"] > 0
        rc, out, err = _verify(p, "public.articles")
        assert rc == 0, (out, err)
        assert dlq_records(p) == 0


def test_truncate_and_inserts_in_one_transaction_with_a_kill_after_the_truncate(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16 path 6 and test 7: `TRUNCATE; INSERT 200 rows` in one transaction over 4
    partitions, kill -9 right after the truncate was applied: `verify --full` clean. Before, the
    truncate swapped in an empty index after the batch's writes (and its replay emptied the index
    again), while inserts on other partitions could already be indexed."""
    tables = [{"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        cfg = json.loads(p.config_path.read_text())
        cfg["connectors"][0]["partitions"] = 4
        p.config_path.write_text(json.dumps(cfg))
        p.env["CDCSTREAM_PARTITIONS"] = "4"
        p.sql("INSERT INTO orders SELECT g, 'old' || g, g, 'new', now() FROM generate_series(1, 300) g")
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: p.es("GET", f"/{p.alias('orders')}/_count").get("count") == 300, timeout=180)
        p.kill_worker(signal.SIGTERM)
        p.env["CDCSTREAM_CRASH_POINT"] = "after_truncate"
        p.start_worker()
        p.sql("BEGIN; TRUNCATE orders; "
              "INSERT INTO orders SELECT g, 'new' || g, g, 'new', now() FROM generate_series(101, 300) g; COMMIT")
        p.wait("the kill after the truncate", lambda: p.worker is not None and p.worker.poll() is not None,
               worker_may_exit=True, timeout=180)
        del p.env["CDCSTREAM_CRASH_POINT"]
        p.start_worker()
        p.wait("200 new rows and no old one", lambda: (lambda d: len(d) == 200 and all(
            v["customer"].startswith("new") for v in d.values()))(_all_docs(p, "orders")), timeout=180)
        rc, out, err = _verify(p, "public.orders")
        assert rc == 0, (out, err)
        assert dlq_records(p) == 0


def _all_docs(p: Pipeline, table: str) -> dict[str, dict[str, Any]]:
    p.es("POST", f"/{p.alias(table)}/_refresh")
    r = p.es("POST", f"/{p.alias(table)}/_search", {"size": 10_000, "query": {"match_all": {}}})
    return {h["_id"]: h["_source"] for h in r.get("hits", {}).get("hits", [])}
