"""Search for analysts (issue 20 part 4): the filter language, cursors, explain parts, the
stop-word-free highlight query and the search page's HTML."""

from __future__ import annotations

from typing import Any

import pytest

from cdcstream.web.pages import render_login, render_search, safe_snippet
from cdcstream.web.search import (
    RangeFilter,
    SearchInputError,
    convex,
    convex_explained,
    decode_cursor,
    encode_cursor,
    filter_clauses,
    highlight_text,
    keyword_body,
    parse_request,
)
from cdcstream.web.views import form_params, login_target, search_form

MAPPING: dict[str, Any] = {
    "status": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
    "amount": {"type": "keyword", "fields": {"num": {"type": "double"}}},
    "qty": {"type": "long"},
    "created": {"type": "date"},
    "done": {"type": "boolean"},
    "doc": {"type": "object", "enabled": False},
}


def clauses(*filters: str) -> list[dict[str, Any]]:
    return filter_clauses(parse_request([("q", "*"), *(("filter", f) for f in filters)]), [MAPPING])


def test_filter_language_equality_ranges_and_days() -> None:
    assert clauses("status:paid") == [{"match": {"status": {"query": "paid", "lenient": True, "operator": "and"}}}]
    assert clauses("amount:>=10") == [{"range": {"amount.num": {"gte": "10"}}}]
    assert clauses("qty:<3") == [{"range": {"qty": {"lt": "3"}}}]
    assert clauses("qty:>3") == [{"range": {"qty": {"gt": "3"}}}]
    assert clauses("amount:9.5") == [{"range": {"amount.num": {"gte": "9.5", "lte": "9.5"}}}]
    # Date-only bounds are whole days, both ends inclusive; "after a day" skips all of it.
    assert clauses("created:2024-01-01..2024-02-01") == [
        {"range": {"created": {"gte": "2024-01-01", "lte": "2024-02-01||/d"}}}]
    assert clauses("created:>2024-02-01") == [{"range": {"created": {"gt": "2024-02-01||/d"}}}]
    assert clauses("created:2024-02-01") == [{"range": {"created": {"gte": "2024-02-01", "lte": "2024-02-01||/d"}}}]
    assert clauses("created:..2024-01-31T12:00:00Z") == [{"range": {"created": {"lte": "2024-01-31T12:00:00Z"}}}]
    # A range over a text column compares the whole text, not its words.
    assert clauses("status:a..m") == [{"range": {"status.keyword": {"gte": "a", "lte": "m"}}}]
    req = parse_request([("q", "*"), ("filter", "amount:10..20"), ("filter", "qty:>=1")])
    assert req.ranges == [RangeFilter("amount", "10", "20"), RangeFilter("qty", "1", None)]


@pytest.mark.parametrize("expr, message", [
    ("nope:1", "no column 'nope'"),
    ("amount:>=ten", "'ten' is not a number"),
    ("qty:1..x", "'x' is not a number"),
    ("created:2024-13-01..", "not a date"),
    ("created:yesterday", "not a date"),
    ("done:maybe", "not true or false"),
    ("done:a..b", "boolean"),
    ("doc:x", "not filterable"),
])
def test_bad_filters_name_the_filter(expr: str, message: str) -> None:
    with pytest.raises(SearchInputError, match=message) as e:
        clauses(expr)
    assert f"filter={expr}" in str(e.value)


@pytest.mark.parametrize("expr, message", [
    ("status", "a filter is column:value"),
    (":x", "a filter is column:value"),
    ("a b:x", "not a column name"),
    ("qty:>=", "needs a value"),
    ("qty:..", "a range is lo..hi"),
])
def test_filter_syntax_errors(expr: str, message: str) -> None:
    with pytest.raises(SearchInputError, match=message) as e:
        parse_request([("q", "x"), ("filter", expr)])
    assert f"filter={expr}" in str(e.value)


def test_semantic_filters_skip_text_columns_with_a_reason() -> None:
    req = parse_request([("q", "x"), ("filter", "status:paid")])
    chunk_row = {k: v for k, v in MAPPING.items() if k != "status"}
    with pytest.raises(SearchInputError, match="text column"):
        filter_clauses(req, [chunk_row], "row.", [MAPPING])
    req = parse_request([("q", "x"), ("filter", "qty:>=2")])
    assert filter_clauses(req, [chunk_row], "row.", [MAPPING]) == [{"range": {"row.qty": {"gte": "2"}}}]


