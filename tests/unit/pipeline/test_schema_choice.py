"""The mapping a batch asks of the mirror comes from its newest schema per index."""

from __future__ import annotations

import copy

from tests.unit.pipeline.test_branch import ALIAS, Harness, events


async def test_an_older_schema_later_in_the_batch_does_not_hide_a_type_change() -> None:
    # Regression (tests/e2e/test_migration.py): a TEXT -> JSONB change went unnoticed when an
    # event of another partition, written before the ALTER, came after it in the batch; the
    # mapping was made from that older schema and the new-typed document was dead-lettered.
    h = Harness()
    older, newer = events("02_insert_customer_00", "04_update_customer_00")
    assert older is not None and newer is not None and older.row_schema is not None
    assert newer.position.version > older.position.version
    newer.row_schema = copy.deepcopy(older.row_schema)
    changed = next(f for f in newer.row_schema["fields"] if f["field"] == "email")
    changed["name"] = "io.debezium.data.Json"
    await h.run([newer, older])
    assert h.es.mappings[ALIAS]["properties"]["email"] == {"type": "object", "enabled": False}
