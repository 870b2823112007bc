"""Outages of the servers around the worker: Elasticsearch, the object store, Kafka Connect
and the Kafka broker each go away while changes flow, and come back. Nothing is lost, the
worker recovers by itself, and while Elasticsearch is away the events in flight stay under
the configured cap (``read_ahead``, ``batch_size``): the rest waits in Kafka.

These tests stop and start shared stack services: they run alone (CI runs tests one at a
time). Smoke size in CI (20 s outages); ``--full-size``: 60 s.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.faults.support import stop_gracefully
from tests.support import WorkerApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

TABLES = [
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.audit_log", "profile": "archive"},
]


def stack(action: str, service: str) -> None:
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "stack", action, "--only", service], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, f"stack {action} --only {service} failed:\n{r.stdout}\n{r.stderr}"


def verify(p: Pipeline, table: str, settle: float = 300, load: Load | None = None) -> dict[str, Any]:
    """Verify with the source quiet: changes still being written are not drift."""
    import json

    if load is not None:
        load.pause()
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", table, "--json", "--settle", str(settle)],
                       env=p.env, cwd=ROOT, capture_output=True, text=True, timeout=settle + 300, check=False)
    if load is not None:
        load.resume()
    assert r.returncode == 0, f"verify {table}: {r.stdout}\n{r.stderr}\n{p.worker_log()}"
    return dict(json.loads(r.stdout))


class Load:
    """Steady mixed changes on orders and audit_log from a background thread."""

    def __init__(self, p: Pipeline, per_s: float = 40) -> None:
        self.p, self.per_s = p, per_s
        self.rng = random.Random(7)
        self.live: list[int] = []
        self.next = 1
        self.count = 0
        self.stop = threading.Event()
        self.go = threading.Event()
        self.go.set()
        self.idle = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self) -> None:
        p, rng = self.p, self.rng
        if not self.live or rng.random() < 0.4:
            k, self.next = self.next, self.next + 1
            p.sql("INSERT INTO orders (id, customer, amount) VALUES (%s, %s, %s)", (k, f"c{k}", f"{k}.50"))
            p.sql("INSERT INTO audit_log VALUES (%s, 'ops', 'create')", (k,))
            self.live.append(k)
        elif rng.random() < 0.75:
            k = rng.choice(self.live)
            p.sql("UPDATE orders SET status = %s, amount = amount + 1 WHERE id = %s", (rng.choice(["paid", "void"]), k))
        else:
            k = self.live.pop(rng.randrange(len(self.live)))
            p.sql("DELETE FROM orders WHERE id = %s", (k,))
        self.count += 1

    def pause(self) -> None:
        self.go.clear()
        self.idle.wait(30)

    def resume(self) -> None:
        self.idle.clear()
        self.go.set()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.go.is_set():
                self.idle.set()
                self.go.wait(1)
                continue
            try:
                self.one()
            except BaseException as e:
                self.errors.append(e)
                return
            time.sleep(1 / self.per_s)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.errors, f"the load failed: {self.errors[0]!r}"


def in_flight(p: Pipeline) -> tuple[int, int] | None:
    try:
        text = WorkerApi(p.web_port, timeout=15).get("/metrics").text
    except requests.RequestException:
        return None
    got = dict(re.findall(r"^cdcstream_in_flight_(messages|cap) (\d+)", text, re.M))
    return (int(got["messages"]), int(got["cap"])) if len(got) == 2 else None


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    info = require("objectstore")
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.env.update({
            "CDCSTREAM_ARCHIVE_URL": f"s3://{info['bucket']}/e2e-{p.tag}?endpoint={info['endpoint']}",
            "CDCSTREAM_ARCHIVE_ACCESS_KEY": "env:E2E_S3_ACCESS", "CDCSTREAM_ARCHIVE_SECRET_KEY": "env:E2E_S3_SECRET",
            "E2E_S3_ACCESS": info["access_key"], "E2E_S3_SECRET": info["secret_key"],
            "CDCSTREAM_READ_AHEAD": "100", "CDCSTREAM_BATCH_SIZE": "50",
        })
        try:
            yield p
        finally:
            # Whatever happened, leave the shared stack whole for the next test.
            for svc in ("kafka", "connect", "elasticsearch", "objectstore"):
                stack("up", svc)


def test_outages_recover_by_themselves_and_lose_nothing(pipe: Pipeline, full_size: bool) -> None:
    p = pipe
    outage = 60.0 if full_size else 20.0
    p.sql("INSERT INTO orders (id, customer, amount) SELECT g, 'seed', 1 FROM generate_series(100000, 100049) g")
    p.apply()
    p.start_worker()
    p.wait("snapshot", lambda: len(p.docs("orders")) == 50)
    load = Load(p)
    load.thread.start()
    recovered: dict[str, float] = {}

    # Elasticsearch away: consumption pauses with a bounded number of events in flight.
    stack("down", "elasticsearch")
    samples: list[tuple[int, int]] = []
    end = time.monotonic() + outage
    while time.monotonic() < end:
        s = in_flight(p)
        if s is not None:
            samples.append(s)
        time.sleep(1)
    assert p.worker is not None and p.worker.poll() is None, f"the worker died:\n{p.worker_log()}"
    stack("up", "elasticsearch")
    t0 = time.monotonic()
    verify(p, "public.orders", load=load)
    recovered["elasticsearch"] = time.monotonic() - t0
    assert len(samples) >= outage / 4, f"/metrics answered only {len(samples)} times during the outage"
    peak, cap = max(m for m, _ in samples), samples[0][1]
    assert 0 < peak <= cap, f"in flight peaked at {peak}, cap {cap}"

    # The object store away: archive writes retry; nothing goes to the DLQ.
    stack("down", "objectstore")
    time.sleep(outage)
    stack("up", "objectstore")

    # Kafka Connect restarted: the connector resumes from its offsets (the slot kept the WAL).
    stack("down", "connect")
    time.sleep(outage / 2)
    stack("up", "connect")
    t0 = time.monotonic()
    verify(p, "public.orders", load=load)
    recovered["connect"] = time.monotonic() - t0

    # The broker restarted under everyone: Connect's producer and the worker reconnect.
    stack("down", "kafka")
    time.sleep(outage / 2)
    stack("up", "kafka")
    t0 = time.monotonic()
    verify(p, "public.orders", load=load)
    recovered["kafka"] = time.monotonic() - t0
    load.finish()
    assert load.count > 0
    verify(p, "public.orders")
    # Drain the archive's buffered tail (see test_crash_rounds) and compare it with the source.
    time.sleep(6)
    stop_gracefully(p)
    p.env["CDCSTREAM_ARCHIVE_MAX_RECORDS"] = "1"
    p.start_worker()
    report = verify(p, "public.audit_log")
    assert report["archive_events"] >= report["source_rows"] >= load.next - 1
    p.wait("the last worker's API", lambda: "records" in p.api("/api/dlq"))
    dlq = p.api("/api/dlq")
    assert not dlq.get("records"), f"outages sent events to the DLQ: {dlq}"
    print(f"recovery seconds (verify clean after the server was back): {recovered}; in flight peak {peak}/{cap}; "
          f"{load.count} changes")
