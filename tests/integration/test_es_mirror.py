"""The Elasticsearch mirror's write rules on the real node: external versions decide, never arrival order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from cdcstream.sinks.base import IndexOp
from cdcstream.sinks.documents import row_mapping
from cdcstream.sinks.elasticsearch import EsMirror
from tests.support.es import drop_generations

pytestmark = pytest.mark.integration

SCHEMA = {"fields": [{"field": "id", "type": "int32"}, {"field": "name", "type": "string"},
                     {"field": "amount", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"}]}


@pytest.fixture
async def mirror(require: Callable[[str], dict[str, Any]]) -> AsyncIterator[tuple[EsMirror, str]]:
    es = AsyncElasticsearch(require("elasticsearch")["url"])
    alias = f"test-mirror-{uuid.uuid4().hex[:8]}"
    m = EsMirror(es)
    await m.ensure_index(alias, row_mapping(SCHEMA))
    try:
        yield m, alias
    finally:
        await drop_generations(es, alias)
        await es.close()


async def doc(m: EsMirror, alias: str, id_: str) -> dict[str, Any] | None:
    return (await m.get_many(alias, [id_])).get(id_)


async def test_newer_wins_whatever_the_arrival_order(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    r = await m.apply([IndexOp("index", alias, "1", 20, {"id": 1, "name": "new"})])
    assert r.indexed == 1
    r = await m.apply([IndexOp("index", alias, "1", 10, {"id": 1, "name": "old"})])
    assert r.conflicts == 1 and r.indexed == 0 and not r.failed  # a counted no-op, not an error
    assert (await doc(m, alias, "1")) == {"id": 1, "name": "new"}


async def test_replay_is_a_no_op(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    ops = [IndexOp("index", alias, str(i), 100 + i, {"id": i, "name": f"n{i}"}) for i in range(5)]
    assert (await m.apply(ops)).indexed == 5
    again = await m.apply([IndexOp(o.action, o.index, o.id, o.version, o.doc) for o in ops])
    assert again.conflicts == 5 and again.indexed == 0


async def test_older_event_does_not_resurrect_a_deleted_row(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    await m.apply([IndexOp("index", alias, "7", 5, {"id": 7})])
    assert (await m.apply([IndexOp("delete", alias, "7", 9)])).deleted == 1
    r = await m.apply([IndexOp("index", alias, "7", 6, {"id": 7, "name": "stale"})])
    assert r.conflicts == 1 and await doc(m, alias, "7") is None


async def test_mapping_errors_are_reported_per_item_not_raised(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    r = await m.apply([IndexOp("index", alias, "1", 1, {"id": "not a number"}, ref="ev1"),
                       IndexOp("index", alias, "2", 1, {"id": 2}, ref="ev2")])
    assert r.indexed == 1
    assert [(op.ref, "mapper_parsing_exception" in why or "document_parsing_exception" in why)
            for op, why in r.failed] == [("ev1", True)]


async def test_new_columns_extend_the_mapping(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    wider = {"fields": [*SCHEMA["fields"], {"field": "phone", "type": "string"}]}
    await m.ensure_index(alias, row_mapping(wider))
    mapping = await m.es.indices.get_mapping(index=alias)
    props = next(iter(mapping.body.values()))["mappings"]["properties"]
    assert props["phone"]["type"] == "text" and props["amount"]["fields"]["num"]["type"] == "double"


async def test_swap_empties_the_alias_for_truncate(mirror: tuple[EsMirror, str]) -> None:
    m, alias = mirror
    await m.apply([IndexOp("index", alias, "1", 1, {"id": 1})])
    new = await m.swap(alias, row_mapping(SCHEMA))
    assert new.endswith("000002")
    await m.es.indices.refresh(index=alias)
    assert (await m.es.count(index=alias))["count"] == 0
