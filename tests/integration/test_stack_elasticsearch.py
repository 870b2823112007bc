"""Smoke test of the local Elasticsearch (``cdcstream stack up`` first; this test starts nothing)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch import Elasticsearch, helpers

from cdcstream.stack.base import StackPaths
from cdcstream.stack.services.elasticsearch import ElasticsearchService

pytestmark = pytest.mark.integration

URL = os.environ.get("CDCSTREAM_ES_URL") or ElasticsearchService(StackPaths()).url

DOCS = {
    "east": {"title": "Eastbound train", "tag": "rail", "vec": [1.0, 0.0, 0.0, 0.0]},
    "north-east": {"title": "North-east ferry", "tag": "sea", "vec": [0.7, 0.7, 0.0, 0.0]},
    "north": {"title": "Northbound bus", "tag": "road", "vec": [0.0, 1.0, 0.0, 0.0]},
    "up": {"title": "Cable car going up", "tag": "rail", "vec": [0.0, 0.0, 1.0, 0.0]},
}


@pytest.fixture(scope="module")
def es() -> Iterator[Elasticsearch]:
    client = Elasticsearch(URL, request_timeout=30)
    try:
        client.cluster.health(wait_for_status="yellow", timeout="30s")
    except ESConnectionError:
        pytest.fail(f"no Elasticsearch at {URL}; run `cdcstream stack up` (or Stack(only=['elasticsearch']).up())")
    yield client
    client.close()


@pytest.fixture
def index(es: Elasticsearch) -> Iterator[str]:
    name = f"cdcstream-smoke-{uuid.uuid4().hex[:12]}"
    es.indices.create(
        index=name,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={"properties": {
            "title": {"type": "text"},
            "tag": {"type": "keyword"},
            "vec": {"type": "dense_vector", "dims": 4, "index": True, "similarity": "cosine"},
        }},
    )
    try:
        helpers.bulk(es, ({"_index": name, "_id": doc_id, **doc} for doc_id, doc in DOCS.items()))
        es.indices.refresh(index=name)
        yield name
    finally:
        es.indices.delete(index=name, ignore_unavailable=True)


def test_knn_returns_nearest_first(es: Elasticsearch, index: str) -> None:
    resp = es.search(index=index, knn={"field": "vec", "query_vector": [0.9, 0.2, 0.0, 0.0], "k": 3,
                                       "num_candidates": 10}, source=False)
    ids = [hit["_id"] for hit in resp["hits"]["hits"]]
    assert ids == ["east", "north-east", "north"]


def test_keyword_and_text_match(es: Elasticsearch, index: str) -> None:
    by_tag = es.search(index=index, query={"term": {"tag": "rail"}})
    assert sorted(hit["_id"] for hit in by_tag["hits"]["hits"]) == ["east", "up"]
    by_title = es.search(index=index, query={"match": {"title": "northbound"}})
    assert [hit["_id"] for hit in by_title["hits"]["hits"]] == ["north"]
