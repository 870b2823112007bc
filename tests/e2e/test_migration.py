"""Column type changes on the real stack (issue 17 item 1): the worker rebuilds the table's index
into the next generation and swaps the alias; rows written before, during and after reach the
new generation with the new type, searches keep answering, nothing goes to the DLQ, and a
kill -9 in the middle of the fill is resumed by the restarted worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import Pipeline, pipeline
from tests.e2e.test_durability import dlq_records
from tests.e2e.test_index_settings import verify

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROWS = 1500
TABLES: list[dict[str, Any]] = [{"name": "public.orders", "profile": "index_only",
                                 "index_settings": {"refresh_interval": "1s"}}]


class SearchLoop(threading.Thread):
    """Searches the alias in a loop; every failed search (HTTP error, refused) is kept."""

    def __init__(self, p: Pipeline, alias: str) -> None:
        super().__init__(daemon=True)
        self.url, self.auth = f"{p.es_url}/{alias}/_search", p.es_auth
        self.done = threading.Event()
        self.ok, self.failures = 0, []  # type: tuple[int, list[str]]

    def search(self) -> tuple[requests.Response, bool]:
        """One search and whether it answered with hits."""
        r = requests.post(self.url, json={"query": {"match_all": {}}, "size": 1}, auth=self.auth, timeout=10)
        return r, r.status_code == 200 and r.json()["hits"]["total"]["value"] > 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                r, answered = self.search()
                if answered:
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status_code}: {r.text[:200]}")
            except requests.RequestException as e:
                self.failures.append(repr(e))
            time.sleep(0.05)


def generations(p: Pipeline, alias: str) -> list[str]:
    # Not the chunks alias's (<alias>-chunks-000001), which the pattern matches too.
    return sorted(n for n in p.es("GET", f"/{alias}-*/_settings") or {} if n.rpartition("-")[0] == alias)


def doc(p: Pipeline, alias: str, id_: str) -> dict[str, Any] | None:
    """One row's document (``p.docs`` returns the first 1,000 only)."""
    body = p.es("GET", f"/{alias}/_doc/{id_}")
    return body.get("_source") if body.get("found") else None


def field_type(p: Pipeline, alias: str, column: str) -> str:
    (m,) = p.es("GET", f"/{alias}/_mapping").values()
    return str(m["mappings"]["properties"][column].get("type", "object"))


def _setup(p: Pipeline) -> str:
    p.sql("ALTER TABLE orders ADD COLUMN qty INT, ADD COLUMN note TEXT")
    p.sql(f"INSERT INTO orders (id, customer, amount, qty, note) SELECT g, 'c' || g, g, g, "
          f"'{{\"n\": ' || g || '}}' FROM generate_series(1, {ROWS}) g")
    p.apply()
    p.start_worker()
    p.wait("the rows indexed", lambda: p.es("GET", f"/{p.alias('orders')}/_count").get("count") == ROWS,
           timeout=300)
    return p.alias("orders")


def _migrated(p: Pipeline, alias: str, gen: int, column: str, typ: str) -> Callable[[], bool]:
    return lambda: generations(p, alias) == [f"{alias}-{gen:06d}"] and field_type(p, alias, column) == typ


