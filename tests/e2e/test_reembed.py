"""An embedding model change without downtime on the real stack (issue 20 part 2): a `full`
table embedded at 384 dimensions, the worker restarted at 256; live changes keep being indexed
(with the serving generation's size) and found; docs/profiles.md's block runs `cdcstream
embeddings plan` and `cdcstream embeddings reembed`; a semantic search loop against the
worker's /api/search never fails; after the swap every chunk has 256 dimensions, the first
generation is gone, the dead-letter queue is empty.

The embeddings server is a private instance of the stack's (its `dimensions` support may be
newer than the shared one's, which is not restarted for a test)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cdcstream.stack.services.embeddings import MODEL
from tests.e2e.harness import Pipeline, pipeline
from tests.e2e.test_durability import dlq_records
from tests.e2e.test_migration import SearchLoop
from tests.support import CONNECTION_ERRORS
from tests.support.embedserver import private_embedserver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
TABLES: list[dict[str, Any]] = [{"name": "public.articles", "profile": "full", "text_columns": ["body"],
                                 "index_settings": {"refresh_interval": "1s"}}]
ADMIN = "e2e-reembed-admin-token"
TOPICS = ["replication slots retain write-ahead log", "a refund for a parcel that arrived late",
          "tuning the garbage collector of the JVM", "snow tyres for a mountain road in winter",
          "sourdough bread needs a long cold proof", "the tide tables for the harbour this week"]


class SemanticLoop(SearchLoop):
    """Semantic searches against the worker's API in a loop; every failure is kept."""

    def __init__(self, p: Pipeline, q: str) -> None:
        super().__init__(p, p.alias("articles"))
        self.url = f"http://127.0.0.1:{p.web_port}/api/search"
        self.params = {"q": q, "mode": "semantic", "table": f"{p.connector}.public.articles", "size": "3"}

    def search(self) -> tuple[requests.Response, bool]:
        r = requests.get(self.url, params=self.params, timeout=30)
        return r, r.status_code == 200 and bool(r.json()["hits"])


def top_hit(p: Pipeline, q: str) -> str | None:
    r = requests.get(f"http://127.0.0.1:{p.web_port}/api/search", timeout=30, params={
        "q": q, "mode": "semantic", "table": f"{p.connector}.public.articles", "size": "1"})
    hits = r.json().get("hits") or []
    return str(hits[0]["id"]) if r.status_code == 200 and hits else None


def found_by(p: Pipeline, q: str, row: str) -> Callable[[], bool]:
    return lambda: top_hit(p, q) == row


def chunk_generations(p: Pipeline) -> list[str]:
    alias = p.alias("articles") + "-chunks"
    return sorted(n for n in p.es("GET", f"/{alias}-*/_settings") or {} if n.rpartition("-")[0] == alias)


def dims_of(p: Pipeline) -> dict[str, int]:
    """Row id -> the dimensions of its chunk's vector (one chunk per row here; counted)."""
    alias = p.alias("articles") + "-chunks"
    p.es("POST", f"/{alias}/_refresh")
    r = p.es("POST", f"/{alias}/_search", {"size": 100, "_source": ["embedding", "dimensions", "parent_id"]})
    out = {}
    for h in r.get("hits", {}).get("hits", []):
        assert len(h["_source"]["embedding"]) == h["_source"]["dimensions"], h["_id"]
        assert h["_source"]["parent_id"] not in out, "one chunk per row"
        out[str(h["_source"]["parent_id"])] = len(h["_source"]["embedding"])
    return out


def run_docs_block(p: Pipeline) -> str:
    """docs/profiles.md's `reembed-start` block, as written, in bash."""
    block = re.search(r"^<!-- test: reembed-start -->\n```sh\n(.*?)^```", (ROOT / "docs" / "profiles.md").read_text(),
                      re.M | re.S)
    assert block is not None
    env = {**p.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-ec", block.group(1)], capture_output=True, text=True, env=env, timeout=120,
                         check=False, cwd=p.tmp)
    assert out.returncode == 0, out.stderr
    return out.stdout


