"""A column's type change on the real node: the next generation is built, filled and swapped in
while writes and searches go on (cdcstream/sinks/elasticsearch.py, migrations)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from cdcstream.sinks.base import IndexOp
from cdcstream.sinks.documents import row_mapping
from cdcstream.sinks.elasticsearch import EsMirror
from tests.support.es import scratch_alias

pytestmark = pytest.mark.integration

V1 = {"fields": [{"field": "id", "type": "int32"}, {"field": "qty", "type": "int32"}]}
V2 = {"fields": [{"field": "id", "type": "int32"}, {"field": "qty", "type": "string"}]}
ROWS = 1500


@pytest.fixture
async def es(require: Callable[[str], dict[str, Any]]) -> AsyncIterator[tuple[AsyncElasticsearch, str]]:
    async with scratch_alias(require("elasticsearch")["url"], "test-migrate") as pair:
        yield pair


async def _filled(es: AsyncElasticsearch, alias: str) -> EsMirror:
    m = EsMirror(es)
    await m.ensure_index(alias, row_mapping(V1), {"refresh_interval": "2s"})
    await m.apply([IndexOp("index", alias, str(i), 10 + i, {"id": i, "qty": i}) for i in range(ROWS)])
    return m


async def _migrated(m: EsMirror, alias: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while alias in m.migrations:
        assert time.monotonic() < deadline, m.migration_views()
        await asyncio.sleep(0.1)


async def _source(es: AsyncElasticsearch, alias: str) -> dict[str, dict[str, Any]]:
    await es.indices.refresh(index=alias)
    resp = await es.search(index=alias, size=ROWS + 10)
    return {h["_id"]: h["_source"] for h in resp["hits"]["hits"]}


async def test_int_to_text_rebuilds_while_writes_and_searches_go_on(es: tuple[AsyncElasticsearch, str]) -> None:
    client, alias = es
    m = await _filled(client, alias)
    failures: list[BaseException] = []
    searches = 0

    async def search_loop() -> None:
        nonlocal searches
        while True:
            try:
                await client.search(index=alias, query={"match_all": {}}, size=1)
                searches += 1
            except Exception as e:  # every failure is the finding
                failures.append(e)
            await asyncio.sleep(0.01)

    loop = asyncio.create_task(search_loop())
    try:
        await m.ensure_index(alias, row_mapping(V2), {"refresh_interval": "2s"}, version=10_000)
        assert m.migrations[alias].target == f"{alias}-000002"
        # During the fill: new-typed writes, a delete and a new row, acknowledged by the new generation.
        r = await m.apply([IndexOp("index", alias, "3", 20_000, {"id": 3, "qty": "a dozen"}),
                           IndexOp("delete", alias, "4", 20_000),
                           IndexOp("index", alias, "new", 20_000, {"id": 9999, "qty": "x"})])
        assert r.indexed == 2 and not r.failed
        await _migrated(m, alias)
        # After: a late event of the old schema (another partition) neither rebuilds back nor fails.
        await m.ensure_index(alias, row_mapping(V1), version=500)
        r = await m.apply([IndexOp("index", alias, "5", 20_000, {"id": 5, "qty": 55})])
        assert not m.migrations and r.indexed == 1 and not r.failed
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert not failures and searches > 0, failures
    assert list((await client.indices.get_alias(name=alias)).body) == [f"{alias}-000002"]
    assert not await client.indices.exists(index=f"{alias}-000001")  # the old generation is gone
    mapping = (await client.indices.get_mapping(index=alias)).body[f"{alias}-000002"]["mappings"]
    assert mapping["properties"]["qty"]["type"] == "text"
    settings = (await client.indices.get_settings(index=f"{alias}-000002")).body[f"{alias}-000002"]["settings"]
    assert settings["index"]["refresh_interval"] == "2s" and "gc_deletes" not in settings["index"]
    docs = await _source(client, alias)
    assert len(docs) == ROWS  # 1500 - a deleted one + a new one
    assert docs["3"]["qty"] == "a dozen" and "4" not in docs and docs["new"]["qty"] == "x"
    assert docs["5"]["qty"] in (55, "55")  # coerced into the text field as it is
    assert all(docs[str(i)]["qty"] == str(i) for i in range(6, ROWS))


async def test_a_kill_mid_fill_resumes_in_the_next_process(es: tuple[AsyncElasticsearch, str]) -> None:
    client, alias = es
    first = await _filled(client, alias)
    await first.ensure_index(alias, row_mapping(V2), version=10_000)
    # The process dies before its fill copied anything; a write it acked is in the new generation only.
    for task in list(first._tasks):
        task.cancel()
    r = await first.apply([IndexOp("index", alias, "7", 20_000, {"id": 7, "qty": "seven"})])
    assert r.indexed == 1
    assert list((await client.indices.get_alias(name=alias)).body) == [f"{alias}-000001"]

    # The restarted worker finds the half-built one twice at once: at start and in its first batch.
    second = EsMirror(client)
    await asyncio.gather(second.resume([alias]), second.ensure_index(alias, row_mapping(V2), version=10_000))
    assert second.migrations[alias].resumed
    await _migrated(second, alias)
    await asyncio.sleep(0.5)
    assert not second._tasks  # one fill, finished (a second one once retried its cleanup forever)
    docs = await _source(client, alias)
    assert len(docs) == ROWS and docs["7"]["qty"] == "seven" and docs["8"]["qty"] == "8"
    assert list((await client.indices.get_alias(name=alias)).body) == [f"{alias}-000002"]
    assert not await client.indices.exists(index=f"{alias}-000001")


async def test_regression_a_vector_size_change_waits_instead_of_copying_old_vectors(
        es: tuple[AsyncElasticsearch, str]) -> None:
    """Bug: a worker restarted with other CDCSTREAM_EMBED_DIMENSIONS started a copy migration of
    the chunks index whose fill Elasticsearch refused (old vectors, new dims) while queries were
    embedded with the new size. Now the table waits with the reason, and nothing is rebuilt."""
    from cdcstream.sinks.base import SinkUnavailable

    client, alias = es

    def chunks(dims: int) -> dict[str, Any]:
        return {"dynamic": False, "properties": {"text": {"type": "text"}, "embedding": {
            "type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine"}}}

    m = EsMirror(client)
    await m.ensure_index(alias, chunks(4))
    await m.apply([IndexOp("index", alias, "1", 10, {"text": "a", "embedding": [0.5, 0.5, 0.5, 0.5]})])
    before = set((await client.indices.get_alias(name=alias)).body)
    with pytest.raises(SinkUnavailable) as e:
        await EsMirror(client).ensure_index(alias, chunks(8))  # a new process, as after the restart
    assert e.value.reason == "embedding model changed" and "4 dimensions, the settings give 8" in str(e.value)
    assert set((await client.indices.get_alias(name=alias)).body) == before  # no new generation
    assert not m.migrations


async def test_float_columns_kept_unindexed_by_older_versions_become_searchable(
        es: tuple[AsyncElasticsearch, str]) -> None:
    """Older versions mapped Connect's float/double (they matched only float32/float64, names the
    JSON schema never uses) as an unindexed object: a range on a real/double column found nothing.
    Such an index is rebuilt at the table's next change; NaN and infinities stay as their text."""
    client, alias = es
    values = {"1": 1.5, "2": 12.25, "3": "NaN", "4": "-Infinity", "5": None}
    old = {"dynamic": False, "properties": {"id": {"type": "long"}, "f": {"type": "object", "enabled": False}}}
    m = EsMirror(client)
    await m.ensure_index(alias, old)
    await m.apply([IndexOp("index", alias, k, 10, {"id": int(k), "f": v}) for k, v in values.items()])
    m2 = EsMirror(client)  # the next process, with the new mapping
    await m2.ensure_index(alias, row_mapping({"fields": [{"field": "id", "type": "int32"},
                                                          {"field": "f", "type": "double", "optional": True}]}))
    await _migrated(m2, alias)
    assert (await client.indices.get_mapping(index=alias)).body.popitem()[1]["mappings"]["properties"]["f"] == \
        {"type": "double", "ignore_malformed": True}
    assert {k: d["f"] for k, d in (await _source(client, alias)).items()} == values  # nothing dropped
    await client.indices.refresh(index=alias)
    hits = (await client.search(index=alias, query={"range": {"f": {"gte": 10}}}))["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["2"]
    # A live write of a non-finite value is taken as before.
    res = await m2.apply([IndexOp("index", alias, "6", 11, {"id": 6, "f": "Infinity"})])
    assert res.indexed == 1
