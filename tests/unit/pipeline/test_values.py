"""Values that must never be refused (issue 17 item 2): decoding and documents.

The record shapes below are copied from the real stack (Debezium 3.6.1 + PostgreSQL 15,
JsonConverter with schemas): an update of another column of a row whose jsonb, json, bytea,
text[], int[] and hstore values are TOASTed (REPLICA IDENTITY DEFAULT); a point, NaN and
+-Infinity doubles; NUMERIC NaN/+-Infinity in decimal.handling.mode=string; a 600-character key.
"""

from __future__ import annotations

import base64
import json
import math
from decimal import Decimal
from typing import Any

from cdcstream.core.config import Config
from cdcstream.core.events import KafkaOrigin, bounded_id, doc_id, is_hashed_id, key_text, plain
from cdcstream.core.route import Router, RowState, keep_toast
from cdcstream.ops.verify import canonical
from cdcstream.pipeline.decode import UNAVAILABLE, decode
from cdcstream.pipeline.processor import BatchProcessor, chunk_id
from cdcstream.sinks.documents import field_mapping, row_document, row_mapping
from tests.support.memory import MemoryMirror

U = UNAVAILABLE
HARD_FIELDS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "int32", "optional": True, "field": "n"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1, "field": "j"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1, "field": "js"},
    {"type": "bytes", "optional": True, "field": "b"},
    {"type": "array", "items": {"type": "string", "optional": True}, "optional": True, "field": "arr"},
    {"type": "array", "items": {"type": "int32", "optional": True}, "optional": True, "field": "iarr"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1, "field": "h"},
]
# As the real update arrived: every TOASTed column carries the placeholder in its own form.
PLACEHOLDERS = {"j": U, "js": U, "b": base64.b64encode(U.encode()).decode(), "arr": [U], "iarr": list(U.encode()),
                "h": json.dumps({U: U}, separators=(",", ":"))}
VALS_FIELDS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "struct", "fields": [{"type": "double", "optional": False, "field": "x"},
                                  {"type": "double", "optional": False, "field": "y"},
                                  {"type": "bytes", "optional": True, "field": "wkb"},
                                  {"type": "int32", "optional": True, "field": "srid"}],
     "optional": True, "name": "io.debezium.data.geometry.Point", "version": 1, "field": "p"},
    {"type": "double", "optional": True, "field": "f"},
    {"type": "float", "optional": True, "field": "r"},
    {"type": "string", "optional": True, "parameters": {"__debezium.source.column.type": "NUMERIC",
                                                        "__debezium.source.column.length": "0"}, "field": "num"},
    {"type": "string", "optional": True, "parameters": {"__debezium.source.column.type": "NUMERIC",
                                                        "__debezium.source.column.scale": "2"}, "field": "num2"},
    {"type": "array", "items": {"type": "double", "optional": True}, "optional": True, "field": "farr"},
]
CONFIG = Config.model_validate({"connectors": [{
    "name": "pg", "connection": {"kind": "postgres", "host": "h", "database": "db", "user": "u", "password": "env:X"},
    "tables": [{"name": "public.hard"}, {"name": "public.vals"}, {"name": "public.longkey"}],
}]})


