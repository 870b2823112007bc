"""The fault proxy the fault rounds put between the worker and its HTTP servers: it forwards,
answers injected statuses and resets connections (against the stack's Elasticsearch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support.faultproxy import fault_proxy

pytestmark = pytest.mark.integration


def test_forwards_injects_and_resets(require: Callable[[str], dict[str, Any]]) -> None:
    es = require("elasticsearch")
    with fault_proxy(es["url"], "es", {"X-Elastic-Product": "Elasticsearch"}) as px:
        direct = requests.get(f"{es['url']}/_cluster/health", timeout=10).json()
        via = requests.get(f"{px.url}/_cluster/health", timeout=10)
        assert via.status_code == 200 and via.json()["cluster_name"] == direct["cluster_name"]
        r = requests.post(f"{px.url}/_bulk", data=b'{"index": {"_index": "x"}}\n{}\n',
                          headers={"Content-Type": "application/x-ndjson"}, timeout=10)
        assert r.status_code in (200, 400)  # forwarded with its body (the server answered)
        for status in (401, 400, 500):
            px.set(status)
            r = requests.get(f"{px.url}/_cluster/health", timeout=10)
            assert r.status_code == status and r.headers["X-Elastic-Product"] == "Elasticsearch"
        px.set("reset")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{px.url}/_cluster/health", timeout=10)
        px.set(None)
        assert requests.get(f"{px.url}/_cluster/health", timeout=10).status_code == 200
        assert px.injected == {"401": 1, "400": 1, "500": 1, "reset": 1} and px.forwarded == 3


def test_gzip_bodies_pass_through_to_the_object_store(require: Callable[[str], dict[str, Any]]) -> None:
    """Regression: the proxy decompressed the archive's gzip PUT bodies (Content-Encoding: gzip)
    and every object store write failed with 500 through it."""
    import asyncio
    import gzip

    from cdcstream.sinks.archive import open_store
    from cdcstream.sinks.base import ArchiveObject

    s3 = require("objectstore")
    with fault_proxy(s3["endpoint"], "objectstore", preserve_host=True) as px:
        store = open_store(f"s3://{s3['bucket']}/it-faultproxy?endpoint={px.url}", s3["access_key"],
                           s3["secret_key"])
        body = gzip.compress(b'{"n": 1}\n', mtime=0)
        asyncio.run(store.put(ArchiveObject("x/0-1.jsonl.gz", body, "t", 0, 0, 1, 1)))
        assert asyncio.run(store.get("x/0-1.jsonl.gz")) == body
        assert px.forwarded == 2
