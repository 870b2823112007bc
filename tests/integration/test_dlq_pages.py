"""Reading the whole DLQ on the real broker, page after page (issue 16: "replay all" read only
the oldest 1,000 records without saying so)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cdcstream.runtime.dlq import read_all
from tests.support import BOOTSTRAP, delete_topics, topics_named

pytestmark = pytest.mark.integration


async def _fill(topic: str, n: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    prod = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20)
    await prod.start()
    try:
        futs = [await prod.send(topic, json.dumps({"reason": f"r{i}", "topic": "t", "partition": 0,
                                                   "offset": i}).encode(), partition=0) for i in range(n)]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


async def _pages(topic: str, page_size: int, more: int = 0) -> list[list[int]]:
    out = []
    async for page in read_all(BOOTSTRAP, topic, page_size=page_size):
        out.append([r["dlq_offset"] for r in page])
        if more and len(out) == 1:
            await _append(topic, more)  # records arriving meanwhile (a replay dead-lettering again)
    return out


async def _append(topic: str, n: int) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await prod.start()
    try:
        for _ in range(n):
            await prod.send_and_wait(topic, b'{"reason": "again"}', partition=0)
    finally:
        await prod.stop()


def test_every_record_once_in_pages_up_to_the_end_seen_at_the_start(require: Callable[[str], dict[str, Any]]) -> None:
    require("kafka")
    topic = f"it-dlq-pages-{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_fill(topic, 2_345))
        pages = asyncio.run(_pages(topic, page_size=1_000, more=7))
        assert [len(p) for p in pages] == [1_000, 1_000, 345]
        flat = [o for p in pages for o in p]
        assert flat == list(range(2_345))  # the 7 records added during the read are not included
    finally:
        delete_topics(topics_named(topic))
