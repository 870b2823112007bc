"""Worker start-up checks and scale-out: topics that disagree with their definition stop the
worker; with two workers, killing one moves its partitions and state to the other."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.e2e.harness import ROOT, pipeline
from tests.support import CONNECTION_ERRORS, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

TABLES = [{"name": "public.orders", "profile": "index_only"}]


def test_worker_refuses_to_start_when_a_topic_disagrees(tmp_path: Path,
                                                        require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        async def make_bad_control_topic() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
            await admin.start()
            try:
                await admin.create_topics([NewTopic(f"e2e-{p.tag}-control", 3, 1)])
            finally:
                await admin.close()

        asyncio.run(make_bad_control_topic())
        proc = subprocess.run([sys.executable, "-m", "cdcstream.cli", "worker"], env=p.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert f"e2e-{p.tag}-control: has 3 partitions, expected 1" in proc.stderr
        assert "cdcstream topics plan" in proc.stderr


def test_two_workers_share_partitions_and_survive_a_kill(tmp_path: Path,
                                                         require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql("INSERT INTO orders SELECT g, 'c' || g, g, 'new', now() FROM generate_series(1, 40) g")
        p.apply()
        p.start_worker()
        p.wait("snapshot by worker 1", lambda: len(p.docs("orders")) == 40)
        env2 = {**p.env, "CDCSTREAM_WEB_PORT": str(free_port()), "CDCSTREAM_DATA_DIR": str(tmp_path / "worker2")}
        log2 = (tmp_path / "worker2.log").open("ab")
        w2 = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker"], env=env2, stdout=log2,
                              stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            p.wait("two live workers", lambda: len(p.api("/api/workers")["workers"]) >= 2, timeout=120,
                   retry_on=(*CONNECTION_ERRORS, KeyError))
            p.sql("UPDATE orders SET status = 'both' WHERE id <= 20")
            p.wait("updates with two workers", lambda: sum(d["status"] == "both" for d in p.docs("orders").values())
                   == 20, timeout=120)
            # kill -9 the first worker: its partitions (and their row state) move to the second.
            p.kill_worker(signal.SIGKILL)
            p.worker, p.web_port = w2, int(env2["CDCSTREAM_WEB_PORT"])
            p.sql("UPDATE orders SET status = 'survivor' WHERE id > 20")
            p.sql("DELETE FROM orders WHERE id = 1")
            p.wait("all partitions on the survivor",
                   lambda: sum(d["status"] == "survivor" for d in p.docs("orders").values()) == 20
                   and "1" not in p.docs("orders"), timeout=180)
            # Totals are cluster-wide whichever worker answers: every event of both workers counted.
            stats = next(t["stats"] for t in p.api("/api/tables")["tables"])
            assert stats["op_r"] >= 40 and stats["op_u"] >= 40 and stats["op_d"] >= 1
        finally:
            if w2.poll() is None:
                os.killpg(w2.pid, signal.SIGKILL)
                w2.wait(30)
