"""Connector generations: a connector deleted and created again under the same name starts its
tables' stats afresh.

The worker counts per ``<table key>|<partition>`` in the ``stats`` GlobalTable, and every
counter only grows (the worker merges what it wrote with what the table shows by maximum, so
a reset written from outside would be undone). A re-created connector has the same table keys,
so its snapshot would add to the first life's (63 snapshot rows read for a 9-row table).

So each life is a *generation*, recorded by ``connectors apply`` when it creates the connector:
one more key in the same table, ``<connector>|generation``, holding the generation number, the
creation time and the *baseline*: every table's counters summed over partitions at that moment.
The status views show counters minus the baseline (``current_life``), and timestamps only when
they are newer than the creation. The record goes to the table's changelog topic, which every
worker reads (it is a GlobalTable): running workers see it at once, a restarted one on recovery.
Nothing is written when the changelog does not exist yet (no worker of this app id ran: there is
nothing to separate).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from cdcstream.core.config import ConnectorSpec

# Fields that are times, not counters: never summed or subtracted.
TIMES = ("last_event_ms", "updated_ms", "snapshot_started_ms", "snapshot_finished_ms")


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-stats-changelog"


def generation_key(connector: str) -> str:
    # Table keys are connector/database/schema/table: a key without "/" never collides with them.
    return f"{connector}|generation"


@dataclass
class Generation:
    connector: str
    number: int
    created_ms: int
    baseline: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        # No top-level counter: the status views sum every int of every key per table.
        return {"generation": {"number": self.number, "created_ms": self.created_ms}, "baseline": self.baseline}


def totals_by_table(stats: dict[str, Any], table_keys: set[str]) -> dict[str, dict[str, int]]:
    """Counters of ``table_keys`` summed over partitions (times left out)."""
    out: dict[str, dict[str, int]] = {}
    for key, v in stats.items():
        tk = key.rsplit("|", 1)[0]
        if tk not in table_keys or not isinstance(v, dict):
            continue
        t = out.setdefault(tk, {})
        for k, n in v.items():
            if k not in TIMES and isinstance(n, int) and not isinstance(n, bool):
                t[k] = t.get(k, 0) + n
    return out


def current_life(stats: dict[str, Any], record: dict[str, Any] | None, table_key: str) -> dict[str, Any]:
    """One table's totals counted from its connector's newest generation (``record``, the value
    under ``generation_key``); unchanged without one."""
    if not record or not isinstance(record.get("generation"), dict):
        return stats
    created = int(record["generation"].get("created_ms", 0))
    base = (record.get("baseline") or {}).get(table_key) or {}
    out: dict[str, Any] = {}
    for k, v in stats.items():
        if k in TIMES:
            if int(v or 0) > created:
                out[k] = v
        elif isinstance(v, int) and not isinstance(v, bool):
            out[k] = max(0, v - int(base.get(k, 0)))
        else:
            out[k] = v
    # The worker keeps a table's first snapshot start forever (the earliest over partitions): a
    # later life's snapshot began when its connector was created.
    if "snapshot_started_ms" not in out and any(out.get(k) for k in ("snapshot_rows_initial", "op_r")):
        out["snapshot_started_ms"] = created
    out["generation"] = int(record["generation"].get("number", 1))
    return out


async def _read(bootstrap: str, topic: str) -> dict[str, Any] | None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return None
        parts = [p["partition"] for d in await admin.describe_topics([topic]) for p in d["partitions"]]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=15000)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, Any] = {}
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.key is None:
                        continue
                    key = json.loads(m.key)
                    if m.value is None:
                        out.pop(key, None)
                    else:
                        out[key] = json.loads(m.value)
                    if m.offset + 1 >= ends[tp]:
                        pending.discard(tp)
        if pending:
            raise RuntimeError(f"could not read {topic} to its end within 60 s")
        return out
    finally:
        await consumer.stop()


def read_stats(bootstrap: str, app_id: str) -> dict[str, Any] | None:
    """The ``stats`` table as its changelog holds it (key -> value), or None without a changelog."""
    import asyncio

    return asyncio.run(_read(bootstrap, changelog_topic(app_id)))


def record_generation(bootstrap: str, app_id: str, spec: ConnectorSpec,
                      now_ms: int | None = None) -> Generation | None:
    """Start a new generation of ``spec``'s connector in the stats of worker app ``app_id``."""
    import asyncio

    async def go() -> Generation | None:
        from aiokafka import AIOKafkaProducer

        topic = changelog_topic(app_id)
        stats = await _read(bootstrap, topic)
        if stats is None:
            return None
        prev = stats.get(generation_key(spec.name)) or {}
        keys = {spec.table_id(t).key for t in spec.tables}
        baseline = totals_by_table(stats, keys)
        # A first life created before any worker ran has no record: it was generation 1.
        number = int((prev.get("generation") or {}).get("number", 1 if baseline else 0)) + 1
        gen = Generation(spec.name, number, now_ms or int(time.time() * 1000), baseline)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            # The GlobalTable's own serialisation: JSON key and value; one partition.
            await producer.send_and_wait(topic, json.dumps(gen.as_record()).encode(),
                                         key=json.dumps(generation_key(spec.name)).encode(), partition=0)
        finally:
            await producer.stop()
        return gen

    return asyncio.run(go())
