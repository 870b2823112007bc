"""A batch blocked by a sink while a rebalance moves its partitions (issue 16 follow-up).

Worker 1 writes Elasticsearch through a fault proxy switched to 503: its batch (an update of
every row, TOASTed body unchanged) retries. Worker 2 joins: the group rebalances, worker 2
takes a partition, writes that batch's events itself and then newer ones (a new body, then
another update whose body comes as the TOAST placeholder and is filled from the row state).
The proxy heals. On the code before the fix, worker 1's batch then went through: it wrote its
row states — for rows of a partition it no longer owned, one update old — to the changelog
after worker 2's. A restarted worker recovered those, and the next update of a row filled its
unchanged body from the stale state: the mirror held the old body and ``verify --full``
failed. Now a revocation stops the batch: its events are dropped (no write, no row state, no
ack) and the new owner re-reads them from the committed offset.
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import pipeline, start_extra_worker, stop_process
from tests.e2e.test_durability import _verify, blocked, dlq_records
from tests.support import CONNECTION_ERRORS
from tests.support.faultproxy import fault_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

TABLES = [{"name": "public.articles", "profile": "index_only"}]
ROWS = 12


def big(seed: str) -> str:
    """About 8 kB that does not compress below PostgreSQL's TOAST threshold: an update of another
    column sends it as the unavailable-value placeholder."""
    return "".join(hashlib.md5(f"{seed}{i}".encode()).hexdigest() for i in range(250))


def test_regression_a_batch_blocked_across_a_rebalance_writes_no_stale_row_state(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    es = require("elasticsearch")
    with pipeline(tmp_path, require("postgres"), es, require("embeddings"), TABLES) as p, \
            fault_proxy(es["url"], "elasticsearch", {"X-Elastic-Product": "Elasticsearch"}) as proxy:
        old, new = big("old"), big("new")
        for i in range(1, ROWS + 1):
            p.sql("INSERT INTO articles VALUES (%s, 't0', %s)", (i, old))
        p.apply()
        w1, p.web_port = start_extra_worker(p, "w1", CDCSTREAM_ELASTICSEARCH_URL=proxy.url.replace("http://", "es://"))
        w2: Any = None
        try:
            p.wait("snapshot by worker 1", lambda: len(p.docs("articles")) == ROWS, timeout=180)
            proxy.set(503)
            p.sql("UPDATE articles SET title = 'u1'")
            p.wait("worker 1 blocked", lambda: blocked(p), timeout=60, retry_on=(*CONNECTION_ERRORS, KeyError))

            started = time.monotonic()
            w2, _ = start_extra_worker(p, "w2")
            p.wait("worker 2 took a partition and wrote its rows",
                   lambda: any(d["title"] == "u1" for d in p.docs("articles").values()), timeout=120)
            rebalanced_s = time.monotonic() - started
            moved = {k for k, d in p.docs("articles").items() if d["title"] == "u1"}
            assert 0 < len(moved) < ROWS, moved  # worker 1 writes nothing while its sink is down
            p.sql("UPDATE articles SET title = 'u2', body = %s", (new,))
            p.sql("UPDATE articles SET title = 'u3'")  # body: the TOAST placeholder, filled from the row state
            p.wait("worker 2's rows updated",
                   lambda: all(d["title"] == "u3" for k, d in p.docs("articles").items() if k in moved), timeout=120)

            proxy.set(None)  # worker 1's sink is back
            p.wait("every row updated", lambda: all(d["title"] == "u3" and d["body"] == new
                                                    for d in p.docs("articles").values()), timeout=120)
            log1 = (tmp_path / "worker-w1.log").read_text(errors="replace")
            # Faust's revocation did not wait for the blocked batch (stream_wait_empty=False),
            # and worker 1 stayed in the group (no max.poll / rebalance timeout kicked it out).
            assert not re.search(r"wait_empty|leave group|LeaveGroup|max poll", log1, re.I), log1[-3000:]
        finally:
            for w in (w1, w2):
                if w is not None:
                    stop_process(w, signal.SIGTERM)

        # A restarted worker recovers the row states from the changelog; an update whose body
        # is the placeholder fills it from them.
        p.start_worker()
        p.sql("UPDATE articles SET title = 'u4'")
        p.wait("after the restart", lambda: all(d["title"] == "u4" for d in p.docs("articles").values()),
               timeout=180)
        stale = sorted(k for k, d in p.docs("articles").items() if d["body"] != new)
        assert not stale, f"rows mirrored with the body of a stale row state: {stale} (moved: {sorted(moved)})"
        code, report, err = _verify(p, "public.articles")
        assert code == 0, (report, err)
        assert dlq_records(p) == 0
        assert "revoked" in log1, log1[-3000:]  # worker 1 dropped its batch
        print(f"rebalance with a blocked member: worker 2 wrote its first rows {rebalanced_s:.1f}s after it started")
