"""PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> Faust worker -> Elasticsearch / archive / embeddings.

All real: the stack's servers, a worker process, the embeddings server's own counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Pipeline, archived, pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]},
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.audit_log", "profile": "archive"},
]
#: A document looked up by id before it is indexed (or while Elasticsearch answers an error).
DOC_NOT_YET = (*CONNECTION_ERRORS, KeyError)

LONG_BODY = "\n\n".join(
    f"Section {i}. " + " ".join(f"The mirror keeps paragraph {i} sentence {j} searchable." for j in range(6))
    for i in range(6))


def body(p: Pipeline) -> str:
    return LONG_BODY.replace("The mirror", f"Run {p.tag}: the mirror")


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        # The tag keeps texts unique per run: the embedding cache would otherwise (rightly) serve
        # them from an earlier run, and the request counts below would prove nothing.
        p.sql("INSERT INTO articles VALUES (1, 'Replication slots', %s, 'ops')", (body(p),))
        p.sql("INSERT INTO orders VALUES (1, 'acme', 19.99, 'new', '2024-01-02 03:04:05.123456'),"
              " (2, 'globex', 1234.50, 'paid', '2024-02-03 10:00:00')")
        p.sql("INSERT INTO audit_log VALUES (1, 'alice', 'login'), (2, 'bob', 'logout')")
        actions = p.apply()
        assert any("created connector" in a for a in actions)
        p.start_worker()
        yield p


def test_snapshot_then_changes_reach_every_sink(pipe: Pipeline) -> None:
    p = pipe
    # Snapshot: index_only rows exact, with decimals kept as text.
    p.wait("orders snapshot", lambda: len(p.docs("orders")) == 2)
    orders = p.docs("orders")
    assert orders["1"]["amount"] == "19.99" and orders["2"]["amount"] == "1234.50"
    assert orders["1"]["ordered_at"] == "2024-01-02T03:04:05.123456"
    assert orders["1"]["_cdc"]["op"] == "r"
    # full: the row and its chunks with vectors of the served dimension.
    p.wait("article chunks", lambda: len(p.docs("articles", chunks=True)) >= 2)
    chunks = p.docs("articles", chunks=True)
    assert all(len(c["embedding"]) == p.embed["dimensions"] for c in chunks.values())
    assert {c["parent_id"] for c in chunks.values()} == {"1"}
    assert all(c["row"]["category"] == "ops" for c in chunks.values())
    assert p.docs("articles")["1"]["title"] == "Replication slots"

    # c/u/d on index_only: exact final contents.
    p.sql("INSERT INTO orders VALUES (3, 'initech', 0.01, 'new', now())")
    p.sql("UPDATE orders SET status = 'shipped', amount = 20.00 WHERE id = 1")
    p.sql("DELETE FROM orders WHERE id = 2")
    p.wait("orders c/u/d", lambda: set(p.docs("orders")) == {"1", "3"} and p.docs("orders")["1"]["status"] == "shipped",
           retry_on=DOC_NOT_YET)
    o = p.docs("orders")
    assert o["1"]["amount"] == "20.00" and o["3"]["amount"] == "0.01" and o["1"]["_cdc"]["op"] == "u"

    # Never pay twice: a non-text update sends no embedding request.
    before = p.embed_stats()
    p.sql("UPDATE articles SET category = 'runbook' WHERE id = 1")
    p.wait("category on chunks", lambda: all(c["row"]["category"] == "runbook"
                                             for c in p.docs("articles", chunks=True).values()))
    assert p.embed_stats()["requests"] == before["requests"]

    # One-paragraph edit: only the changed chunks are embedded. Paragraphs here are longer than
    # a 48-token chunk, so the edited one is cut into overlapping windows: the windows from the
    # edit to the paragraph's end change (at most 3 here), no chunk of another paragraph does.
    old_texts = {c["text"] for c in p.docs("articles", chunks=True).values()}
    n_chunks = len(old_texts)
    before = p.embed_stats()
    edited = body(p).replace("paragraph 3 sentence 5", "paragraph 3 sentence five (edited)")
    p.sql("UPDATE articles SET body = %s WHERE id = 1", (edited,))
    p.wait("edited chunk", lambda: any("five (edited)" in c["text"] for c in p.docs("articles", chunks=True).values()))
    after = p.embed_stats()
    changed = {c["text"] for c in p.docs("articles", chunks=True).values()} - old_texts
    assert all("Section 3." in t or "paragraph 3 " in t for t in changed), changed
    assert after["inputs"] - before["inputs"] == len(changed)
    assert 1 <= len(changed) <= 3 < n_chunks

    # Shrinking text deletes surplus chunks; deleting the row deletes them all.
    p.sql("UPDATE articles SET body = 'short now' WHERE id = 1")
    p.wait("chunks shrink", lambda: len(p.docs("articles", chunks=True)) == 2)  # title + body
    p.sql("DELETE FROM articles WHERE id = 1")
    p.wait("row and chunks gone", lambda: not p.docs("articles") and not p.docs("articles", chunks=True))

    # archive: every change event once, by position.
    # Objects are cut every 4 records per partition, and which partition a key lands in varies
    # per run (the key's schema name carries the run's tag): 16 events over 2 partitions put
    # at least 8 in one, so at least two objects are complete whatever the split.
    p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'x' FROM generate_series(3, 16) g")
    p.wait("archive objects", lambda: len(archived(p)) >= 8)
    lines = archived(p)
    positions = [(x["kafka"]["partition"], x["kafka"]["offset"]) for x in lines]
    assert len(positions) == len(set(positions))
    assert {x["after"]["actor"] for x in lines} <= {"alice", "bob"} | {f"user{i}" for i in range(3, 17)}

    # Cluster-wide stats through the worker's API.
    stats = {t["name"].split(".")[-1]: t["stats"] for t in p.api("/api/tables")["tables"]}
    assert stats["orders"]["op_r"] == 2 and stats["orders"]["op_c"] == 1 and stats["orders"]["op_d"] == 1
    assert stats["articles"]["tokens_saved"] > 0 and stats["articles"]["embed_tokens"] > 0


def test_kill_9_and_restart_keeps_state_exact(pipe: Pipeline) -> None:
    p = pipe
    p.wait("snapshot", lambda: len(p.docs("orders")) == 2)
    p.kill_worker()
    p.sql("UPDATE orders SET amount = 99.99 WHERE id = 1")
    p.sql("INSERT INTO orders VALUES (7, 'hooli', 7.00, 'new', now())")
    p.start_worker()
    p.wait("changes after restart", lambda: set(p.docs("orders")) == {"1", "2", "7"}
           and p.docs("orders")["1"]["amount"] == "99.99", retry_on=DOC_NOT_YET)
    # Replays after the restart are version conflicts or stale skips, never regressions.
    p.sql("UPDATE orders SET amount = 100.00 WHERE id = 1")
    p.wait("newest wins", lambda: p.docs("orders")["1"]["amount"] == "100.00", retry_on=DOC_NOT_YET)


def test_adding_a_table_brings_its_existing_rows(pipe: Pipeline) -> None:
    p = pipe
    p.wait("snapshot", lambda: len(p.docs("orders")) == 2)
    p.sql("CREATE TABLE public.invoices (id INT PRIMARY KEY, total NUMERIC(10,2))")
    p.sql("INSERT INTO invoices VALUES (1, 10.00), (2, 20.00)")
    p.write_config([*TABLES, {"name": "public.invoices", "profile": "index_only"}])
    actions = p.apply()
    assert any("incremental snapshot" in a for a in actions), actions
    # The worker notices the new topic and its supervisor restarts it into the new subscription.
    p.wait("existing invoice rows", lambda: set(p.docs("invoices")) == {"1", "2"}, timeout=120)
    p.sql("INSERT INTO invoices VALUES (3, 30.00)")
    p.wait("new invoice row", lambda: "3" in p.docs("invoices"))