@contextlib.contextmanager
def reembed_pipeline(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    """The harness's pipeline with its worker pointed at a private embeddings server."""
    require("kafka")
    embed = require("embeddings")
    with private_embedserver(threads=2) as url, \
            pipeline(tmp_path, require("postgres"), require("elasticsearch"),
                     {**embed, "base_url": f"{url}/v1", "stats_url": f"{url}/stats"}, TABLES) as p:
        yield p


def embedded_at_384(p: Pipeline) -> tuple[dict[int, str], list[str]]:
    """Rows 1-4 snapshotted and embedded at 384 dimensions; the texts of rows 1-6 and the
    chunks generation."""
    body = {i + 1: f"{t} (note {p.tag}-{i + 1})" for i, t in enumerate(TOPICS)}
    for i in (1, 2, 3, 4):
        p.sql("INSERT INTO articles (id, title, body) VALUES (%s, %s, %s)", (i, f"t{i}", body[i]))
    # The loop searches as fast as answers come: not throttled like an analyst.
    p.env.update({"CDCSTREAM_API_TOKEN": "env:E2E_REEMBED_ADMIN", "E2E_REEMBED_ADMIN": ADMIN,
                  "CDCSTREAM_API_SEMANTIC_PER_MINUTE": "100000"})
    p.apply()
    p.start_worker()
    p.wait("snapshot embedded at 384", lambda: set(dims_of(p).values()) == {384} and len(dims_of(p)) == 4,
           timeout=180)
    first = chunk_generations(p)
    assert len(first) == 1
    return body, first


def restart_at_256(p: Pipeline, **env: str) -> None:
    """The settings change: the worker restarted with 256 dimensions (sent to the server)."""
    p.kill_worker(signal.SIGTERM)
    p.env.update({"CDCSTREAM_EMBED_DIMENSIONS": "256", "CDCSTREAM_EMBED_SEND_DIMENSIONS": "true", **env})
    p.start_worker()
    p.wait("API up", lambda: requests.get(f"http://127.0.0.1:{p.web_port}/api/tables", timeout=5).ok,
           retry_on=CONNECTION_ERRORS)


def test_a_dimensions_change_reembeds_while_semantic_search_answers(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    with reembed_pipeline(tmp_path, require) as p:
        t0 = time.monotonic()
        took: dict[str, float] = {}
        body, first = embedded_at_384(p)
        took["snapshot embedded"] = time.monotonic() - t0
        restart_at_256(p)
        loop = SemanticLoop(p, "write-ahead log of a database")
        loop.start()
        p.sql("INSERT INTO articles (id, title, body) VALUES (5, 't5', %s)", (body[5],))
        p.wait("a live insert indexed at the serving size", lambda: dims_of(p).get("5") == 384)
        p.wait("and found by semantic search", lambda: top_hit(p, TOPICS[4]) == "5")
        assert chunk_generations(p) == first
        took["restarted, live insert found"] = time.monotonic() - t0

        out = run_docs_block(p)
        print(out)
        assert re.search(r"re-embed with \S+/256: 5 chunks, \d+ tokens", out), out
        assert f"-> {first[0][:-6]}000002 with {MODEL}/256" in out, out
        p.sql("INSERT INTO articles (id, title, body) VALUES (6, 't6', %s)", (body[6],))
        p.wait("swapped to the 256-dimension generation",
               lambda: chunk_generations(p) == [first[0][:-6] + "000002"] and dims_of(p)
               == {str(i): 256 for i in range(1, 7)}, timeout=120)
        took["swapped"] = time.monotonic() - t0
        for i in (1, 5, 6):
            p.wait(f"row {i} found after the swap", found_by(p, TOPICS[i - 1], str(i)))
        loop.done.set()
        loop.join(60)
        print(f"semantic searches during the switch: {loop.ok} answered, {len(loop.failures)} failed; "
              f"seconds since start: {', '.join(f'{k} {v:.1f}' for k, v in took.items())}")
        assert not loop.failures, loop.failures[:5]
        assert loop.ok >= 10
        assert dlq_records(p) == 0
        assert "Traceback" not in p.worker_log()


def test_a_reembed_killed_mid_fill_is_resumed_by_the_restarted_worker(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    with reembed_pipeline(tmp_path, require) as p:
        body, first = embedded_at_384(p)
        restart_at_256(p, CDCSTREAM_CRASH_POINT="mid_reembed")  # kill -9 after the first page
        with contextlib.suppress(requests.RequestException):  # the worker may die before it answers
            requests.post(f"http://127.0.0.1:{p.web_port}/api/tables/{p.connector}.public.articles/reembed",
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        p.wait("the worker killed itself mid-re-embed", lambda: p.worker is not None and p.worker.poll() is not None,
               timeout=120, worker_may_exit=True)
        second = first[0][:-6] + "000002"
        assert chunk_generations(p) == [*first, second]  # the new one filled, not swapped
        del p.env["CDCSTREAM_CRASH_POINT"]
        p.start_worker()
        p.sql("INSERT INTO articles (id, title, body) VALUES (5, 't5', %s)", (body[5],))
        p.wait("the re-embed resumed and swapped", lambda: chunk_generations(p) == [second]
               and dims_of(p) == {str(i): 256 for i in range(1, 6)}, timeout=120)
        assert "resuming the re-embed" in p.worker_log()
        p.wait("row 5 found", found_by(p, TOPICS[4], "5"))
        assert dlq_records(p) == 0


def test_a_reembed_is_refused_while_another_worker_runs(tmp_path: Path,
                                                        require: Callable[[str], dict[str, Any]]) -> None:
    """Only the worker that takes the request learns of a re-embed: a second one running then would
    keep writing the old generation while it is copied, and its changes would be missing after the
    swap. So the start is refused, naming the other worker, until it is stopped."""
    from tests.support import free_port

    with reembed_pipeline(tmp_path, require) as p:
        embedded_at_384(p)
        restart_at_256(p)
        env2 = {**p.env, "CDCSTREAM_WEB_PORT": str(free_port()), "CDCSTREAM_DATA_DIR": str(tmp_path / "worker2")}
        with (tmp_path / "worker2.log").open("ab") as log2:
            w2 = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker"], env=env2, stdout=log2,
                                  stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        url = f"http://127.0.0.1:{p.web_port}/api/tables/{p.connector}.public.articles/reembed"
        auth = {"Authorization": f"Bearer {ADMIN}"}
        try:
            p.wait("two live workers", lambda: len([w for w in p.api("/api/workers")["workers"].values()
                                                    if w.get("live")]) >= 2,
                   timeout=120, retry_on=(*CONNECTION_ERRORS, KeyError))
            r = requests.post(url, headers=auth, timeout=30)
            assert r.status_code == 409 and "1 other worker(s) are live" in r.json()["error"], r.text
            # The other one, named (host:port:pid of its worker process, a child of the supervisor).
            assert f":{env2['CDCSTREAM_WEB_PORT']}:" in r.json()["error"], r.text
        finally:
            if w2.poll() is None:
                os.killpg(w2.pid, signal.SIGTERM)
                w2.wait(60)
        # Once its heartbeat is stale, the same request starts the re-embed.
        p.wait("the re-embed accepted with one worker left",
               lambda: requests.post(url, headers=auth, timeout=30).status_code == 200, timeout=60)
        second = chunk_generations(p)[0][:-6] + "000002"
        p.wait("swapped", lambda: chunk_generations(p) == [second] and set(dims_of(p).values()) == {256},
               timeout=120)
        assert dlq_records(p) == 0