def test_type_changes_rebuild_the_index_while_rows_and_searches_go_on(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        alias = _setup(p)
        assert field_type(p, alias, "qty") == "long"
        search = SearchLoop(p, alias)
        search.start()
        try:
            # INT -> TEXT, with rows changed right after (during the rebuild) and later (after it).
            p.sql("ALTER TABLE orders ALTER COLUMN qty TYPE TEXT")
            p.sql("UPDATE orders SET qty = 'a dozen' WHERE id = 2")
            p.sql("INSERT INTO orders (id, customer, amount, qty) VALUES (900001, 'new', 1, 'three')")
            p.sql("DELETE FROM orders WHERE id = 3")
            p.wait("qty rebuilt as text", _migrated(p, alias, 2, "qty", "text"), timeout=300)
            p.sql("UPDATE orders SET qty = 'two dozen' WHERE id = 1")
            # TEXT -> JSONB: the stored text becomes the JSON it holds.
            p.sql("ALTER TABLE orders ALTER COLUMN note TYPE JSONB USING note::jsonb")
            p.sql("UPDATE orders SET note = '{\"n\": \"changed\"}' WHERE id = 4")
            p.wait("note rebuilt as JSON", _migrated(p, alias, 3, "note", "object"), timeout=300)
        finally:
            search.done.set()
            search.join(30)
        assert search.failures == [] and search.ok > 0, search.failures[:5]
        p.wait("the last changes indexed", lambda: (doc(p, alias, "1") or {}).get("qty") == "two dozen")
        rc, rep, err = verify(p, "public.orders")
        assert rc == 0 and rep["drift"] == [], (rep, err)
        docs = {i: doc(p, alias, i) for i in ("2", "3", "4", "5", "900001")}
        assert docs["3"] is None and docs["2"] is not None and docs["2"]["qty"] == "a dozen"
        five = docs["5"]
        assert five is not None and five["qty"] == "5" and five["note"] == {"n": 5}
        assert docs["4"] is not None and docs["4"]["note"] == {"n": "changed"}
        assert docs["900001"] is not None and docs["900001"]["qty"] == "three"
        assert dlq_records(p) == 0


def test_a_kill_mid_rebuild_is_resumed_by_the_restarted_worker(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        alias = _setup(p)
        p.kill_worker()
        p.env["CDCSTREAM_CRASH_POINT"] = "mid_migration:2"  # after two pages of the fill
        p.start_worker()
        p.sql("ALTER TABLE orders ALTER COLUMN qty TYPE NUMERIC(12,2)")
        p.sql("UPDATE orders SET qty = 2.5 WHERE id = 2")
        p.wait("the worker killed itself mid-fill", lambda: p.worker is not None and p.worker.poll() is not None,
               timeout=300, worker_may_exit=True)
        half = generations(p, alias)
        assert half == [f"{alias}-000001", f"{alias}-000002"], half  # the new one half-built, not swapped
        del p.env["CDCSTREAM_CRASH_POINT"]
        p.start_worker()
        p.sql("UPDATE orders SET qty = 7.25 WHERE id = 7")
        p.wait("the rebuild resumed and swapped", _migrated(p, alias, 2, "qty", "keyword"), timeout=300)
        p.wait("the change after the restart", lambda: (doc(p, alias, "7") or {}).get("qty") == "7.25")
        assert (doc(p, alias, "2") or {}).get("qty") == "2.50"  # written before the kill, acked in the new one
        assert (doc(p, alias, "9") or {}).get("qty") == "9"  # copied and converted
        rc, rep, err = verify(p, "public.orders")
        assert rc == 0 and rep["drift"] == [], (rep, err)
        assert p.es("GET", f"/{alias}/_count")["count"] == ROWS
        assert dlq_records(p) == 0


def test_a_full_tables_chunks_index_is_rebuilt_for_a_column_copied_into_its_chunks(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    tables = [{"name": "public.articles", "profile": "full", "text_columns": ["body"]}]
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), tables) as p:
        p.sql("ALTER TABLE articles ADD COLUMN rank INT")
        p.sql(f"INSERT INTO articles (id, title, body, rank) SELECT g, 't' || g, "
              f"'Paragraph {p.tag} number ' || g || ' about type changes.', g FROM generate_series(1, 20) g")
        p.apply()
        p.start_worker()
        chunks = p.alias("articles") + "-chunks"
        p.wait("the chunks indexed", lambda: len(p.docs("articles", chunks=True)) == 20, timeout=300)
        (m,) = p.es("GET", f"/{chunks}/_mapping").values()
        assert m["mappings"]["properties"]["row"]["properties"]["rank"]["type"] == "long"
        p.sql("ALTER TABLE articles ALTER COLUMN rank TYPE TEXT")
        p.sql("UPDATE articles SET rank = 'top' WHERE id = 1")

        def rank_type() -> str:
            (m,) = p.es("GET", f"/{chunks}/_mapping").values()
            return str(m["mappings"]["properties"]["row"]["properties"]["rank"]["type"])

        p.wait("the chunks index rebuilt", lambda: generations(p, chunks) == [f"{chunks}-000002"]
               and rank_type() == "text", timeout=300)
        p.wait("the rows index rebuilt", _migrated(p, p.alias("articles"), 2, "rank", "text"), timeout=300)
        by_parent = {d["parent_id"]: d for d in p.docs("articles", chunks=True).values()}
        assert by_parent["1"]["row"]["rank"] == "top" and by_parent["2"]["row"]["rank"] == "2"
        rc, rep, err = verify(p, "public.articles")
        assert rc == 0 and rep["drift"] == [], (rep, err)
        assert dlq_records(p) == 0
