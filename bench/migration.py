"""Mapping migration: how fast a table's index is rebuilt after a column type change.

A table of ``rows`` row documents (the orders shape of the other benchmarks: eight columns and
the ``_cdc`` metadata) is written into its first generation through the worker's ``EsMirror``;
then ``qty`` changes INT -> TEXT, the mirror creates the next generation, fills it by scroll +
bulk converting ``qty``, and swaps the alias. Measured: from the type change to the swap (the
old generation dropped), documents per second, and the time searches kept answering meanwhile
(a search loop against the alias during the whole rebuild; every failure is reported).
Mirror-level: the worker's own writes during the rebuild are not part of it (they go to the new
generation and compete with the fill for the node, as any bulk does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from elasticsearch import AsyncElasticsearch

from bench.common import new_tag, stack
from cdcstream.sinks.base import IndexOp
from cdcstream.sinks.documents import row_mapping
from cdcstream.sinks.elasticsearch import EsMirror

SIZES = {"smoke": 2_000, "full": 100_000}


def _schema(qty: str) -> dict[str, Any]:
    cols = [("id", "int32", None), ("customer", "string", None), ("status", "string", None),
            ("amount", "string", "io.debezium.data.VariableScaleDecimal"),
            ("ordered_at", "string", "io.debezium.time.ZonedTimestamp"), ("qty", qty, None),
            ("note", "string", None), ("flag", "boolean", None)]
    return {"fields": [{"field": f, "type": t, **({"name": n} if n else {})} for f, t, n in cols]}


def _doc(i: int) -> dict[str, Any]:
    return {"id": i, "customer": f"customer {i % 977}", "status": ("new", "paid", "shipped")[i % 3],
            "amount": f"{i % 10_000}.{i % 100:02d}", "ordered_at": "2026-12-05T03:00:00Z", "qty": i % 50,
            "note": "a short note about the order " * 3, "flag": i % 2 == 0,
            "_cdc": {"op": "c", "version": 1000 + i, "position": str(1000 + i), "ts_source": 0,
                     "table": "public.orders", "key": str(i)}}


async def _run(rows: int) -> dict[str, Any]:
    es = AsyncElasticsearch(stack()["elasticsearch"]["url"], request_timeout=60)
    alias = f"bench-migration-{new_tag()}"
    mirror = EsMirror(es)
    searches, failures = 0, []

    async def search_loop() -> None:
        nonlocal searches
        while True:
            try:
                await es.search(index=alias, query={"match_all": {}}, size=1)
                searches += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(e)[:200])
            await asyncio.sleep(0.05)

    try:
        await mirror.ensure_index(alias, row_mapping(_schema("int32")), {"refresh_interval": "1s"})
        t0 = time.monotonic()
        for start in range(0, rows, 2000):
            await mirror.apply([IndexOp("index", alias, str(i), 1000 + i, _doc(i))
                                for i in range(start, min(rows, start + 2000))])
        load_s = time.monotonic() - t0
        await es.indices.refresh(index=alias)
        loop = asyncio.create_task(search_loop())
        t1 = time.monotonic()
        await mirror.ensure_index(alias, row_mapping(_schema("string")), {"refresh_interval": "1s"},
                                  version=10**9)
        mig = mirror.migrations[alias]
        while alias in mirror.migrations:
            await asyncio.sleep(0.05)
        rebuild_s = time.monotonic() - t1
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        behind = sorted((await es.indices.get_alias(name=alias)).body)
        count = int((await es.count(index=alias))["count"])
        qty = (await es.indices.get_mapping(index=alias)).body[behind[0]]["mappings"]["properties"]["qty"]["type"]
        return {"rows": rows, "load_s": round(load_s, 2), "load_docs_per_s": round(rows / load_s, 1),
                "rebuild_s": round(rebuild_s, 2), "rebuild_docs_per_s": round(rows / rebuild_s, 1),
                "copied": mig.copied, "dropped_values": mig.dropped_values, "refused": mig.refused,
                "generations_after": behind, "documents_after": count, "qty_type_after": qty,
                "searches_during": searches, "search_failures": failures[:5], "search_failure_count": len(failures)}
    finally:
        mirror.stop()
        names = list((await es.indices.get(index=f"{alias}-*")).body)
        if names:
            await es.indices.delete(index=names)
        await es.close()


class Migration:
    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        return asyncio.run(_run(events or SIZES[size]))

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return (f"## Mapping migration (INT -> TEXT, rebuild and alias swap)\n\n"
                f"`python -m bench migration --size full`: {r['rows']:,} row documents; the rebuild "
                f"(next generation created, filled by scroll + bulk, alias swapped, old generation dropped) "
                f"took **{r['rebuild_s']} s = {r['rebuild_docs_per_s']:,} documents/s** "
                f"(loading them through the mirror's bulk: {r['load_docs_per_s']:,} documents/s); "
                f"{r['searches_during']} searches during the rebuild, {r['search_failure_count']} failed.\n")

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Any]:
        return []
