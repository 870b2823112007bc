"""Reading and replaying the dead-letter topic ``<app_id>-dlq``.

Reading uses a short-lived aiokafka consumer without a group: it assigns the single DLQ
partition, reads a window of offsets and closes, so listing the DLQ never commits an
offset, never joins a group and never disturbs the workers.

Replay re-sends a dead-lettered record's original key and value bytes to its original
topic and partition. Chosen over re-processing it inside the web handler because the
worker's data path then handles it exactly like any other event: decoding, routing by
the *live* profile, the per-row staleness check and the row-state write (which must
happen inside stream iteration on the partition that owns the row). Replays are safe to
repeat: a record older than what the row already has is skipped as stale, and
Elasticsearch writes carry external versions. The costs: other consumers of the
Debezium topic see the record once more (Debezium delivery is at-least-once already), and
an ``archive``-profile table archives it again under its new offset. Only topics this
config captures are written; a record whose reason is permanent (e.g. its table is not
in the config) lands in the DLQ again.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

REPLAY_HEADER = "cdcstream-replayed-from-dlq-offset"
MAX_LIMIT = 1000
PREVIEW_CHARS = 2000


def raw_bytes(v: str | None) -> bytes | None:
    """Invert ``agents.changes._text``: text as UTF-8, ``base64:`` prefixed as binary."""
    if v is None:
        return None
    if v.startswith("base64:"):
        return base64.b64decode(v.removeprefix("base64:"), validate=True)
    return v.encode()


async def read(bootstrap: str, topic: str, *, limit: int = 100, from_offset: int | None = None,
               offsets: set[int] | None = None, timeout: float = 10.0) -> tuple[list[dict[str, Any]], int, int]:
    """Records of the DLQ (oldest first): the last ``limit`` ones, or ``limit`` from ``from_offset``,
    or exactly ``offsets``. Returns (records, first offset, end offset)."""
    import json

    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=int(timeout * 1000))
    await consumer.start()
    try:
        if not await _exists(consumer, topic):
            return [], 0, 0
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if offsets is not None:
            start = max(first, min(offsets, default=end))
            stop = min(end, max(offsets, default=first - 1) + 1)
        elif from_offset is not None:
            start, stop = max(first, from_offset), min(end, max(first, from_offset) + limit)
        else:
            start, stop = max(first, end - limit), end
        out: list[dict[str, Any]] = []
        if start >= stop:
            return out, first, end
        consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + timeout
        pos = start
        while pos < stop and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
            for msg in batch.get(tp, []):
                pos = msg.offset + 1
                if msg.offset >= stop:
                    break
                if offsets is not None and msg.offset not in offsets:
                    continue
                try:
                    value = json.loads(msg.value) if msg.value else {}
                except ValueError:
                    value = {"reason": "unreadable DLQ record", "raw": msg.value[:200].decode(errors="replace")}
                out.append({"dlq_offset": msg.offset, "dlq_timestamp_ms": msg.timestamp, **value})
        return out, first, end
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, page_size: int = MAX_LIMIT) -> AsyncIterator[list[dict[str, Any]]]:
    """Every record of the DLQ, oldest first, a page at a time, up to the end offset seen at the
    start: records dead-lettered again while the caller works through the pages (a replay) are
    not read again. (Fix: "replay all" read only the oldest 1,000 records and said nothing.)"""
    cursor, stop = 0, None
    while stop is None or cursor < stop:
        records, first, end = await read(bootstrap, topic, limit=page_size, from_offset=cursor)
        stop = end if stop is None else stop
        records = [r for r in records if r["dlq_offset"] < stop]
        if not records:
            return
        yield records
        cursor = max(first, records[-1]["dlq_offset"] + 1)


async def _exists(consumer: Any, topic: str) -> bool:
    return topic in await consumer.topics()


def public(record: dict[str, Any], with_values: bool) -> dict[str, Any]:
    """A DLQ record as the API shows it: values previewed unless asked for in full."""
    out = {k: v for k, v in record.items() if k not in ("key", "value")}
    out["key"] = record.get("key")
    v = record.get("value")
    out["value_chars"] = len(v) if isinstance(v, str) else 0
    if with_values or not isinstance(v, str) or len(v) <= PREVIEW_CHARS:
        out["value"] = v
    else:
        out["value"] = v[:PREVIEW_CHARS]
        out["value_truncated"] = True
    return out
