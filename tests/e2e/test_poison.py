"""Poison input goes to the dead-letter topic with its reason and origin; the stream goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.e2e.harness import Pipeline, pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TABLES = [{"name": "public.orders", "profile": "index_only"}]


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql("INSERT INTO orders VALUES (1, 'acme', 19.99, 'new', now())")
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("orders")) == 1)
        yield p


async def _produce(topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
    await prod.start()
    try:
        for k, v in records:
            await prod.send_and_wait(topic, value=v, key=k, partition=0)
    finally:
        await prod.stop()


async def _read_all(topic: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    c = AIOKafkaConsumer(topic, bootstrap_servers="127.0.0.1:9092", auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    out: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(out) < n and loop.time() < end:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [json.loads(r.value) for r in recs]
    finally:
        await c.stop()
    return out


def test_poison_records_go_to_the_dlq_and_the_stream_continues(pipe: Pipeline) -> None:
    p = pipe
    key = json.dumps({"schema": {"type": "struct", "fields": [{"field": "id", "type": "int32"}]},
                      "payload": {"id": 99}}).encode()
    poison: list[tuple[bytes | None, bytes | None]] = [
        (key, b"{not json"),
        (key, json.dumps({"before": None, "after": {"id": 99}, "op": "c", "source": {"lsn": 1}}).encode()),
        (key, json.dumps({"schema": {}, "payload": {"op": "x", "source": {"lsn": 1}}}).encode()),
        (key, b"\xff\xfe invalid utf-8"),
    ]
    asyncio.run(_produce(p.topic("orders"), poison))
    # The stream goes on: a real change after the poison arrives.
    p.sql("INSERT INTO orders VALUES (2, 'globex', 5.00, 'new', now())")
    p.wait("row after poison", lambda: set(p.docs("orders")) == {"1", "2"})
    dlq = asyncio.run(_read_all(f"e2e-{p.tag}-dlq", 4))
    reasons = [d["reason"] for d in dlq]
    assert len(dlq) == 4, reasons
    assert "not valid JSON" in reasons[0]
    assert "has no schema" in reasons[1]
    assert "unknown op 'x'" in reasons[2]
    assert "UTF-8" in reasons[3] or "JSON" in reasons[3]
    assert all(d["topic"] == p.topic("orders") and d["partition"] == 0 for d in dlq)
    assert [d["offset"] for d in dlq] == sorted(d["offset"] for d in dlq)
    assert dlq[3]["value"].startswith("base64:")  # the raw bytes are kept, not lost
    stats = {t["name"].split(".")[-1]: t["stats"] for t in p.api("/api/tables")["tables"]}
    assert stats["orders"]["dlq"] == 4


def test_numeric_65_30_stays_exact_end_to_end(pipe: Pipeline) -> None:
    p = pipe
    p.sql("ALTER TABLE orders ADD COLUMN precise NUMERIC(65,30)")
    exact = "12345678901234567890123456789012345.123456789012345678901234567891"
    p.sql("INSERT INTO orders (id, customer, amount, precise) VALUES (3, 'x', 1, %s)", (exact,))
    p.wait("exact numeric", lambda: p.docs("orders").get("3", {}).get("precise") == exact)


def test_a_5_mb_text_value_is_mirrored_whole_and_the_stream_goes_on(pipe: Pipeline) -> None:
    # Kafka, Connect's producer and the worker's fetches allow 16 MB records (cdcstream/stack,
    # cdcstream/ops/debezium.py, cdcstream/runtime/app.py); the default 1 MB would stall the connector.
    p = pipe
    big = ("0123456789abcdef" * 65_536 * 5)[: 5 * 1024 * 1024]
    p.sql("INSERT INTO orders VALUES (4, %s, 1, 'new', now())", (big,))
    p.sql("INSERT INTO orders VALUES (5, 'after the big one', 2, 'new', now())")
    p.wait("the row after the 5 MB row", lambda: p.es("GET", f"/{p.alias('orders')}/_doc/5")["found"], timeout=180,
           retry_on=(*CONNECTION_ERRORS, KeyError))
    doc = p.es("GET", f"/{p.alias('orders')}/_doc/4")
    assert doc["found"] and len(doc["_source"]["customer"]) == len(big) and doc["_source"]["customer"] == big
    stats = {t["name"].split(".")[-1]: t["stats"] for t in p.api("/api/tables")["tables"]}
    assert stats["orders"].get("dlq", 0) == 0
