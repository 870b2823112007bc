"""kill -9 at every named crash point and at seeded random moments while mixed changes flow
into PostgreSQL and MariaDB tables of all three profiles, while Elasticsearch, the embeddings
API and the object store (each behind a loopback fault proxy) answer 401, 400, 500, 503 or
reset connections for random windows; then `cdcstream verify --full` finds no drift anywhere,
the archive holds every change event exactly once and the DLQ holds exactly the deliberately
poisoned records.

Smoke size in CI (1,500 changes, one round per point); ``--full-size``: 50,000 changes,
five rounds of every point plus five random kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.faults.support import FaultPipeline, fault_pipeline, join
from tests.support.faultproxy import fault_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

# after_truncate is pinned by tests/e2e/test_durability.py (the load here issues no TRUNCATE).
POINTS = ["after_archive_put", "after_bulk", "after_batch", "mid_embedding", "after_cut_record"]
POISON = [b"{not a change event", b'{"schema": {}, "payload": {"op": "x", "source": {"lsn": 1}}}', b"\xff\xfe"]


def _crash_round(f: FaultPipeline, point: str | None, rng: random.Random, n: int) -> str:
    """One round: the worker runs into ``point`` (or a seeded kill -9) while ``n`` changes arrive."""
    p = f.pg
    load = f.load(n, rng, per_s=150)
    time.sleep(1)  # changes are flowing before the worker starts: every kill lands mid-stream
    if point is None:
        p.env.pop("CDCSTREAM_CRASH_POINT", None)
        p.start_worker()
        time.sleep(rng.uniform(3, 12))
        assert p.worker is not None and p.worker.poll() is None, f"worker died early:\n{p.worker_log()}"
        p.kill_worker()
        join(load)
        return "random kill -9"
    p.env["CDCSTREAM_CRASH_POINT"] = point
    p.start_worker()
    deadline = time.monotonic() + 300
    while p.worker is not None and p.worker.poll() is None:
        assert time.monotonic() < deadline, f"the worker never reached {point}:\n{p.worker_log()}"
        if not load.is_alive():
            # The round's changes did not reach the point yet (e.g. no article text changed):
            # keep changing until they do.
            join(load)
            load = f.load(20, rng, per_s=50)
        time.sleep(0.5)
    # The point kills the worker with SIGKILL (the supervisor exits with the child's -9); any
    # other exit is a crash of its own, not the point (a RocksDB lock, a refused start...).
    assert p.worker is not None
    assert p.worker.returncode in (-signal.SIGKILL, 256 - signal.SIGKILL), (
        f"the worker exited with {p.worker.returncode}, not at {point}:\n{p.worker_log()}")
    join(load)
    return f"crash point {point}"


def test_crash_points_and_random_kills_leave_no_drift(tmp_path: Path, require: Callable[[str], dict[str, Any]],
                                                     full_size: bool) -> None:
    changes, rounds = (50_000, 5) if full_size else (1_500, 1)
    # In between, for a quick deeper run: CDCSTREAM_FAULT_CHANGES=10000 CDCSTREAM_FAULT_ROUNDS=2.
    changes = int(os.environ.get("CDCSTREAM_FAULT_CHANGES", changes))
    rounds = int(os.environ.get("CDCSTREAM_FAULT_ROUNDS", rounds))
    schedule: list[str | None] = [pt for _ in range(rounds) for pt in [*POINTS, None]]
    es, emb, s3 = require("elasticsearch"), require("embeddings"), require("objectstore")
    emb_root = emb["base_url"].rstrip("/").removesuffix("/v1")
    with fault_pipeline(tmp_path, require, seed=20261126) as f, \
            fault_proxy(es["url"], "elasticsearch", {"X-Elastic-Product": "Elasticsearch"}) as pes, \
            fault_proxy(emb_root, "embeddings") as pemb, \
            fault_proxy(s3["endpoint"], "objectstore", preserve_host=True) as ps3:
        p = f.pg
        rng = random.Random(f.seed)
        archive = f"s3://{s3['bucket']}/faults-{p.tag}"
        p.env.update({
            "CDCSTREAM_ELASTICSEARCH_URL": pes.url.replace("http://", "es://"),
            "CDCSTREAM_EMBED_URL": f"openai://127.0.0.1:{pemb.port}/v1",
            "CDCSTREAM_ARCHIVE_URL": f"{archive}?endpoint={ps3.url}",
            "CDCSTREAM_ARCHIVE_ACCESS_KEY": "env:FAULT_S3_ACCESS",
            "CDCSTREAM_ARCHIVE_SECRET_KEY": "env:FAULT_S3_SECRET",
            "FAULT_S3_ACCESS": s3["access_key"], "FAULT_S3_SECRET": s3["secret_key"],
        })
        f.direct_env = {"CDCSTREAM_ELASTICSEARCH_URL": es["url"].replace("http://", "es://"),
                        "CDCSTREAM_EMBED_URL": emb["base_url"].replace("http://", "openai://"),
                        "CDCSTREAM_ARCHIVE_URL": f"{archive}?endpoint={s3['endpoint']}"}
        # Three archive records per object: crashes land inside and on object boundaries.
        p.env["CDCSTREAM_ARCHIVE_MAX_RECORDS"] = "3"
        p.env["CDCSTREAM_ARCHIVE_MAX_WAIT_S"] = "5"
        p.env["CDCSTREAM_CHUNK_TOKENS"] = "64"
        join(f.load(100, rng))  # rows for the initial snapshot
        p.apply()
        poisoned = asyncio.run(_poison(p.topic("orders")))
        for px in (pes, pemb, ps3):
            px.chaos(rng)
        # And a sure fault or two for each, whatever the timing (a smoke run's object store once
        # fell between all its windows: CI failure of 2026-12-05).
        pes.fail_next(500, "reset")
        ps3.fail_next(500, "reset")
        per_round = (changes - 100) // len(schedule)
        done = [_crash_round(f, point, rng, per_round) for point in schedule]
        for px in (pes, pemb, ps3):
            px.calm()
        faults = [px.report() for px in (pes, pemb, ps3)]
        # Elasticsearch and the object store see requests all the time; the embeddings API only
        # when an article's text changes, so at smoke size its windows may catch none
        # (tests/e2e/test_durability.py pins an embeddings outage on its own).
        assert faults[0]["injected"] and faults[2]["injected"], f"no fault reached the worker: {faults}"
        # The last worker runs clean until every table has caught up.
        p.env.pop("CDCSTREAM_CRASH_POINT", None)
        p.start_worker()
        for table in ("public.articles", "public.orders", f"{f.maria.db}.orders"):
            rc, report, err = f.verify(table, "--full", settle=600 if full_size else 240)
            assert rc == 0, f"{table}: drift after {done} with {faults}:\n{report}\n{err}\n{p.worker_log()}"
            assert report["source_rows"] == report["mirror_rows"] > 0
        # Time-based cuts (archive_max_wait_s) store the last partial objects; recorded cuts make
        # every replay cut the same objects: no event twice, none missing.
        for table in ("public.audit_log", f"{f.maria.db}.events"):
            rc, report, err = f.verify(table, "--full", settle=240)
            assert rc == 0, f"{table}: archive drift after {done} with {faults}:\n{report}\n{err}\n{p.worker_log()}"
            assert report["archive_events"] >= report["source_rows"] > 0
        # The DLQ holds the poisoned records (a kill between a DLQ write and its commit may
        # write one twice) and nothing else: no fault of a server reached it.
        dlq = asyncio.run(_dlq_positions(f"e2e-{p.tag}-dlq"))
        assert dlq == poisoned, (sorted(dlq), sorted(poisoned), faults)
        assert f.changes >= changes - len(schedule)


async def _poison(topic: str) -> set[tuple[str, int, int]]:
    prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
    await prod.start()
    try:
        out = set()
        for value in POISON:
            md = await prod.send_and_wait(topic, value, key=b'{"id": -1}', partition=0)
            out.add((topic, md.partition, md.offset))
        return out
    finally:
        await prod.stop()


async def _dlq_positions(topic: str) -> set[tuple[str, int, int]]:
    import json

    c = AIOKafkaConsumer(topic, bootstrap_servers="127.0.0.1:9092", auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    out: set[tuple[str, int, int]] = set()
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            got = await c.getmany(timeout_ms=1000)
            if not got and out:
                break
            for recs in got.values():
                for r in recs:
                    v = json.loads(r.value)
                    out.add((v["topic"], v["partition"], v["offset"]))
    finally:
        await c.stop()
    return out
