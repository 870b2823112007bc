"""The branch logic on real fixture events, with in-memory sinks (the integration proof is tests/e2e)."""

from __future__ import annotations

import json
from typing import Any

from cdcstream.core.config import Config, ProcessingProfile
from cdcstream.core.events import ChangeEvent, KafkaOrigin
from cdcstream.core.route import Router, RowState
from cdcstream.pipeline.decode import decode
from cdcstream.pipeline.processor import BatchProcessor
from tests.fixturedata import raw
from tests.support.memory import MemoryMirror, MemoryStore

CONFIG = Config.model_validate({"connectors": [{
    "name": "dbserver1", "topic_prefix": "dbserver1",
    "connection": {"kind": "postgres", "host": "h", "database": "inventory", "user": "u", "password": "env:X"},
    "tables": [{"name": "public.customers", "profile": "index_only"}, {"name": "public.orders", "profile": "archive"}],
}]})


def events(*names: str) -> list[ChangeEvent | None]:
    out: list[ChangeEvent | None] = []
    for off, n in enumerate(names):
        k, v, topic = raw("postgres", n)
        out.append(decode(k, v, origin=KafkaOrigin(topic, 0, off), tables=CONFIG.topic_map()))
    return out


class Harness:
    def __init__(self) -> None:
        self.es = MemoryMirror()
        self.store = MemoryStore()
        self.router = Router(CONFIG)
        self.proc = BatchProcessor(self.router, self.es, self.store, None, None)  # type: ignore[arg-type]
        self.rows: dict[str, dict[str, Any]] = {}

    async def run(self, evs: list[ChangeEvent | None]) -> Any:
        out = await self.proc.process(
            evs, lambda e: self.router.default_profile(e.table),
            lambda rk: RowState.load(self.rows.get(rk)), now_ms=0)
        for rk, (st, _) in out.states.items():
            self.rows[rk] = st.dump()
        return out


ALIAS = "dbserver1-public-customers"


async def test_every_op_lands_with_versions() -> None:
    h = Harness()
    await h.run(events("01_snapshot_00", "01_snapshot_01", "01_snapshot_02", "02_insert_customer_00"))
    assert set(h.es.live(ALIAS)) == {"1", "2", "3", "1001"}
    out = await h.run(events("04_update_customer_00"))
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["op_u"] == 1


async def test_pk_change_moves_the_document() -> None:
    h = Harness()
    await h.run(events("01_snapshot_00", "01_snapshot_01", "01_snapshot_02"))
    await h.run(events("05_update_pk_customer_00", "05_update_pk_customer_01", "05_update_pk_customer_02"))
    assert set(h.es.live(ALIAS)) == {"1", "2", "1003"}
    assert h.rows["dbserver1/inventory/public/customers|3"].get("d") == 0  # delete marker kept


async def test_replay_is_stale_and_writes_nothing() -> None:
    h = Harness()
    batch = events("01_snapshot_00", "02_insert_customer_00")
    await h.run(batch)
    out = await h.run(events("01_snapshot_00", "02_insert_customer_00"))
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["stale"] == 2
    assert not out.states


async def test_replayed_delete_is_stale_by_its_marker() -> None:
    # A delete marker is kept (Elasticsearch forgets tombstones after 60 s): an older event
    # arriving later is stale without asking the mirror.
    h = Harness()
    await h.run(events("01_snapshot_00", "01_snapshot_01", "01_snapshot_02"))
    pk = events("05_update_pk_customer_00", "05_update_pk_customer_01", "05_update_pk_customer_02")
    await h.run(pk)
    assert h.rows["dbserver1/inventory/public/customers|3"].get("d") == 0
    out = await h.run(events("05_update_pk_customer_00"))
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["stale"] == 1
    assert not out.states


async def test_toast_placeholder_filled_from_row_state() -> None:
    h = Harness()
    await h.run(events("07_insert_toasted_00"))
    out = await h.run(events("08_update_toast_default_identity_00"))
    doc = h.es.live(ALIAS)["2000"]
    assert len(doc["notes"]) == 8000 and doc["name"] == "Toast Tester v2"
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["toast_filled"] == 1
    assert "__debezium_unavailable_value" not in json.dumps(doc)


async def test_toast_unknown_is_omitted_and_counted() -> None:
    h = Harness()
    out = await h.run(events("08_update_toast_default_identity_00"))
    assert "notes" not in h.es.live(ALIAS)["2000"]
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["toast_missing"] == 1