def test_cursor_round_trip_and_binding_to_the_query() -> None:
    req = parse_request([("q", "shell"), ("mode", "hybrid"), ("filter", "qty:>=1")])
    cur = encode_cursor({"v": 1, "fp": req.fingerprint(), "o": 10, "d": 30})
    again = parse_request([("q", "shell"), ("mode", "hybrid"), ("filter", "qty:>=1"), ("size", "5"),
                           ("search_after", cur)])
    assert again.cursor == {"v": 1, "fp": req.fingerprint(), "o": 10, "d": 30}
    with pytest.raises(SearchInputError, match="another query"):
        parse_request([("q", "shells"), ("mode", "hybrid"), ("filter", "qty:>=1"), ("search_after", cur)])
    for junk in ("x", "!!", encode_cursor({"v": 2}), encode_cursor({"v": 1, "fp": req.fingerprint(), "o": -1})):
        with pytest.raises(SearchInputError, match="not a cursor"):
            decode_cursor(junk, req)
    kw = parse_request([("q", "shell")])
    with pytest.raises(SearchInputError, match="not a cursor"):  # a keyword cursor carries its point in time
        decode_cursor(encode_cursor({"v": 1, "fp": kw.fingerprint(), "o": 1}), kw)


def test_explained_parts_add_up_to_the_fused_score() -> None:
    kw = [("a", 12.0), ("b", 4.0), ("c", 2.0)]
    sem = [("c", 0.93), ("d", 0.90), ("a", 0.87)]
    out = convex_explained(kw, sem, 0.9)
    assert [(k, s) for k, s, _ in out] == convex(kw, sem, 0.9)
    for _, score, parts in out:
        k, s = parts["keyword"], parts["semantic"]
        expected = 0.9 * (float(s["normalised"]) if s else 0.0) + 0.1 * (float(k["normalised"]) if k else 0.0)
        assert score == pytest.approx(expected)
    d = next(p for k, _, p in out if k == "d")
    assert d["keyword"] is None and d["semantic"] == {"score": 0.90, "rank": 2, "normalised": pytest.approx(0.5)}


def test_highlight_query_drops_stop_words() -> None:
    assert highlight_text("keep a shell session running after I disconnect") == (
        "keep shell session running after I disconnect")
    assert highlight_text("how to restart the server") == "how restart server"
    assert highlight_text('"a shell" to') == '"a shell"'  # a phrase stays whole
    assert highlight_text("replication slot") is None  # nothing to drop
    assert highlight_text("to be or not") is None  # only stop words: highlight the query as asked
    body = keyword_body(parse_request([("q", "keep a shell")]), [], 10)
    assert body["highlight"]["highlight_query"]["simple_query_string"]["query"] == "keep shell"
    assert body["query"]["bool"]["must"][0]["simple_query_string"]["query"] == "keep a shell"  # matching unchanged


def test_snippets_keep_only_mark_as_markup() -> None:
    assert safe_snippet("fish &amp; <mark>chips</mark>") == "fish &amp; <mark>chips</mark>"
    assert safe_snippet("<script>x</script> <mark>y</mark>") == "&lt;script&gt;x&lt;/script&gt; <mark>y</mark>"
    assert safe_snippet(None) == ""


def test_search_page_renders_hits_links_and_next() -> None:
    result = {"mode": "keyword", "total": {"value": 12, "relation": "eq"}, "next": "CUR", "warnings": [],
              "hits": [{"table": "c.public.t", "id": "a/1", "score": 1.5, "ranks": {"keyword": 1},
                        "snippet": "<mark>shell</mark> &lt;b&gt;", "fields": {"title": "<b>x</b>"},
                        "source": {"position": "lsn=42", "op": "u"}}]}
    page = render_search({"q": "shell <x>", "mode": "keyword", "filters": "qty:>=1"}, ["c.public.t"], result)
    assert 'href="/api/tables/c.public.t/rows/a%2F1"' in page and "<mark>shell</mark>" in page
    assert "lsn=42" in page and "12 hits" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert 'value="shell &lt;x&gt;"' in page and "search_after=CUR" in page and "<b>" not in page
    assert 'id="error"' in render_search({"q": "x"}, [], None, "bad filter")


def test_search_form_becomes_api_parameters() -> None:
    form = search_form([("q", "shell"), ("filters", "status:paid  amount:>=10"), ("evil", "x"), ("q", "again"),
                        ("mode", "hybrid")])
    assert form == {"q": "shell", "filters": "status:paid  amount:>=10", "mode": "hybrid"}
    assert form_params(form) == [("q", "shell"), ("mode", "hybrid"), ("filter", "status:paid"),
                                 ("filter", "amount:>=10")]


def test_login_returns_only_to_known_pages() -> None:
    assert login_target("/search") == "/search" and login_target(None) == "/status"
    assert login_target("https://evil.example/") == "/status" and login_target("//evil") == "/status"
    assert 'name="next" value="/search"' in render_login(next_path="/search")
