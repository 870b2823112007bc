"""Token budgets on the real stack (issue 20, part 3): a `full` table with a tiny budget and a
15-second period (the `/Ns` form exists for tests like this one; docs/profiles.md).

Rows past the budget are indexed at once (keyword search finds them) while their chunks wait
in the queue (visible on /api/tables, /metrics and /status); semantic search finds them once
later periods paid for them. A kill -9 with the queue non-empty loses nothing. The spend per
period, read back from the budget table's changelog, never exceeds the budget, and the
embeddings server's own token count is covered by it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.support import BOOTSTRAP, WorkerApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

DOC = ROOT / "docs" / "profiles.md"
BUDGET, PERIOD_S = 200, 15
TABLES: list[dict[str, Any]] = [{"name": "public.articles", "profile": "full", "text_columns": ["body"],
                                 "embed_budget": f"{BUDGET}/{PERIOD_S}s"}]
TOPICS = [
    "Sourdough bread needs a lively starter, a long cold proof and a very hot oven.",
    "The violin's four strings are tuned in fifths: G, D, A and E.",
    "Glaciers carve U-shaped valleys as they slowly grind down the mountains.",
    "A bicycle chain should be cleaned and oiled every few hundred kilometres.",
    "Honeybees tell each other where the flowers are with a waggle dance.",
    "Compound interest makes savings grow faster the longer they are left alone.",
    "Chess openings such as the Sicilian Defence fight for the centre from the flank.",
    "Volcanic eruptions can cool the planet by filling the sky with sulphate aerosols.",
    "Tomato plants want full sun, deep watering and support for their heavy stems.",
    "The marathon distance of 42.195 km dates back to the 1908 London Olympics.",
    "Octopuses change colour and texture in a fraction of a second to hide.",
    "Lighthouses once used clockwork to turn their great glass lenses at night.",
]


def body(p: Pipeline, i: int) -> str:
    # Unique to the run: the embedding cache index is shared by every run.
    return f"{TOPICS[i]} Note bud{p.tag} number {i}."


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.env["CDCSTREAM_EMBED_BUDGET_CHECK_S"] = "1"
        # The budget of all tables together: large here, shown beside the table's.
        p.env["CDCSTREAM_EMBED_BUDGET"] = "1M/day"
        # One row before the connector: its topic exists when the worker starts.
        p.sql("INSERT INTO articles (id, title, body) VALUES (0, 'row 0', %s)", (body(p, 0),))
        p.apply()
        yield p


def tid(p: Pipeline) -> str:
    return f"{p.connector}.public.articles"


def budget_view(p: Pipeline) -> dict[str, Any]:
    (t,) = [t for t in p.api("/api/tables")["tables"] if t["id"] == tid(p)]
    return dict(t["embed_budget"])


def chunks(p: Pipeline) -> dict[str, dict[str, Any]]:
    return {c["parent_id"]: c for c in p.docs("articles", chunks=True).values()}


def pending(p: Pipeline) -> set[str]:
    return {rid for rid, c in chunks(p).items() if c.get("pending_embedding") and "embedding" not in c}


def search(p: Pipeline, q: str, mode: str, size: int = 20) -> list[str]:
    r = WorkerApi(p.web_port).get("/api/search", params={"q": q, "mode": mode, "size": size, "table": tid(p)})
    return [h["id"] for h in r.json()["hits"]]


def page(p: Pipeline, path: str) -> str:
    return WorkerApi(p.web_port).get(path).text


def query_tokens(p: Pipeline, q: str) -> int:
    """What the server counts for one search query (sent as the worker's search sends it)."""
    r = requests.post(p.embed["base_url"].rstrip("/") + "/embeddings", timeout=30,
                      json={"model": p.embed["model"], "input": [q], "input_type": "query"})
    return int(r.json()["usage"]["prompt_tokens"])


def spend_per_period(p: Pipeline) -> dict[int, int]:
    """Final spend per period start, summed over workers, from every record of the changelog."""

    async def read() -> list[tuple[bytes, bytes]]:
        tp = TopicPartition(f"e2e-{p.tag}-embed_budget-changelog", 0)
        c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
        await c.start()
        try:
            c.assign([tp])
            await c.seek_to_beginning(tp)
            end = (await c.end_offsets([tp]))[tp]
            out: list[tuple[bytes, bytes]] = []
            while await c.position(tp) < end:
                for msgs in (await c.getmany(tp, timeout_ms=1000)).values():
                    out += [(m.key, m.value) for m in msgs]
            return out
        finally:
            await c.stop()

    last: dict[tuple[bytes, int], int] = {}
    for key, value in asyncio.run(read()):
        rec = json.loads(value)
        start, tokens = rec["periods"][str(PERIOD_S)]
        last[(key, int(start))] = int(tokens)  # cumulative within a period: the last one is final
    out: dict[int, int] = defaultdict(int)
    for (_key, start), tokens in last.items():
        out[start] += tokens
    return dict(out)


def doc_commands(p: Pipeline) -> str:
    """The sh block of docs/profiles.md, "Token budgets", pointed at this test's worker."""
    section = DOC.read_text().split("\n## Token budgets\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    (block,) = [b for b in blocks if "curl" in b]
    assert "W=http://127.0.0.1:6066\n" in block
    return block.replace("W=http://127.0.0.1:6066", f"W=http://127.0.0.1:{p.web_port}")


def metric(p: Pipeline, name: str) -> float:
    text = page(p, "/metrics")
    m = re.search(rf'^{name}{{table="{re.escape(tid(p))}"[^}}]*}} (\S+)$', text, re.M)
    assert m, f"{name} for {tid(p)} not on /metrics"
    return float(m.group(1))


def test_budget_queues_embeddings_keyword_search_works_and_the_queue_survives_kill_9(pipe: Pipeline) -> None:
    p = pipe
    server_before = p.embed_stats()
    p.start_worker()
    p.wait("first row indexed", lambda: "0" in p.docs("articles"))
    assert budget_view(p)["limit"] == BUDGET
    values = ",".join(f"({i}, 'row {i}', %s)" for i in range(1, len(TOPICS)))
    p.sql(f"INSERT INTO articles (id, title, body) VALUES {values}",
          tuple(body(p, i) for i in range(1, len(TOPICS))))

    # Every row is indexed at once; keyword search finds all of them, queued or not.
    p.wait("rows indexed", lambda: len(p.docs("articles")) == len(TOPICS))
    p.wait("keyword search", lambda: len(search(p, f"bud{p.tag}", "keyword")) == len(TOPICS))
    # The queue: chunk documents without vectors, counted on /api/tables, /metrics and /status.
    p.wait("chunks written", lambda: len(chunks(p)) == len(TOPICS))
    queued = pending(p)
    assert queued, "the budget paid for every chunk: nothing was queued"
    p.wait("queue counted", lambda: budget_view(p)["queued_chunks"] > 0)
    view = budget_view(p)
    assert view["spent"] <= BUDGET and view["period_s"] == PERIOD_S and view["queued_tokens"] > 0
    assert metric(p, "cdcstream_embed_queue_chunks") > 0 and metric(p, "cdcstream_embed_budget_tokens") == BUDGET
    status = page(p, "/status")
    assert f'data-budget="{tid(p)}"' in status and 'data-budget="all tables"' in status
    overall = p.api("/api/tables")["embed_budget"]
    assert overall["limit"] == 1_000_000 and overall["period"] == "day" and overall["spent"] >= view["spent"]
    assert re.search(r'^cdcstream_embed_budget_tokens\{table="\*",period="day"\} 1000000$', page(p, "/metrics"), re.M)
    # The commands docs/profiles.md shows, run as shown (against this worker).
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", doc_commands(p)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert f'"id": "{tid(p)}"' in out and '"queued_chunks"' in out
    assert re.search(rf'^cdcstream_embed_queue_chunks{{table="{re.escape(tid(p))}"}} [1-9]', out, re.M), out

    # Semantic search does not find a queued row (its chunk has no vector yet).
    probe = min(queued, key=int)
    probe_query = body(p, int(probe))
    hits = search(p, probe_query, "semantic", size=5)
    if probe in pending(p):  # still queued after the search: it cannot have been a hit
        assert probe not in hits

    # kill -9 with the queue non-empty: the queue is in the index, acked with its rows.
    p.kill_worker()
    left = pending(p)
    assert left, "the queue drained before the kill"
    p.start_worker()
    p.wait("queue drained after the restart", lambda: not pending(p) and all(
        "embedding" in c for c in chunks(p).values()), timeout=180)
    server_after = p.embed_stats()
    p.wait("queue counted empty", lambda: budget_view(p)["queued_chunks"] == 0)

    # Semantic search finds the rows that waited, by their own text.
    for rid in sorted(left, key=int)[:3]:
        def first_hit(rid: str = rid) -> bool:
            return search(p, body(p, int(rid)), "semantic", size=3)[:1] == [rid]

        p.wait(f"semantic hit {rid}", first_hit)

    # Never over budget in any period (spend = the server's usage counts, reserved before sending).
    spend = spend_per_period(p)
    print(f"queued at first: {len(queued)}, at the kill: {len(left)}; spend per period: {spend}")
    assert spend and max(spend.values()) <= BUDGET, spend
    assert len([s for s in spend.values() if s]) >= 2, f"the queue should have taken several periods: {spend}"
    # The server's own count: no more than what the worker charged, plus the one search query
    # (when nobody else used the shared server meanwhile; the request counts tell).
    stats = next(t for t in p.api("/api/tables")["tables"] if t["id"] == tid(p))["stats"]
    server_requests = server_after["requests"] - server_before["requests"]
    server_tokens = server_after["tokens"] - server_before["tokens"] - query_tokens(p, probe_query)
    if server_requests == stats.get("embed_requests", 0) + 1:
        assert 0 < server_tokens <= sum(spend.values()), (server_tokens, spend)
        print(f"server counted {server_tokens} tokens in {server_requests - 1} requests; charged "
              f"{sum(spend.values())}")
    else:
        print(f"shared embeddings server used by others meanwhile ({server_requests} requests, "
              f"{stats.get('embed_requests')} ours): server-side token check skipped")