async def test_archive_holds_events_until_their_object_is_cut() -> None:
    h = Harness()
    h.proc.buffer.max_records = 2
    out = await h.run(events("01_snapshot_03", "01_snapshot_04", "01_snapshot_05"))
    assert out.held == [0, 1, 2]  # all held: the agent acks them when their object is stored
    assert [(o.first_offset, o.last_offset) for o in out.flushed] == [(0, 1)]
    assert len(h.store.objects) == 1 and not h.es.docs  # archive tables are never indexed


async def test_snapshot_markers_are_tracked() -> None:
    h = Harness()
    out = await h.run(events("01_snapshot_00", "01_snapshot_01", "01_snapshot_02"))
    snap = out.snapshot[("dbserver1/inventory/public/customers", 0)]
    assert "started_ms" in snap
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["snapshot_rows_initial"] == 3


async def test_profile_decides_the_branch() -> None:
    h = Harness()
    evs = events("01_snapshot_00")
    out = await h.proc.process(evs, lambda e: ProcessingProfile.ARCHIVE, lambda rk: None, now_ms=0)
    assert out.held == [0] and not h.es.docs


async def test_changes_to_one_row_in_a_batch_write_the_newest_only() -> None:
    # Coalescing (issue 19): the insert and the TOAST-placeholder update of row 2000 in one
    # batch are one bulk item; the update's placeholder is still filled from the insert.
    h = Harness()
    out = await h.run(events("07_insert_toasted_00", "08_update_toast_default_identity_00"))
    doc = h.es.live(ALIAS)["2000"]
    assert len(doc["notes"]) == 8000 and doc["name"] == "Toast Tester v2"
    assert h.es.writes == [("index", ALIAS, "2000")]
    stats = out.stats[("dbserver1/inventory/public/customers", 0)]
    assert stats["coalesced"] == 1 and stats["index_ops"] == 1 and stats["toast_filled"] == 1
    assert h.rows["dbserver1/inventory/public/customers|2000"]["v"] == events("08_update_toast_default_identity_00")[
        0].position.version  # type: ignore[union-attr]


async def test_pk_change_in_one_batch_moves_the_document() -> None:
    h = Harness()
    await h.run(events("01_snapshot_00", "01_snapshot_01", "01_snapshot_02",
                       "05_update_pk_customer_00", "05_update_pk_customer_01", "05_update_pk_customer_02"))
    assert set(h.es.live(ALIAS)) == {"1", "2", "1003"}
    # Row 3's snapshot insert is superseded by its delete: one bulk item (the delete) for it.
    assert [w for w in h.es.writes if w[2] == "3"] == [("delete", ALIAS, "3")]


async def test_coalescing_keeps_a_newer_change_than_a_late_stale_one() -> None:
    # The newest *applied* change is written: a replayed older insert later in the batch is
    # stale and does not supersede the update before it.
    h = Harness()
    await h.run(events("02_insert_customer_00"))
    h.es.writes.clear()
    out = await h.run(events("04_update_customer_00", "02_insert_customer_00"))
    stats = out.stats[("dbserver1/inventory/public/customers", 0)]
    assert stats["stale"] == 1 and stats.get("coalesced", 0) == 0
    assert h.es.writes == [("index", ALIAS, "1001")]
    assert h.es.live(ALIAS)["1001"]["email"] == "anne@example.org"


async def test_coalesced_row_whose_newest_change_is_refused_keeps_its_document_from_before_the_batch() -> None:
    # docs/architecture.md, "One write per row and batch": Elasticsearch refuses (HTTP 400) the
    # newest change of a row; it is dead-lettered, its superseded predecessor is not written, and
    # the row state stays as before the batch, so a fixed replay of the refused change applies.
    from cdcstream.sinks.base import BulkResult, IndexOp

    class Refusing(MemoryMirror):
        async def apply(self, ops: list[IndexOp]) -> BulkResult:
            refused = [op for op in ops
                       if op.action == "index" and op.doc and op.doc.get("email") == "anne@example.org"]
            res = await super().apply([op for op in ops if op not in refused])
            res.failed += [(op, "mapper_parsing_exception") for op in refused]
            return res

    h = Harness()
    h.es = h.proc.es = Refusing()
    h.es.docs[(ALIAS, "1001")] = (1, {"id": 1001, "email": "before the batch"})
    out = await h.run(events("02_insert_customer_00", "04_update_customer_00"))
    assert [i for i, _ in out.dlq] == [1] and "refused" in out.dlq[0][1]
    assert h.es.live(ALIAS)["1001"]["email"] == "before the batch"
    assert "dbserver1/inventory/public/customers|1001" not in h.rows
    assert out.stats[("dbserver1/inventory/public/customers", 0)]["coalesced"] == 1
