"""kill -9 at every named crash point and at seeded random moments while mixed changes flow
into PostgreSQL and MariaDB tables of all three profiles; then `cdcstream verify --full`
finds no drift anywhere and the archive holds every change event exactly once.

Smoke size in CI (1,500 changes, one round per point); ``--full-size``: 50,000 changes,
five rounds of every point plus five random kills.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import FaultPipeline, fault_pipeline, join, stop_gracefully

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

POINTS = ["after_archive_put", "after_bulk", "after_batch", "mid_embedding"]


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
    assert p.worker is not None and p.worker.returncode != 0, "the worker exited without crashing"
    join(load)
    return f"crash point {point}"


def test_crash_points_and_random_kills_leave_no_drift(tmp_path: Path, require: Callable[[str], dict[str, Any]],
                                                     full_size: bool) -> None:
    changes, rounds = (50_000, 5) if full_size else (1_500, 1)
    # In between, for a quick deeper run: CDCSTREAM_FAULT_CHANGES=10000 CDCSTREAM_FAULT_ROUNDS=2.
    changes = int(os.environ.get("CDCSTREAM_FAULT_CHANGES", changes))
    rounds = int(os.environ.get("CDCSTREAM_FAULT_ROUNDS", rounds))
    schedule: list[str | None] = [pt for _ in range(rounds) for pt in [*POINTS, None]]
    with fault_pipeline(tmp_path, require, seed=20261126) as f:
        p = f.pg
        rng = random.Random(f.seed)
        # Three archive records per object: crashes land inside and on object boundaries.
        p.env["CDCSTREAM_ARCHIVE_MAX_RECORDS"] = "3"
        p.env["CDCSTREAM_CHUNK_TOKENS"] = "64"
        join(f.load(100, rng))  # rows for the initial snapshot
        p.apply()
        per_round = (changes - 100) // len(schedule)
        done = [_crash_round(f, point, rng, per_round) for point in schedule]
        # The last worker runs clean until every table has caught up.
        p.env.pop("CDCSTREAM_CRASH_POINT", None)
        p.start_worker()
        for table in ("public.articles", "public.orders", f"{f.maria.db}.orders"):
            rc, report, err = f.verify(table, "--full", settle=600 if full_size else 240)
            assert rc == 0, f"{table}: drift after {done}:\n{report}\n{err}\n{p.worker_log()}"
            assert report["source_rows"] == report["mirror_rows"] > 0
        # The archive keeps up to 2 records per partition buffered until an object fills; a
        # clean stop leaves them unacked, and one last worker with one record per object
        # writes exactly those: no event twice, none missing.
        time.sleep(6)  # > the commit interval, so every acked object is committed
        stop_gracefully(p)
        p.env["CDCSTREAM_ARCHIVE_MAX_RECORDS"] = "1"
        p.start_worker()
        for table in ("public.audit_log", f"{f.maria.db}.events"):
            rc, report, err = f.verify(table, "--full", settle=240)
            assert rc == 0, f"{table}: archive drift after {done}:\n{report}\n{err}\n{p.worker_log()}"
            assert report["archive_events"] >= report["source_rows"] > 0
        assert f.changes >= changes - len(schedule)
