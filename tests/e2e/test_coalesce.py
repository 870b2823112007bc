"""One write per row and batch (issue 19), on the real stack: several changes to one row in one
transaction reach Elasticsearch and the embeddings server once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Pipeline, pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

API_NOT_YET = (*CONNECTION_ERRORS, KeyError, IndexError)


def _index_total(p: Pipeline, table: str) -> int:
    """Index operations Elasticsearch performed on the table's index (its own counter)."""
    r = p.es("GET", f"/{p.alias(table)}/_stats/indexing")
    return int(r["_all"]["primaries"]["indexing"]["index_total"])


def _counters(p: Pipeline, table: str) -> dict[str, int]:
    for t in p.api("/api/tables")["tables"]:
        if t["name"].endswith(f"public.{table}"):
            return dict(t["stats"])
    raise KeyError(table)


def test_regression_grow_then_shrink_in_one_batch_leaves_no_stale_chunks(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    """Bug: a `full` row whose text grew and then shrank within one batch kept the grown text's
    surplus chunks in the index: the shrink's surplus deletes were computed from the first
    change's row state, which had no chunks yet. Only the newest change of a row in a batch is
    chunked and embedded now, against the chunks the index holds. The same transaction updates
    an `index_only` row 30 times: Elasticsearch indexes it far fewer times."""
    for svc in ("kafka", "connect"):
        require(svc)
    tables: list[dict[str, Any]] = [{"name": "public.articles", "profile": "full", "text_columns": ["body"]},
                                    {"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), tables) as p:
        p.sql("INSERT INTO articles VALUES (1, 't', %s, 'x')", (f"seed text of run {p.tag}",))
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'c', 0)")
        p.apply()
        p.start_worker()
        p.wait("seed rows", lambda: "1" in p.docs("orders") and len(p.docs("articles", chunks=True)) == 1,
               timeout=180)
        embed_before = p.embed_stats()
        saved_before = _counters(p, "articles").get("tokens_saved", 0)
        indexed_before = _index_total(p, "orders")
        grown = " ".join(f"run {p.tag} paragraph {i} has words {i * 7} and more words {i * 13}." for i in range(80))
        # Without parameters psycopg sends the statements as one simple query: one transaction.
        updates = "".join(f"UPDATE orders SET amount = {n} WHERE id = 1;" for n in range(1, 31))
        p.sql(f"UPDATE articles SET body = '{grown}' WHERE id = 1;"
              f"UPDATE articles SET body = 'final short text {p.tag}' WHERE id = 1;" + updates)
        p.wait("the final text and amount", lambda: any("final short text" in c["text"] for c in p.docs(
            "articles", chunks=True).values()) and p.docs("orders")["1"]["amount"] == "30.00", timeout=120)

        chunks = p.docs("articles", chunks=True)
        assert [c["text"] for c in chunks.values()] == [f"final short text {p.tag}"], sorted(chunks)
        # The grown text (dozens of chunks) was never embedded: only the final text's one chunk.
        sent = p.embed_stats()["inputs"] - embed_before["inputs"]
        assert sent == 1, sent
        indexed = _index_total(p, "orders") - indexed_before
        assert 1 <= indexed <= 3, indexed  # 30 without coalescing (one batch here, rarely 2-3)
        p.wait("counters", lambda: _counters(p, "orders").get("coalesced", 0) >= 27, retry_on=API_NOT_YET)
        articles = _counters(p, "articles")
        assert articles["coalesced"] >= 1
        # The grown text's tokens (~1,500 cl100k) count as saved: money a re-embed-every-change
        # pipeline would have spent.
        assert articles["tokens_saved"] - saved_before >= 1000, articles
