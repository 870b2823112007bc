"""Pure parts of the worker API: reciprocal rank fusion, search parameters, request bodies, metrics text."""

from __future__ import annotations

from typing import Any

import pytest

from cdcstream.core.config import ProcessingProfile
from cdcstream.web.metrics import _esc
from cdcstream.web.search import RangeFilter, SearchInputError, filter_clauses, parse_request, rrf
from cdcstream.web.views import HttpError, bearer, parse_json_object, parse_profile_change, parse_replay


# --- RRF ---------------------------------------------------------------------------------
def test_rrf_scores_are_sums_of_reciprocal_ranks() -> None:
    fused = dict(rrf([["a", "b", "c"], ["b", "d"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)


def test_rrf_order_item_in_both_lists_wins_and_ties_keep_first_appearance() -> None:
    order = [k for k, _ in rrf([["a", "b"], ["c", "b"]])]
    assert order[0] == "b"
    # a and c tie (rank 1 in one list each): a appeared first.
    assert order[1:] == ["a", "c"]


def test_rrf_edge_cases() -> None:
    assert rrf([]) == []
    assert rrf([[], []]) == []
    # A duplicate inside one list counts once, at its best rank.
    assert dict(rrf([["x", "x"]], k=1))["x"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        rrf([["a"]], k=0)


def test_rrf_accepts_tuple_keys() -> None:
    fused = rrf([[("t", "1"), ("t", "2")], [("t", "2")]])
    assert fused[0][0] == ("t", "2")


# --- search parameters --------------------------------------------------------------------
def test_parse_request_full() -> None:
    req = parse_request([("q", " slots "), ("mode", "hybrid"), ("size", "5"), ("table", "c.public.a,c.public.b"),
                         ("filter.status", "paid"), ("range.amount", "10..20"), ("range.ordered_at", "2024-01-01..")])
    assert req.q == "slots" and req.mode == "hybrid" and req.size == 5
    assert req.tables == ["c.public.a", "c.public.b"]
    assert req.filters == {"status": "paid"}
    assert req.ranges == [RangeFilter("amount", "10", "20"), RangeFilter("ordered_at", "2024-01-01", None)]


@pytest.mark.parametrize("params, message", [
    ([], "is required"),
    ([("q", "   ")], "is required"),
    ([("q", "x" * 1001)], "longer than"),
    ([("q", "x"), ("mode", "fuzzy")], "mode must be one of"),
    ([("q", "x"), ("size", "0")], "size must be"),
    ([("q", "x"), ("size", "101")], "size must be"),
    ([("q", "x"), ("size", "٣")], "size must be"),  # a non-ASCII digit
    ([("q", "x"), ("size", "-1")], "size must be"),
    ([("q", "x"), ("q", "y")], "more than once"),
    ([("q", "x"), ("filter.a b", "1")], "not a column name"),
    ([("q", "x"), ("filter._cdc.op", "c")], "not a column name"),
    ([("q", "x"), ("filter.status", "")], "1 to 256"),
    ([("q", "x"), ("range.amount", "10")], "a range is lo..hi"),
    ([("q", "x"), ("range.amount", "..")], "a range is lo..hi"),
    ([("q", "x"), ("table", ",")], "table must be"),
    ([("q", "x"), ("sort", "id")], "unknown parameter"),
])
def test_parse_request_rejects(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(SearchInputError, match=message):
        parse_request(params)


def test_too_many_filters() -> None:
    with pytest.raises(SearchInputError, match="at most"):
        parse_request([("q", "x")] + [(f"filter.f{i}", "1") for i in range(21)])


def test_ranges_use_the_numeric_subfield_of_decimals() -> None:
    req = parse_request([("q", "x"), ("range.amount", "1..2"), ("range.qty", "..3"), ("filter.status", "paid")])
    mapping = {"amount": {"type": "keyword", "fields": {"num": {"type": "double"}}}, "qty": {"type": "long"},
               "status": {"type": "keyword"}}
    clauses = filter_clauses(req, [mapping])
    assert {"range": {"amount.num": {"gte": "1", "lte": "2"}}} in clauses
    assert {"range": {"qty": {"lte": "3"}}} in clauses
    assert {"match": {"status": {"query": "paid", "lenient": True, "operator": "and"}}} in clauses
    chunk_clauses = filter_clauses(req, [mapping], prefix="row.")
    assert {"range": {"row.amount.num": {"gte": "1", "lte": "2"}}} in chunk_clauses


# --- request bodies -------------------------------------------------------------------------
def test_profile_change_body() -> None:
    assert parse_profile_change({"profile": "full", "backfill": True, "confirm": True}) == (
        ProcessingProfile.FULL, True, True, False)
    assert parse_profile_change({"profile": "archive", "drop_index": True}) == (
        ProcessingProfile.ARCHIVE, False, False, True)


@pytest.mark.parametrize("body, message", [
    ({}, "profile must be one of"),
    ({"profile": "FULL"}, "profile must be one of"),
    ({"profile": 1}, "profile must be one of"),
    ({"profile": "full", "backfill": "yes"}, "backfill must be true or false"),
    ({"profile": "full", "confirm": 1}, "confirm must be true or false"),
    ({"profile": "full", "extra": 1}, "unknown field"),
])
def test_profile_change_rejects(body: dict[str, object], message: str) -> None:
    with pytest.raises(HttpError, match=message) as e:
        parse_profile_change(body)
    assert e.value.status == 400 and e.value.body["error"]


@pytest.mark.parametrize("raw, status", [(b"", 400), (b"  ", 400), (b"{", 400), (b"[1]", 400), (b"\xff", 400),
                                         (b"x" * 70000, 413)])
def test_json_body_rejects(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as e:
        parse_json_object(raw)
    assert e.value.status == status


def test_replay_body() -> None:
    assert parse_replay({"offsets": [3, 1]}) == {1, 3}
    assert parse_replay({"all": True}) is None
    refused: list[dict[str, Any]] = [
        {}, {"all": False}, {"offsets": [1], "all": True}, {"offsets": []}, {"offsets": [-1]},
        {"offsets": [True]}, {"offsets": "1"}, {"offsets": list(range(1001))}, {"all": "yes"}, {"x": 1}]
    for body in refused:
        with pytest.raises(HttpError):
            parse_replay(body)


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_metrics_label_escaping() -> None:
    assert _esc('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


# --- rendering ------------------------------------------------------------------------------
def _snapshot() -> dict[str, object]:
    table = {"id": "c.public.t<script>", "profile": "full", "events": dict.fromkeys("cudrt", 1), "lag": 0,
             "last_event_age_s": 3.0, "last_event_ms": 1_700_000_000_000, "documents": 2, "chunks": None,
             "embed_tokens": 5, "tokens_saved": 1, "dlq": 0, "stats": {"op_r": 1},
             "snapshot": {"rows_read": 1, "source_rows": 2, "progress": 0.5}}
    conn = {"name": "c", "kind": "postgres", "state": "FAILED", "tasks": [{"id": 0, "state": "FAILED"}],
            "error": 'boom "<b>"', "slot": {"slot": "s", "active": False, "lag_bytes": 10}}
    series = [{"ts": 0.0, "events": 0, "events_per_s": None, "lag": 1},
              {"ts": 5.0, "events": 10, "events_per_s": 2.0, "lag": 0},
              {"ts": 10.0, "events": 30, "events_per_s": 4.0, "lag": 3}]
    return {"worker": "w", "ts": 0.0, "tables": [table], "connectors": [conn],
            "workers": {"w": {"live": True}}, "series": series, "lag_error": None}


def test_status_page_escapes_and_draws_the_chart() -> None:
    from cdcstream.web.pages import render_status

    page = render_status(_snapshot())  # type: ignore[arg-type]
    assert "<script>" not in page and "c.public.t&lt;script&gt;" in page
    assert "&lt;b&gt;" in page and '<meta http-equiv="refresh"' in page
    assert page.count("<polyline") == 2 and "50%" in page


def test_metrics_render() -> None:
    from cdcstream.web.metrics import render

    text = render(_snapshot())  # type: ignore[arg-type]
    assert 'cdcstream_events_total{op="r",table="c.public.t<script>"} 1' in text
    assert 'cdcstream_connector_state{connector="c",state="FAILED"} 1' in text
    assert 'cdcstream_replication_slot_active{connector="c",slot="s"} 0' in text
    assert "cdcstream_chunks{" not in text  # unknown values are left out, not reported as 0
    assert text.endswith("\n")


def test_regression_replay_offsets_past_64_bits_are_refused() -> None:
    """Bug (schemathesis): a DLQ offset past 2**63 was accepted, echoed back as "no such DLQ
    record", and the JSON encoder (orjson) failed on it: HTTP 500. Kafka offsets are 64-bit."""
    import pytest

    from cdcstream.web.views import HttpError, parse_replay

    assert parse_replay({"offsets": [0, 2**63 - 1]}) == {0, 2**63 - 1}
    with pytest.raises(HttpError) as e:
        parse_replay({"offsets": [2**63]})
    assert e.value.status == 400
