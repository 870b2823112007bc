"""The worker's web server on the real stack: status page, metrics, JSON API, search, profiles, DLQ.

One pipeline for the module (its start costs most of the time); tests run in file order and
the later ones change state (a profile switch, a second worker).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import Pipeline, chromium, pipeline, start_extra_worker, stop_process
from tests.support import CONNECTION_ERRORS, WorkerApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TOKEN = "e2e-api-token-0123456789"
#: An API answer without the field waited for ({"error": ...} while a worker starts) means "not yet".
API_NOT_YET = (*CONNECTION_ERRORS, KeyError)
TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]},
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.audit_log", "profile": "archive"},
    # index_only now, with text columns ready for a switch to full.
    {"name": "public.notes", "profile": "index_only", "text_columns": ["body"]},
]


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    tmp = tmp_path_factory.mktemp("api")
    with pipeline(tmp, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as pipe:
        pipe.sql("CREATE TABLE public.notes (id INT PRIMARY KEY, body TEXT NOT NULL)")
        pipe.sql("INSERT INTO notes VALUES (1, %s), (2, %s)",
                 (f"Run {pipe.tag}: a replication slot keeps WAL until its consumer confirms it.",
                  f"Run {pipe.tag}: Kafka Connect restarts failed tasks on request."))
        pipe.sql("INSERT INTO articles VALUES (1, 'Replication slots', %s, 'ops'), (2, 'Cooking pasta', %s, 'food')",
                 (f"Run {pipe.tag}. A slot retains WAL for a logical decoding consumer; drop unused slots.",
                  f"Run {pipe.tag}. Boil water, add salt and cook the noodles for ten minutes."))
        pipe.sql("INSERT INTO orders VALUES (1, 'acme', 19.99, 'new'), (2, 'globex', 1234.50, 'paid'), "
                 "(3, 'initech', 9.50, 'paid')")
        pipe.sql("INSERT INTO audit_log VALUES (1, 'alice', 'login')")
        pipe.env.update({"CDCSTREAM_API_TOKEN": "env:E2E_API_TOKEN", "E2E_API_TOKEN": TOKEN})
        pipe.apply()
        pipe.start_worker()
        pipe.wait("snapshot indexed", lambda: len(pipe.docs("orders")) == 3 and len(pipe.docs("notes")) == 2
                  and len(pipe.docs("articles", chunks=True)) >= 4, timeout=180)
        yield pipe


def api(p: Pipeline, port: int | None = None) -> WorkerApi:
    """The worker's API (``p``'s, or the one on ``port``) with this module's token: sent on
    writes, and on reads with ``auth=True``."""
    return WorkerApi(port or p.web_port, TOKEN)


def tid(p: Pipeline, table: str) -> str:
    return f"{p.connector}.public.{table}"


# --- reads ---------------------------------------------------------------------------------
def test_tables_connectors_metrics_openapi(p: Pipeline) -> None:
    tables = {t["id"]: t for t in api(p).get("/api/tables").json()["tables"]}
    assert set(tables) == {tid(p, t) for t in ("articles", "orders", "audit_log", "notes")}
    orders = tables[tid(p, "orders")]
    # The shape test_pipeline.py relies on, plus the new fields.
    assert orders["name"].endswith(".public.orders") and orders["stats"]["op_r"] == 3
    assert orders["events"]["r"] == 3 and orders["documents"] == 3 and orders["profile"] == "index_only"
    snap = orders["snapshot"]
    assert {k: snap[k] for k in ("rows_read", "source_rows", "progress", "done")} == {
        "rows_read": 3, "source_rows": 3, "progress": 1.0, "done": True}
    assert snap["finished_ms"] > 0 and snap["duration_s"] >= 0  # a finished snapshot: done, with its duration
    arts = tables[tid(p, "articles")]
    assert arts["chunks"] >= 4 and arts["embed_tokens"] + arts["tokens_saved"] > 0

    one = api(p).get(f"/api/tables/{tid(p, 'orders')}").json()
    assert one["id"] == tid(p, "orders") and one["documents"] == 3
    missing = api(p).get("/api/tables/nope.public.nothing")
    assert missing.status_code == 404 and "no table" in missing.json()["error"]

    conns = api(p).get("/api/connectors").json()["connectors"]
    assert [c["name"] for c in conns] == [p.connector]
    c = conns[0]
    assert c["state"] == "RUNNING" and c["tasks"][0]["state"] == "RUNNING"
    assert c["slot"]["active"] is True and isinstance(c["slot"]["lag_bytes"], int)

    # Lag comes from the sampler (every 5 s).
    p.wait("consumer lag sampled", lambda: api(p).get(f"/api/tables/{tid(p, 'orders')}").json()["lag"] == 0,
           timeout=30, retry_on=API_NOT_YET)

    m = api(p).get("/metrics")
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    text = m.text
    assert f'cdcstream_events_total{{op="r",table="{tid(p, "orders")}"}} 3' in text
    assert f'cdcstream_documents{{table="{tid(p, "orders")}"}} 3' in text
    assert re.search(rf'cdcstream_connector_state{{connector="{p.connector}",state="RUNNING"}} 1', text)
    assert re.search(rf'cdcstream_replication_slot_lag_bytes{{connector="{p.connector}",slot="[^"]+"}} \d+', text)
    for line in text.splitlines():  # every sample line parses as name{labels} number
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+', line), line

    doc = api(p).get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/search" in doc["paths"]
    assert TOKEN not in api(p).get("/api/openapi.json").text


def test_auth_and_validation(p: Pipeline) -> None:
    path = f"/api/tables/{tid(p, 'notes')}/profile"
    r = api(p).put(path, json={"profile": "full"}, auth=False)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = api(p).put(path, json={"profile": "full"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and TOKEN not in r.text
    r = api(p).post("/api/dlq/replay", json={"all": True}, auth=False)
    assert r.status_code == 401
    for body, status in (({"profile": "nope"}, 400), ({"profile": "full", "x": 1}, 400),
                         ({"profile": "full", "backfill": "yes"}, 400), ([1], 400)):
        r = api(p).put(path, json=body)
        assert r.status_code == status and r.json()["error"], body
    r = api(p).put(path, data=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = api(p).put(f"/api/tables/{tid(p, 'orders')}/profile", json={"profile": "full"})
    assert r.status_code == 400 and "text_columns" in r.json()["error"]
    r = api(p).put("/api/tables/nope.public.x/profile", json={"profile": "full"})
    assert r.status_code == 404
    # Undeclared methods: JSON 405, no token asked.
    r = api(p).post("/api/tables", auth=False)
    assert r.status_code == 405 and r.json()["error"]
    # Faust's own /table pages (table contents) are off.
    assert api(p).get("/table/rows/").status_code == 404


# --- search --------------------------------------------------------------------------------
def test_search_modes_and_filters(p: Pipeline) -> None:
    def search(**params: Any) -> requests.Response:
        return api(p).get("/api/search", params=params)

    kw = search(q="replication slot", mode="keyword").json()
    ids = [(h["table"], h["id"]) for h in kw["hits"]]
    assert (tid(p, "articles"), "1") in ids and (tid(p, "notes"), "1") in ids
    hit = next(h for h in kw["hits"] if h["table"] == tid(p, "notes"))
    assert "<mark>" in hit["snippet"] and hit["fields"]["id"] == 1 and "_cdc" not in hit["fields"]

    sem = search(q="how do I cook noodles", mode="semantic", size=2).json()
    assert sem["hits"][0]["table"] == tid(p, "articles") and sem["hits"][0]["id"] == "2"
    assert sem["hits"][0]["fields"]["title"] == "Cooking pasta" and sem["hits"][0]["chunk"]["column"] in (
        "title", "body")

    hy = search(q="replication slot", mode="hybrid", size=5).json()
    top = hy["hits"][0]
    # In both lists: the highest fused score (convex combination of min-max scaled scores, in [0, 1]).
    assert (top["table"], top["id"]) == (tid(p, "articles"), "1") and set(top["ranks"]) == {"keyword", "semantic"}
    assert 0 < top["score"] <= 1 and top["score"] == max(h["score"] for h in hy["hits"])

    paid = search(q="*", table=tid(p, "orders"), **{"filter.status": "paid"}).json()
    assert sorted(h["id"] for h in paid["hits"]) == ["2", "3"]
    cheap = search(q="*", table=tid(p, "orders"), **{"range.amount": "9..20"}).json()
    assert sorted(h["id"] for h in cheap["hits"]) == ["1", "3"]  # numeric, not text order

    for params, needle in (({"q": "x", "mode": "semantic", "table": tid(p, "orders")}, "needs profile full"),
                           ({"q": "x", "table": tid(p, "audit_log")}, "archive"),
                           ({"q": "x", "table": "nope"}, "unknown table"),
                           ({"q": "x", "size": "0"}, "size"),
                           # Checked against the mapping before Elasticsearch sees it: the filter is named.
                           ({"q": "x", "range.amount": "abc..1", "table": tid(p, "orders")},
                            "range.amount: 'abc' is not a number"),
                           ({"mode": "keyword"}, "required")):
        r = search(**params)
        assert r.status_code == 400 and needle in r.json()["error"], (params, r.text)


def test_cli_talks_to_the_api(p: Pipeline) -> None:
    env = {**p.env, "CDCSTREAM_WEB_PORT": str(p.web_port)}
    out = subprocess.run([sys.executable, "-m", "cdcstream.cli", "profiles", "show"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert tid(p, "orders") in out and "index_only" in out
    out = subprocess.run([sys.executable, "-m", "cdcstream.cli", "search", "noodles", "--mode", "hybrid"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{tid(p, 'articles')}  id=2" in out


# --- DLQ -----------------------------------------------------------------------------------
def test_dlq_list_and_replay(p: Pipeline) -> None:
    from aiokafka import AIOKafkaProducer

    async def poison() -> None:
        prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
        await prod.start()
        try:
            await prod.send_and_wait(p.topic("orders"), key=b'{"id": 99}', value=b"{this is not json", partition=0)
        finally:
            await prod.stop()

    asyncio.run(poison())
    p.wait("poison record dead-lettered", lambda: api(p).get("/api/dlq").json()["end_offset"] >= 1,
           retry_on=API_NOT_YET)
    dlq = api(p).get("/api/dlq").json()
    rec = dlq["records"][-1]
    assert rec["topic"] == p.topic("orders") and rec["partition"] == 0 and rec["reason"].startswith("decode")
    assert rec["value"] == "{this is not json", dlq
    r = api(p).post("/api/dlq/replay", json={"offsets": [rec["dlq_offset"], 10_000]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["dlq_offset"] for x in body["replayed"]] == [rec["dlq_offset"]]
    assert body["replayed"][0]["topic"] == p.topic("orders") and body["replayed"][0]["partition"] == 0
    assert body["skipped"] == [{"dlq_offset": 10_000, "reason": "no such DLQ record"}]
    # Still poison: re-processed by the worker, dead-lettered again.
    p.wait("replayed record dead-lettered again", lambda: api(p).get("/api/dlq").json()["end_offset"] >= 2,
           retry_on=API_NOT_YET)
    for bad, status in (({}, 400), ({"offsets": []}, 400), ({"all": True, "offsets": [1]}, 400)):
        assert api(p).post("/api/dlq/replay", json=bad).status_code == status
    assert api(p).get("/api/dlq", params={"limit": "0"}).status_code == 400


# --- profile switch ------------------------------------------------------------------------
def test_profile_switch_with_backfill(p: Pipeline) -> None:
    path = f"/api/tables/{tid(p, 'notes')}/profile"
    assert not p.docs("notes", chunks=True)
    r = api(p).put(path, json={"profile": "full", "backfill": True}, timeout=120)
    assert r.status_code == 409, r.text
    est = r.json()["estimate"]
    assert est["rows"] == 2 and est["source"] == "database" and est["tokens"] > 10
    assert est["cost_usd"] == pytest.approx(est["tokens"] / 1e6 * est["price_per_million_tokens"], abs=1e-8)
    assert api(p).get(f"/api/tables/{tid(p, 'notes')}").json()["profile"] == "index_only"  # nothing applied yet

    r = api(p).put(path, json={"profile": "full", "backfill": True, "confirm": True}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["from"] == "index_only" and body["profile"] == "full" and body["backfill"]["signal"]
    # Applied by every live worker before the call returned.
    assert api(p).get(f"/api/tables/{tid(p, 'notes')}").json()["profile"] == "full"
    p.wait("chunks of the backfilled rows", lambda: {c["parent_id"] for c in p.docs("notes", chunks=True).values()}
           == {"1", "2"}, timeout=120)
    # New rows take the new branch too.
    p.sql("INSERT INTO notes VALUES (3, 'A new note about rebalancing consumers.')")
    p.wait("chunk of a new row", lambda: "3" in {c["parent_id"] for c in p.docs("notes", chunks=True).values()})
    sem = api(p).get("/api/search", params={"q": "consumer group rebalance", "mode": "semantic",
                                            "table": tid(p, "notes")}).json()
    assert sem["hits"] and sem["hits"][0]["table"] == tid(p, "notes")


# --- status page in a browser --------------------------------------------------------------
def test_status_page_in_headless_chromium(p: Pipeline, tmp_path: Path) -> None:
    time.sleep(6)  # at least two samples for the chart
    page = api(p).url("/status")
    shot = tmp_path / "status.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page)
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    for t in ("articles", "orders", "audit_log", "notes"):
        assert f'data-table="{tid(p, t)}"' in dom
    assert f'data-connector="{p.connector}"' in dom and "RUNNING" in dom
    assert "<svg" in dom and "<polyline" in dom
    assert "http://" not in dom.replace(page, "").replace("http://www.w3.org/2000/svg", "")  # no external asset
    print(f"screenshot: {shot}")


# --- two workers -----------------------------------------------------------------------------
def test_two_workers_serve_the_same_totals(p: Pipeline) -> None:
    # The second worker also has protect_reads on: its reads need the token.
    proc, port2 = start_extra_worker(p, "second", CDCSTREAM_PROTECT_READS="true")
    try:
        def live() -> int:
            return sum(1 for w in api(p).get("/api/workers").json()["workers"].values() if w["live"])

        p.wait("second worker live", lambda: live() == 2 and api(p, port2).get("/api/tables", auth=True).status_code
               == 200, timeout=180, retry_on=API_NOT_YET)
        assert api(p, port2).get("/api/tables").status_code == 401
        assert api(p, port2).get("/status").status_code == 401
        # Closed by default: with reads protected, only /healthz answers without a token.
        assert api(p, port2).get("/api/openapi.json").status_code == 401
        assert api(p, port2).get("/api/openapi.json", auth=True).status_code == 200
        assert api(p, port2).get("/healthz").text == "ok\n"
        p.sql("INSERT INTO orders VALUES (10, 'umbrella', 5.00, 'new'), (11, 'hooli', 6.00, 'new')")
        p.sql("UPDATE orders SET status = 'paid' WHERE id = 10")

        def same() -> bool:
            a = {t["id"]: t["stats"] for t in api(p).get("/api/tables").json()["tables"]}
            b = {t["id"]: t["stats"] for t in api(p, port2).get("/api/tables", auth=True).json()["tables"]}
            strip = ("updated_ms",)
            na = {k: {n: v for n, v in s.items() if n not in strip} for k, s in a.items()}
            nb = {k: {n: v for n, v in s.items() if n not in strip} for k, s in b.items()}
            return na == nb and na[tid(p, "orders")].get("op_u", 0) >= 1 and na[tid(p, "orders")]["op_c"] >= 2

        p.wait("both workers report the same cluster-wide totals", same, timeout=120, retry_on=API_NOT_YET)
        m1 = [x for x in api(p).get("/metrics").text.splitlines() if x.startswith("cdcstream_events_total")]
        m2 = [x for x in api(p, port2).get("/metrics", auth=True).text.splitlines()
              if x.startswith("cdcstream_events_total")]
        assert m1 == m2
    finally:
        stop_process(proc)


# --- fuzzing -----------------------------------------------------------------------------------
def test_openapi_fuzz_no_server_errors(p: Pipeline, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "schemathesis"
    assert exe.exists(), "schemathesis is a dev dependency: pip install -e '.[dev]'"
    # The check is not_a_server_error, except for a 502 naming the shared embeddings server (st_hooks.py).
    env = {**p.env, "SCHEMATHESIS_HOOKS": "tests.e2e.st_hooks", "PYTHONPATH": str(Path(__file__).parents[2])}
    r = subprocess.run([str(exe), "run", api(p).url("/api/openapi.json"), "--url", api(p).url(""),
                        "--checks", "no_server_error_of_ours", "--max-examples", "50", "--seed", "8",
                        "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "90",
                        "--no-color"],
                       capture_output=True, text=True, timeout=780, cwd=tmp_path, env=env, check=False)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    assert re.search(r"\b\d+ passed\b|Test cases:", tail), tail
    print(tail[-1500:])
