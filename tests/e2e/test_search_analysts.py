"""Search for analysts on the real stack (issue 20 part 4): paging with ``search_after`` and
totals, the filter language compared with the source rows, ``explain``, highlights without
stop words, the row document a hit links to, and the search page in headless Chromium."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import Pipeline, chromium, pipeline
from tests.support import CONNECTION_ERRORS, WorkerApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]},
    {"name": "public.orders", "profile": "index_only"},
]
STATUSES = ("new", "paid", "shipped")
#: Rows on the edges of the filters below: a day's last and next day's first second, exact amounts.
EDGES = [(41, "10.00", "2024-02-01 23:59:59"), (42, "9.99", "2024-02-02 00:00:00"),
         (43, "100.00", "2024-01-01 00:00:00"), (44, "100.01", "2023-12-31 23:59:59.999"),
         (45, "55.50", "2024-01-15 12:30:00")]
WIDGETS = 12
STOP_WORD_TEXT = "How to keep a shell session running after you disconnect: use tmux or screen."


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    tmp = tmp_path_factory.mktemp("search-analysts")
    with pipeline(tmp, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as pipe:
        base = datetime.datetime(2023, 12, 10, 8, 0)
        rows = [(i, f"customer{i}", Decimal(i * 737 % 15000) / 100, STATUSES[i % 3],
                 base + datetime.timedelta(hours=37 * i)) for i in range(1, 41)]
        rows += [(i, f"edge{i}", Decimal(a), STATUSES[i % 3], datetime.datetime.fromisoformat(t)) for i, a, t in EDGES]
        for r in rows:
            pipe.sql("INSERT INTO orders VALUES (%s, %s, %s, %s, %s)", r)
        for i in range(1, WIDGETS + 1):
            pipe.sql("INSERT INTO articles VALUES (%s, %s, %s, 'shop')",
                     (i, f"Widget {i}", f"Run {pipe.tag}: widget number {i} fits gadget {i % 4}."))
        pipe.sql("INSERT INTO articles VALUES (100, 'Detach a terminal', %s, 'ops')", (STOP_WORD_TEXT,))
        pipe.apply()
        pipe.start_worker()
        pipe.wait("snapshot indexed", lambda: len(pipe.docs("orders")) == 45 and len(pipe.docs("articles")) == 13
                  and len({c["parent_id"] for c in pipe.docs("articles", chunks=True).values()}) == 13, timeout=240)
        pipe.wait("API up", lambda: api(pipe).get("/api/tables").status_code == 200, retry_on=CONNECTION_ERRORS)
        yield pipe


def api(p: Pipeline) -> WorkerApi:
    return WorkerApi(p.web_port)


def tid(p: Pipeline, table: str) -> str:
    return f"{p.connector}.public.{table}"


def search(p: Pipeline, params: list[tuple[str, str]]) -> dict[str, Any]:
    r = api(p).get("/api/search", params=params)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def all_pages(p: Pipeline, params: list[tuple[str, str]], between: Callable[[int], None] | None = None,
              ) -> tuple[list[str], list[dict[str, Any]]]:
    """Every hit's id, page after page, and every page's answer."""
    ids: list[str] = []
    answers: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = search(p, params + ([("search_after", cursor)] if cursor else []))
        answers.append(page)
        ids += [h["id"] for h in page["hits"]]
        cursor = page["next"]
        if cursor is None:
            return ids, answers
        if between:
            between(len(answers))
        assert len(answers) < 50, "paging does not end"


def source_ids(p: Pipeline, where: str, params: tuple[Any, ...] = ()) -> set[str]:
    return {str(r[0]) for r in p.sql(f"SELECT id FROM orders WHERE {where}", params)}


# --- paging ----------------------------------------------------------------------------------
def test_keyword_pages_hold_each_row_once_while_rows_change(p: Pipeline) -> None:
    widgets = {str(i) for i in range(1, WIDGETS + 1)}

    def write_meanwhile(pages_seen: int) -> None:
        if pages_seen != 1:
            return
        # Between pages: new matching rows, an update and a delete. The point in time the
        # first page opened keeps the answer to the rows as they were.
        p.sql("INSERT INTO articles VALUES (201, 'Widget 201', 'widget late', 'shop'), "
              "(202, 'Widget 202', 'widget later', 'shop')")
        p.sql("UPDATE articles SET body = 'widget widget widget widget renamed' WHERE id = 12")
        p.sql("DELETE FROM articles WHERE id = 3")
        p.wait("changes mirrored", lambda: {"201", "202"} <= set(p.docs("articles"))
               and "3" not in p.docs("articles"))

    params = [("q", "widget"), ("table", tid(p, "articles")), ("size", "5")]
    ids, answers = all_pages(p, params, write_meanwhile)
    assert len(answers) == 3 and [len(a["hits"]) for a in answers] == [5, 5, 2]
    assert sorted(ids) == sorted(widgets) and len(ids) == len(set(ids))  # each once, none new, none lost
    assert all(a["total"] == {"value": WIDGETS, "relation": "eq"} for a in answers)
    ranks = [h["ranks"]["keyword"] for a in answers for h in a["hits"]]
    assert ranks == list(range(1, WIDGETS + 1))
    # A new search sees the changes.
    fresh = search(p, [("q", "widget"), ("table", tid(p, "articles")), ("size", "100")])
    assert fresh["total"] == {"value": WIDGETS + 2 - 1, "relation": "eq"} and fresh["next"] is None

    # The whole orders table by pages of 7 (q=* matches every row; equal scores keep one order).
    ids, answers = all_pages(p, [("q", "*"), ("table", tid(p, "orders")), ("size", "7")])
    assert sorted(ids, key=int) == [str(i) for i in range(1, 46)]
    assert answers[0]["total"] == {"value": 45, "relation": "eq"} and len(answers) == 7

    # A cursor belongs to its query.
    first = search(p, [("q", "*"), ("table", tid(p, "orders")), ("size", "7")])
    r = api(p).get("/api/search", params=[("q", "x"), ("table", tid(p, "orders")), ("search_after", first["next"])])
    assert r.status_code == 400 and "another query" in r.json()["error"]
    r = api(p).get("/api/search", params=[("q", "x"), ("search_after", "garbage")])
    assert r.status_code == 400 and "not a cursor" in r.json()["error"]


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
def test_semantic_and_hybrid_page_through_their_fused_top_k(p: Pipeline, mode: str) -> None:
    params = [("q", "which widget fits a gadget"), ("mode", mode), ("table", tid(p, "articles")), ("size", "4")]
    ids, answers = all_pages(p, params)
    total = answers[0]["total"]
    assert len(ids) == len(set(ids)) == total["value"] and total["value"] >= 4
    assert all(a["depth"] == 12 and a["total"] == total for a in answers)  # 3 x the first page's size
    # The pages cut one list: scores never rise from one page to the next.
    scores = [h["score"] for a in answers for h in a["hits"]]
    assert scores == sorted(scores, reverse=True)
    if mode == "semantic":
        # A deeper list keeps semantic's order: one page of 12 holds the same rows in the same order.
        big = search(p, [*params[:3], ("size", "12")])
        assert [h["id"] for h in big["hits"]] == ids[:12]


# --- filters ---------------------------------------------------------------------------------
FILTER_CASES: list[tuple[list[str], str]] = [
    (["status:paid"], "status = 'paid'"),
    (["amount:>=10"], "amount >= 10"),
    (["amount:<10"], "amount < 10"),
    (["amount:>100"], "amount > 100"),
    (["amount:10..100"], "amount BETWEEN 10 AND 100"),
    (["ordered_at:2024-01-01..2024-02-01"], "ordered_at >= '2024-01-01' AND ordered_at < '2024-02-02'"),
    (["ordered_at:>2024-02-01"], "ordered_at >= '2024-02-02'"),
    (["ordered_at:<2024-01-01"], "ordered_at < '2024-01-01'"),
    (["ordered_at:2024-01-15"], "ordered_at::date = '2024-01-15'"),
    (["status:paid", "amount:>=10", "ordered_at:..2024-01-31"],
     "status = 'paid' AND amount >= 10 AND ordered_at < '2024-02-01'"),
]


@pytest.mark.parametrize("filters, where", FILTER_CASES, ids=[" ".join(f) for f, _ in FILTER_CASES])
def test_filters_return_exactly_the_matching_source_rows(p: Pipeline, filters: list[str], where: str) -> None:
    expected = source_ids(p, where)
    assert expected, f"the data should hold rows for {where}"
    answer = search(p, [("q", "*"), ("table", tid(p, "orders")), ("size", "100"), *(("filter", f) for f in filters)])
    assert {h["id"] for h in answer["hits"]} == expected
    assert answer["total"] == {"value": len(expected), "relation": "eq"}


@pytest.mark.parametrize("bad, needle", [
    ("nope:1", "no column 'nope'"),
    ("amount:>=ten", "not a number"),
    ("ordered_at:2024-13-01..", "not a date"),
    ("status", "a filter is column:value"),
])
def test_bad_filters_answer_400_naming_the_filter(p: Pipeline, bad: str, needle: str) -> None:
    r = api(p).get("/api/search", params=[("q", "*"), ("table", tid(p, "orders")), ("filter", bad)])
    assert r.status_code == 400 and needle in r.json()["error"] and f"filter={bad}" in r.json()["error"], r.text


# --- explain and highlights ------------------------------------------------------------------
def test_explain_shows_how_the_scores_combined(p: Pipeline) -> None:
    answer = search(p, [("q", "keep a shell session running"), ("mode", "hybrid"), ("explain", "true"),
                        ("table", tid(p, "articles"))])
    assert answer["hits"] and answer["hits"][0]["id"] == "100"
    both = 0
    for h in answer["hits"]:
        e = h["explain"]
        w, kw, sem = e["weight"], e["keyword"], e["semantic"]
        assert w == 0.9 and e["final"] == pytest.approx(h["score"])
        assert e["final"] == pytest.approx(w * (sem["normalised"] if sem else 0.0)
                                           + (1 - w) * (kw["normalised"] if kw else 0.0))
        for part, name in ((kw, "keyword"), (sem, "semantic")):
            if part:
                assert 0.0 <= part["normalised"] <= 1.0 and part["rank"] == h["ranks"][name] and part["score"] > 0
        both += bool(kw and sem)
    assert both >= 1
    kw_only = search(p, [("q", "shell"), ("explain", "true"), ("table", tid(p, "articles"))])["hits"][0]
    assert kw_only["explain"] == {"keyword": {"score": kw_only["score"], "rank": 1}, "final": kw_only["score"]}


def test_stop_words_are_not_highlighted(p: Pipeline) -> None:
    """The bug (issue 20): the row indices' standard analyzer keeps stop words, so the snippet of
    "how to keep a shell..." marked "to" and "a" like the words that matter."""
    answer = search(p, [("q", "how to keep a shell session running"), ("table", tid(p, "articles"))])
    hit = next(h for h in answer["hits"] if h["id"] == "100")
    snippet = hit["snippet"]
    plain = re.sub(r"</?mark>", "", snippet)
    # The words are in the snippet, matched by the query, but not marked.
    assert " a " in plain and " to " in plain.lower()
    marked = {m.lower() for m in re.findall(r"<mark>([^<]+)</mark>", snippet)}
    assert {"keep", "shell", "session", "running"} <= marked and not marked & {"a", "to"}, snippet


# --- the row a hit links to --------------------------------------------------------------------
def test_row_document_with_its_source_position(p: Pipeline) -> None:
    hit = search(p, [("q", "*"), ("table", tid(p, "orders")), ("filter", "customer:edge41")])["hits"][0]
    r = api(p).get(f"/api/tables/{tid(p, 'orders')}/rows/41")
    assert r.status_code == 200, r.text
    row = r.json()
    (src,) = p.sql("SELECT id, customer, amount, status FROM orders WHERE id = 41")
    assert (row["fields"]["id"], row["fields"]["customer"], Decimal(row["fields"]["amount"]),
            row["fields"]["status"]) == src
    assert row["source"]["position"] and row["source"] == hit["source"] and row["source"]["op"] == "r"
    assert api(p).get(f"/api/tables/{tid(p, 'orders')}/rows/9999").status_code == 404
    assert api(p).get("/api/tables/nope.public.x/rows/1").status_code == 404


# --- the search page in a browser -------------------------------------------------------------
MARK_RGB = (0xFF, 0xD5, 0x4F)  # pages.py: mark{background:#ffd54f}


def test_search_page_in_headless_chromium(p: Pipeline, tmp_path: Path) -> None:
    from urllib.parse import urlencode

    from PIL import Image

    page = api(p).url("/search?" + urlencode({"q": "widget gadget", "table": tid(p, "articles"),
                                              "filters": "id:<100"}))
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    hits = re.findall(r'<li class="hit" data-table="([^"]+)" data-id="([^"]+)">(.*?)</li>', dom, re.S)
    assert len(hits) == 10 and all(t == tid(p, "articles") and int(i) < 100 for t, i, _ in hits), dom[-3000:]
    assert all("<mark>" in body for _, _, body in hits)
    assert 'id="next"' in dom and "source position" in dom
    href = re.search(r'<a class="row" href="([^"]+)"', dom)
    assert href is not None
    row = requests.get(api(p).url(href.group(1)), timeout=30)
    assert row.status_code == 200 and row.json()["id"] == hits[0][1]

    shot = tmp_path / "search.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page)
    assert shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    raw = img.tobytes()
    pixels = [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
    marks = sum(1 for px in pixels if all(abs(a - b) <= 8 for a, b in zip(px, MARK_RGB, strict=True)))
    assert marks > 500, f"{marks} pixels of the highlight colour: the hits' <mark>s were not drawn"
    assert len(set(pixels)) > 50  # text, not a blank page
    print(f"screenshot: {shot} ({marks} highlight pixels)")


# --- the docs' commands ------------------------------------------------------------------------
def test_docs_searching_commands(p: Pipeline, tmp_path: Path) -> None:
    """docs/api.md, "Searching for analysts": its sh block run with bash against this worker."""
    import json
    import subprocess

    from tests.e2e.harness import ROOT

    text = (ROOT / "docs" / "api.md").read_text()
    section = re.search(r"^## Searching for analysts\n(.*?)(?=^## |^### )", text, re.M | re.S)
    assert section, "docs/api.md has no section 'Searching for analysts'"
    (block,) = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    assert "W=http://127.0.0.1:6066\n" in block
    script = block.replace("W=http://127.0.0.1:6066", f"W=http://127.0.0.1:{p.web_port}").replace(
        "demo-pg.", f"{p.connector}.")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    dec = json.JSONDecoder()
    answers, at = [], 0
    while at < len(r.stdout.strip()):
        obj, end = dec.raw_decode(r.stdout, at)
        answers.append(obj)
        at = end
        while at < len(r.stdout) and r.stdout[at].isspace():
            at += 1
    assert len(answers) == 4, r.stdout[:2000]
    january, second_page, explained, row = answers
    expected = source_ids(p, "status = 'paid' AND amount >= 10 AND ordered_at >= '2024-01-01' "
                             "AND ordered_at < '2024-02-01'")
    assert expected and january["total"] == {"value": len(expected), "relation": "eq"}
    assert {h["id"] for h in january["hits"]} <= expected and len(january["hits"]) == min(5, len(expected))
    first_page = search(p, [("q", "*"), ("table", tid(p, "orders")), ("size", "5")])
    assert len(second_page["hits"]) == 5 and not {h["id"] for h in second_page["hits"]} & {
        h["id"] for h in first_page["hits"]}
    assert explained["hits"] and all("final" in h["explain"] and "weight" in h["explain"] for h in explained["hits"])
    assert row["id"] == "1" and row["fields"]["id"] == 1 and row["source"]["position"]


def test_cli_search_with_the_filter_language(p: Pipeline) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cdcstream.cli", "search", "*", "--table", tid(p, "orders"),
                          "--where", "status:paid", "--where", "amount:>=10", "--size", "100"],
                         env={**p.env, "CDCSTREAM_WEB_PORT": str(p.web_port)}, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    expected = source_ids(p, "status = 'paid' AND amount >= 10")
    assert set(re.findall(r"  id=(\d+)", out)) == expected and f"{len(expected)} hits" in out, out
