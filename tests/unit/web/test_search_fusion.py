"""Hybrid fusion (score-normalised convex combination) and the relevance measures of the bench."""

from __future__ import annotations

import pytest

from bench.relevance_set import QUERIES, _parse, judged
from bench.search_relevance import evaluate, hit_at, mrr_at, ndcg_at
from cdcstream.web.search import SEMANTIC_WEIGHT, convex, fuse, minmax


def test_minmax_scales_each_list_to_unit_range() -> None:
    assert minmax([]) == []
    assert minmax([3.0, 2.0, 1.0]) == [1.0, 0.5, 0.0]
    assert minmax([0.9, 0.9]) == [1.0, 1.0]  # all equal: all best


def test_convex_combines_normalised_scores_with_the_weight() -> None:
    kw = [("a", 12.0), ("b", 4.0), ("c", 2.0)]
    sem = [("c", 0.93), ("d", 0.90), ("a", 0.87)]
    fused = dict(convex(kw, sem, 0.75))
    assert fused["a"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert fused["b"] == pytest.approx(0.25 * 0.2)
    assert fused["c"] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    assert fused["d"] == pytest.approx(0.75 * 0.5)
    assert [k for k, _ in convex(kw, sem, 0.75)] == ["c", "d", "a", "b"]
    # Weight 0 / 1: exactly one list's order.
    assert [k for k, _ in convex(kw, sem, 0.0)][:3] == ["a", "b", "c"]
    assert [k for k, _ in convex(kw, sem, 1.0)][:3] == ["c", "d", "a"]


def test_convex_edge_cases() -> None:
    assert convex([], [], 0.5) == []
    # One list empty (embeddings failed, or no full table): the other list's order is kept.
    assert [k for k, _ in convex([("x", 3.0), ("y", 1.0)], [], SEMANTIC_WEIGHT)] == ["x", "y"]
    assert [k for k, _ in convex([], [("x", 0.8), ("y", 0.7)], SEMANTIC_WEIGHT)] == ["x", "y"]
    # A duplicate counts once, at its first (best) place; ties keep first appearance, tuple keys work.
    assert dict(convex([(("t", "1"), 5.0), (("t", "1"), 1.0), (("t", "2"), 1.0)], [], 1.0)) == {
        ("t", "1"): 0.0, ("t", "2"): 0.0}
    with pytest.raises(ValueError):
        convex([("a", 1.0)], [], 1.5)


def test_fuse_keeps_good_semantic_hits_above_a_weak_keyword_list() -> None:
    # The failure equal-weight RRF had: keyword's noise at the top, the answer semantic's first.
    kw = [(f"noise{i}", 10.0 - i) for i in range(10)]
    sem = [("tmux", 0.93), *[(f"other{i}", 0.90 - i / 100) for i in range(9)]]
    assert fuse(kw, sem)[0][0] == "tmux"
    # Corroborated by both lists beats either alone at the same semantic rank.
    both = fuse([("b", 5.0), ("x", 1.0)], [("a", 0.9), ("b", 0.9), ("c", 0.5)])
    assert [k for k, _ in both][:2] == ["b", "a"]


def test_relevance_measures() -> None:
    rel = {"tmux": 2, "screen": 2, "dtach": 1}
    assert hit_at(["x", "y", "z", "w", "dtach"], rel) == 1.0 and hit_at(["x"] * 5 + ["tmux"], rel) == 0.0
    assert mrr_at(["x", "screen"], rel) == 0.5 and mrr_at(["x"] * 10 + ["tmux"], rel) == 0.0
    assert ndcg_at(["tmux", "screen", "dtach"], rel) == pytest.approx(1.0)
    assert 0 < ndcg_at(["dtach", "screen", "tmux"], rel) < 1
    # nDCG of ["tmux"]: 3 / (3 + 3 / log2(3) + 1 / 2) = 0.556; averaged with 0.
    assert evaluate([["tmux"], ["x"]], [rel, rel]) == {"hit@5": 0.5, "mrr@10": 0.5,
                                                      "ndcg@10": pytest.approx(0.278, abs=1e-3)}


def test_relevance_set_is_well_formed() -> None:
    assert 20 <= len(QUERIES) <= 30
    assert all(rel and all(g in (1, 2) for g in rel.values()) and 2 in rel.values() for _, rel in QUERIES)
    assert len({q for q, _ in QUERIES}) == len(QUERIES)
    assert "tmux" in judged()
    pkgs = _parse("Package: tmux\nDescription: terminal multiplexer\nTag: role::program,\n scope::utility\n"
                  "Section: admin\n\nPackage: tmux\nDescription: older\n")
    assert pkgs["tmux"].description == "terminal multiplexer" and pkgs["tmux"].tags == "role::program, scope::utility"
