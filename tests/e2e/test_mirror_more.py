"""The mirror against Elasticsearch with security on, and TRUNCATE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TABLES = [{"name": "public.orders", "profile": "index_only"}]


def test_mirror_into_secured_elasticsearch(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    secure = require("elasticsearch-secure")
    with pipeline(tmp_path, require("postgres"), secure, require("embeddings"), TABLES) as p:
        p.es_auth = (secure["user"], secure["password"])
        # Anonymous requests are refused: the node really enforces security.
        assert requests.get(f"{secure['url']}/_cluster/health", timeout=10).status_code == 401
        p.env.update({
            "CDCSTREAM_ELASTICSEARCH_URL": secure["url"].replace("http://", "es://"),
            "CDCSTREAM_ELASTICSEARCH_USER": "env:E2E_ES_USER", "CDCSTREAM_ELASTICSEARCH_PASSWORD": "env:E2E_ES_PASS",
            "E2E_ES_USER": secure["user"], "E2E_ES_PASS": secure["password"],
        })
        p.sql("INSERT INTO orders VALUES (1, 'acme', 19.99, 'new', now())")
        p.apply()
        p.start_worker()
        p.wait("row in the secured node", lambda: set(p.docs("orders")) == {"1"})
        p.sql("UPDATE orders SET status = 'paid' WHERE id = 1")
        p.wait("update in the secured node", lambda: p.docs("orders")["1"]["status"] == "paid",
               retry_on=(*CONNECTION_ERRORS, KeyError))
        # The credentials never reach the worker's log.
        assert secure["password"] not in p.worker_log()


def test_truncate_empties_the_mirror_and_keeps_streaming(tmp_path: Path,
                                                          require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql("INSERT INTO orders VALUES (1, 'a', 1, 'new', now()), (2, 'b', 2, 'new', now())")
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("orders")) == 2)
        p.sql("TRUNCATE orders")
        p.wait("truncated", lambda: p.docs("orders") == {})
        p.sql("INSERT INTO orders VALUES (1, 'again', 3, 'new', now())")
        p.wait("row after truncate", lambda: p.docs("orders").get("1", {}).get("customer") == "again")