def record(table: str, fields: list[dict[str, Any]], key: dict[str, Any], after: dict[str, Any], op: str = "u",
           lsn: int = 100) -> tuple[bytes, bytes]:
    kfields = [f for f in fields if f["field"] in key]
    k = {"schema": {"type": "struct", "fields": kfields, "optional": False}, "payload": key}
    v = {"schema": {"type": "struct", "fields": [
            {"type": "struct", "fields": fields, "optional": True, "field": "before"},
            {"type": "struct", "fields": fields, "optional": True, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"}], "optional": False},
         "payload": {"before": None, "after": after, "op": op,
                     "source": {"connector": "postgresql", "db": "db", "schema": "public", "table": table,
                                "name": "pg", "lsn": lsn, "snapshot": "false", "ts_ms": 1}, "ts_ms": 2}}
    return json.dumps(k).encode(), json.dumps(v).encode()


def dec(table: str, fields: list[dict[str, Any]], key: dict[str, Any], after: dict[str, Any], op: str = "u",
        lsn: int = 100) -> Any:
    k, v = record(table, fields, key, after, op, lsn)
    return decode(k, v, origin=KafkaOrigin(f"pg.public.{table}", 0, lsn), tables=CONFIG.topic_map())


def big(seed: str) -> str:
    import hashlib

    return "".join(hashlib.md5(f"{seed}{i}".encode()).hexdigest() for i in range(80))


FULL_ROW = {"id": 1, "n": 0, "j": json.dumps({"a": big("j")}), "js": json.dumps({"b": big("js")}),
            "b": base64.b64encode(big("b").encode()).decode(), "arr": [big("arr"), "x"], "iarr": list(range(600)),
            "h": json.dumps({"k": big("h")})}


# --- decoding ------------------------------------------------------------------------------
def test_toast_placeholders_of_every_type_are_unavailable_not_values() -> None:
    ev = dec("hard", HARD_FIELDS, {"id": 1}, {"id": 1, "n": 1, **PLACEHOLDERS})
    assert ev.unavailable == {"j", "js", "b", "arr", "iarr", "h"}
    assert ev.after == {"id": 1, "n": 1}  # no placeholder survives, and no json parse error


def test_a_real_value_is_never_taken_for_the_placeholder() -> None:
    after = {"id": 1, "n": 1, "j": json.dumps([U, 1]), "js": json.dumps({U: "x"}), "b": None, "arr": [U, U],
             "iarr": [95, 95], "h": json.dumps({"k": U})}
    ev = dec("hard", HARD_FIELDS, {"id": 1}, after)
    assert ev.unavailable == frozenset()
    assert ev.after["j"] == [U, 1] and ev.after["arr"] == [U, U] and ev.after["h"] == {"k": U}


def test_nan_and_infinities_decode_as_floats_and_decimals() -> None:
    ev = dec("vals", VALS_FIELDS, {"id": 1}, {"id": 1, "p": None, "f": "NaN", "r": "-Infinity", "num": "NAN",
                                             "num2": "12.30", "farr": [1.5, "NaN", "Infinity"]}, op="r")
    a = ev.after
    assert math.isnan(a["f"]) and a["r"] == -math.inf
    assert a["num"].is_nan() and a["num2"] == Decimal("12.30") and str(a["num2"]) == "12.30"
    assert a["farr"][0] == 1.5 and math.isnan(a["farr"][1]) and a["farr"][2] == math.inf
    ev = dec("vals", VALS_FIELDS, {"id": 2}, {"id": 2, "p": None, "f": "Infinity", "r": 1.0,
                                             "num": "POSITIVE_INFINITY", "num2": None, "farr": None}, op="r")
    assert ev.after["num"] == Decimal("Infinity")
    ev = dec("vals", VALS_FIELDS, {"id": 3}, {"id": 3, "p": None, "f": 1.0, "r": 1.0,
                                             "num": "NEGATIVE_INFINITY", "num2": None, "farr": None}, op="r")
    assert ev.after["num"] == Decimal("-Infinity")


# --- documents and mappings ------------------------------------------------------------------
def test_documents_hold_the_documented_forms() -> None:
    ev = dec("vals", VALS_FIELDS, {"id": 1},
             {"id": 1, "p": {"x": 3.0, "y": 120.0, "wkb": "AQEAAAAAAAAAAAAIQAAAAAAAAF5A", "srid": None},
              "f": "NaN", "r": "-Infinity", "num": "NAN", "num2": "12.30", "farr": [1.5, "NaN", "Infinity"]}, op="r")
    doc = row_document(ev, ev.after)
    assert doc["p"] == {"x": 3.0, "y": 120.0}  # planar: y = 120 is a valid point, not a latitude
    assert doc["f"] == "NaN" and doc["r"] == "-Infinity" and doc["num"] == "NaN" and doc["num2"] == "12.30"
    assert doc["farr"] == [1.5, "NaN", "Infinity"]
    json.dumps(doc, allow_nan=False)  # valid JSON: Elasticsearch gets no bare NaN
    m = row_mapping(ev.row_schema)["properties"]
    assert m["p"] == {"type": "object", "properties": {"x": {"type": "double"}, "y": {"type": "double"}}}
    # String-mode decimals keep the exact-decimal mapping (the same as precise mode's).
    assert m["num"] == m["num2"] == field_mapping({"name": "org.apache.kafka.connect.data.Decimal",
                                                  "type": "bytes"})
    assert m["num"]["fields"]["num"]["ignore_malformed"] is True  # "NaN" is kept in the keyword only


def test_plain_is_idempotent_and_json_safe() -> None:
    v = {"a": [b"\x00\xff", Decimal("NaN"), float("inf"), -math.inf, math.nan, Decimal("1.50")]}
    once = plain(v)
    assert once == {"a": ["AP8=", "NaN", "Infinity", "-Infinity", "NaN", "1.50"]}
    assert plain(once) == once


# --- keys ---------------------------------------------------------------------------------------
def test_long_keys_get_a_stable_hashed_id_and_the_document_keeps_the_key() -> None:
    long = "k" * 600
    did = doc_id({"k": long})
    assert is_hashed_id(did) and len(did.encode()) <= 512 and did == doc_id({"k": long})
    assert doc_id({"k": "k" * 512}) == "k" * 512  # up to the limit: as is
    assert is_hashed_id(doc_id({"k": "é" * 257}))  # bytes count, not characters
    assert doc_id({"a": long, "b": 1}) != doc_id({"a": long, "b": 2})
    fields = [{"type": "string", "optional": False, "field": "k"}, {"type": "int32", "optional": True, "field": "v"}]
    ev = dec("longkey", fields, {"k": long}, {"k": long, "v": 1}, op="r")
    assert ev.doc_id == did
    assert row_document(ev, ev.after)["_cdc"]["key"] == long == key_text(ev.key)
    # Chunk ids built on a key near the limit stay within it too, and stay distinct.
    near = "x" * 500
    ids = {chunk_id(near, "body", n) for n in range(3)}
    assert len(ids) == 3 and all(len(i.encode()) <= 512 for i in ids)
    assert chunk_id("1", "body", 0) == "1#body#0"  # short ids unchanged
    assert bounded_id("a") == "a"
    assert is_hashed_id(doc_id({"k": ""})) and doc_id({"k": ""}) == doc_id({"k": None})  # ES refuses an empty _id


# --- row state and the mirror fill -------------------------------------------------------------
class Harness:
    def __init__(self) -> None:
        self.es = MemoryMirror()
        self.proc = BatchProcessor(Router(CONFIG), self.es, None, None, None)  # type: ignore[arg-type]
        self.rows: dict[str, Any] = {}

    async def run(self, *evs: Any) -> Any:
        out = await self.proc.process(list(evs), lambda e: Router(CONFIG).default_profile(e.table),
                                      lambda rk: RowState.load(self.rows.get(rk)), now_ms=0)
        for rk, (st, _) in out.states.items():
            # As the agent stores it: JSON with default=str (agents/changes.py).
            self.rows[rk] = json.loads(json.dumps(st.dump(), default=str))
        return out


ALIAS = "pg-public-hard"


def _update(lsn: int) -> Any:
    return dec("hard", HARD_FIELDS, {"id": 1}, {"id": 1, "n": lsn, **PLACEHOLDERS}, lsn=lsn)


async def test_unchanged_toast_values_of_every_type_come_from_the_row_state() -> None:
    h = Harness()
    await h.run(dec("hard", HARD_FIELDS, {"id": 1}, FULL_ROW, op="c", lsn=10))
    first = h.es.live(ALIAS)["1"]
    assert set(h.rows["pg/db/public/hard|1"]["x"]) == {"j", "js", "b", "arr", "iarr", "h"}
    out = await h.run(_update(20))
    doc = h.es.live(ALIAS)["1"]
    assert out.stats[("pg/db/public/hard", 0)]["toast_filled"] == 6 and not out.dlq
    assert doc["n"] == 20 and {k: doc[k] for k in PLACEHOLDERS} == {k: first[k] for k in PLACEHOLDERS}
    assert doc["b"] == FULL_ROW["b"]  # base64, as the binary field wants: never "b'...'"
    out = await h.run(_update(30))  # and again, from the state the first update wrote
    assert h.es.live(ALIAS)["1"]["b"] == FULL_ROW["b"] and not out.dlq


async def test_unchanged_toast_values_come_from_the_mirror_without_row_state() -> None:
    h = Harness()
    await h.run(dec("hard", HARD_FIELDS, {"id": 1}, FULL_ROW, op="c", lsn=10))
    first = h.es.live(ALIAS)["1"]
    h.rows.clear()  # a lost row state (or one written before the fix)
    out = await h.run(_update(20))
    doc = h.es.live(ALIAS)["1"]
    assert out.stats[("pg/db/public/hard", 0)]["toast_from_mirror"] == 6 and not out.dlq
    assert {k: doc[k] for k in PLACEHOLDERS} == {k: first[k] for k in PLACEHOLDERS}


def test_old_row_state_with_python_bytes_text_is_not_used() -> None:
    st = RowState.load({"v": 1, "x": {"b": "b'\\x00abc'", "t": "text"}})
    assert st is not None and st.toast == {"t": "text"}
    assert keep_toast({"b": b"x" * 2000})["b"] == base64.b64encode(b"x" * 2000).decode()


# --- verify's canonical forms --------------------------------------------------------------------
def test_verify_compares_the_documented_forms_with_the_source() -> None:
    assert canonical("float8", float("nan")) == canonical("float8", "NaN")
    assert canonical("float8", float("-inf")) == canonical("float8", "-Infinity")
    assert canonical("decimal", Decimal("NaN")) == canonical("decimal", "NaN")
    assert canonical("decimal", Decimal("-Infinity")) == canonical("decimal", "-Infinity")
    assert canonical("point", "(3,120)") == canonical("point", {"x": 3.0, "y": 120.0})
    assert canonical("point", "(-200.5,-95)") == canonical("point", {"lat": -95.0, "lon": -200.5})
    assert canonical("json", [1.5, float("nan"), float("inf")]) == canonical("json", [1.5, "NaN", "Infinity"])
    assert canonical("hstore", {"k": "v", "n": None}) == canonical("hstore", '{"n": null, "k": "v"}')
