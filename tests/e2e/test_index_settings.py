"""Index settings per table (issue 17 item 4) on the real stack: applied when the worker creates a
table's indices (row and chunks), defaults as before, unchanged by a TRUNCATE (older documents are
deleted in place) and kept when a swap points the alias at a fresh index generation; the mirror
verifies clean with an empty DLQ."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.e2e.test_durability import dlq_records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TABLES: list[dict[str, Any]] = [
    {"name": "public.orders", "profile": "index_only",
     "index_settings": {"shards": 3, "replicas": 0, "refresh_interval": "5s"}},
    {"name": "public.articles", "profile": "full", "text_columns": ["body"],
     "index_settings": {"shards": 2, "refresh_interval": "2s"}},
    {"name": "public.audit_log", "profile": "index_only"},
]


def settings(p: Pipeline, alias: str) -> tuple[list[str], dict[str, Any]]:
    """(the physical indices behind ``alias``, the table's settings of the one index)."""
    body = p.es("GET", f"/{alias}/_settings")
    assert len(body) == 1, body
    name, s = next(iter(body.items()))
    idx = s["settings"]["index"]
    return [name], {k: idx.get(k) for k in ("number_of_shards", "number_of_replicas", "refresh_interval")}


def verify(p: Pipeline, table: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", table, "--full", "--settle", "30", "--json"],
                       env=p.env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def test_index_settings_are_applied_and_kept_across_truncate_and_swap(tmp_path: Path,
                                                              require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql("INSERT INTO orders SELECT g, 'c' || g, g, 'new', now() FROM generate_series(1, 10) g")
        p.sql("INSERT INTO articles VALUES (1, 't', 'A paragraph about shards.\n\nOne about refresh.')")
        p.sql("INSERT INTO audit_log VALUES (1, 'me', 'login')")
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("orders")) == 10 and len(p.docs("audit_log")) == 1
               and len(p.docs("articles", chunks=True)) >= 1, timeout=180)

        orders = p.alias("orders")
        names, s = settings(p, orders)
        assert names == [f"{orders}-000001"]
        assert s == {"number_of_shards": "3", "number_of_replicas": "0", "refresh_interval": "5s"}
        want_articles = {"number_of_shards": "2", "number_of_replicas": "0", "refresh_interval": "2s"}
        assert settings(p, p.alias("articles"))[1] == want_articles
        assert settings(p, p.alias("articles") + "-chunks")[1] == want_articles
        # Defaults as before: one shard, no replica, Elasticsearch's refresh interval.
        assert settings(p, p.alias("audit_log"))[1] == {"number_of_shards": "1", "number_of_replicas": "0",
                                                        "refresh_interval": None}

        p.sql("TRUNCATE orders")
        p.wait("truncated", lambda: p.docs("orders") == {})
        assert settings(p, orders)[1] == {"number_of_shards": "3", "number_of_replicas": "0",
                                          "refresh_interval": "5s"}
        p.sql("INSERT INTO orders SELECT g, 'again ' || g, g, 'new', now() FROM generate_series(1, 5) g")
        p.wait("rows after the truncate", lambda: len(p.docs("orders")) == 5)

        for t in ("public.orders", "public.articles", "public.audit_log"):
            rc, rep, err = verify(p, t)
            assert rc == 0 and rep["drift"] == [], (t, rep, err)
        assert dlq_records(p) == 0

        # A swap to a fresh index generation (EsMirror.swap: an incompatible mapping change) keeps them too.
        p.kill_worker()
        mapping = next(iter(p.es("GET", f"/{orders}/_mapping").values()))["mappings"]
        new = asyncio.run(_swap(p.es_url, orders, mapping))
        names, s = settings(p, orders)
        assert names == [new] and new != f"{orders}-000001"
        assert s == {"number_of_shards": "3", "number_of_replicas": "0", "refresh_interval": "5s"}


async def _swap(url: str, alias: str, mapping: dict[str, Any]) -> str:
    from elasticsearch import AsyncElasticsearch

    from cdcstream.sinks.elasticsearch import EsMirror

    client = AsyncElasticsearch(url)
    try:
        return await EsMirror(client).swap(alias, mapping)
    finally:
        await client.close()
