"""Values that must never be refused (issue 17 item 2), one table per hard value, through the
real connector: each ends with ``cdcstream verify --full`` clean and an empty DLQ.

Reproduced on the code before the fix (same stack): the unchanged TOASTed jsonb/json/hstore
went to the DLQ ("io.debezium.data.Json value is not JSON"), a point with |y| > 90 was
refused by its geo_point field, the 600-character key by the 512-byte _id limit, and a
NUMERIC NaN/Infinity arrived as null (Debezium's precise mode cannot carry it).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdcstream.core.events import doc_id
from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.e2e.test_durability import dlq_records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DDL = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TABLE public.v_jsonb (id INT PRIMARY KEY, n INT NOT NULL, j JSONB, js JSON);
CREATE TABLE public.v_bytea (id INT PRIMARY KEY, n INT NOT NULL, b BYTEA);
CREATE TABLE public.v_array (id INT PRIMARY KEY, n INT NOT NULL, arr TEXT[], iarr INT[]);
CREATE TABLE public.v_hstore (id INT PRIMARY KEY, n INT NOT NULL, h HSTORE);
CREATE TABLE public.v_point (id INT PRIMARY KEY, p POINT);
CREATE TABLE public.v_float (id INT PRIMARY KEY, f FLOAT8, r REAL, farr FLOAT8[]);
CREATE TABLE public.v_numeric (id INT PRIMARY KEY, num NUMERIC, num2 NUMERIC(10,2));
CREATE TABLE public.v_longkey (k TEXT PRIMARY KEY, v INT NOT NULL);
CREATE TABLE public.v_longkey_doc (k TEXT PRIMARY KEY, body TEXT NOT NULL);
"""
TOAST_TABLES = ["v_jsonb", "v_bytea", "v_array", "v_hstore"]
TABLES: list[dict[str, Any]] = [
    *({"name": f"public.{t}", "profile": "index_only"}
      for t in [*TOAST_TABLES, "v_point", "v_float", "v_numeric", "v_longkey"]),
    {"name": "public.v_longkey_doc", "profile": "full", "text_columns": ["body"]},
]
LONG_A, LONG_B = "a" * 600, "b" * 300 + "é" * 150  # 600 and 600 bytes: both over the 512-byte _id limit


def big(seed: str, n: int = 250) -> str:
    """About 8 kB of text that does not compress below PostgreSQL's 2 kB TOAST threshold."""
    return "".join(hashlib.md5(f"{seed}{i}".encode()).hexdigest() for i in range(n))


def verify(p: Pipeline, table: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", table, "--full", "--settle", "30", "--json"],
                       env=p.env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def toast_rows(p: Pipeline, first: int, last: int) -> None:
    for i in range(first, last + 1):
        p.sql("INSERT INTO v_jsonb VALUES (%s, 0, %s::jsonb, %s::json)",
              (i, json.dumps({"a": big(f"j{i}"), "n": [1, 2.5, None]}), json.dumps({"b": big(f"js{i}")})))
        p.sql("INSERT INTO v_bytea VALUES (%s, 0, %s)", (i, big(f"b{i}").encode() + bytes(range(256))))
        p.sql("INSERT INTO v_array VALUES (%s, 0, %s, %s)", (i, [big(f"a{i}"), "x", None], list(range(i, i + 2000))))
        p.sql("INSERT INTO v_hstore VALUES (%s, 0, hstore(ARRAY['k', 'nothing'], ARRAY[%s, NULL]))", (i, big(f"h{i}")))


def stats(p: Pipeline) -> dict[str, dict[str, int]]:
    return {t["name"].split(".")[-1]: t["stats"] for t in p.api("/api/tables")["tables"]}


def test_hard_values_are_mirrored_and_verify_clean(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql(DDL)
        toast_rows(p, 1, 3)  # snapshot rows
        p.sql("INSERT INTO v_point VALUES (1, point(3, 120)), (2, point(-200.5, -95)), (3, point(0, 0)), (4, NULL)")
        p.sql("INSERT INTO v_float VALUES (1, 'NaN', 'NaN', '{1.5,NaN}'), (2, 'Infinity', '-Infinity', NULL),"
              " (3, '-Infinity', 'Infinity', '{Infinity,-Infinity}'), (4, 1.5, 2.25, '{}')")
        p.sql("INSERT INTO v_numeric VALUES (1, 'NaN', 'NaN'), (2, 'Infinity', 12.30), (3, '-Infinity', -0.01),"
              " (4, 0.000000001, NULL)")
        p.sql("INSERT INTO v_longkey VALUES (%s, 1), (%s, 2), ('short', 3), ('', 4)", (LONG_A, LONG_B))
        p.sql("INSERT INTO v_longkey_doc VALUES (%s, %s)",
              (LONG_A, "A first paragraph about long keys.\n\nA second paragraph about hashed ids."))
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: all(len(p.docs(t)) == 3 for t in TOAST_TABLES)
               and len(p.docs("v_point")) == 4 and len(p.docs("v_float")) == 4 and len(p.docs("v_numeric")) == 4
               and len(p.docs("v_longkey")) == 4 and len(p.docs("v_longkey_doc")) == 1, timeout=240)

        # Streamed rows, then updates of another column: the TOASTed values arrive as placeholders.
        toast_rows(p, 4, 5)
        for t in TOAST_TABLES:
            p.sql(f"UPDATE {t} SET n = n + 1")
            p.sql(f"UPDATE {t} SET n = n + 1 WHERE id IN (1, 4)")
        p.sql("INSERT INTO v_point VALUES (5, point(1e300, -1e-300))")
        p.sql("UPDATE v_numeric SET num = 'NaN', num2 = 'NaN' WHERE id = 4")
        p.sql("UPDATE v_float SET f = 'NaN' WHERE id = 4")
        p.sql("UPDATE v_longkey SET v = 20 WHERE k = %s", (LONG_A,))
        p.sql("DELETE FROM v_longkey WHERE k = %s", (LONG_B,))
        p.sql("UPDATE v_longkey_doc SET body = body || '\n\nA third paragraph.' WHERE k = %s", (LONG_A,))

        def settled() -> bool:
            return (all(sorted(d["n"] for d in p.docs(t).values()) == [1, 1, 1, 2, 2] for t in TOAST_TABLES)
                    and len(p.docs("v_point")) == 5 and p.docs("v_numeric")["4"]["num"] == "NaN"
                    and p.docs("v_float")["4"]["f"] == "NaN" and len(p.docs("v_longkey")) == 3
                    and len(p.docs("v_longkey_doc", chunks=True)) >= 1)
        p.wait("updates", settled, timeout=240)

        # The documented forms (docs/profiles.md, "How values are mirrored").
        jd = p.docs("v_jsonb")["1"]
        assert jd["j"]["a"] == big("j1") and jd["js"] == {"b": big("js1")}
        assert p.docs("v_hstore")["1"]["h"] == {"k": big("h1"), "nothing": None}
        assert p.docs("v_array")["1"]["arr"] == [big("a1"), "x", None] and len(p.docs("v_array")["1"]["iarr"]) == 2000
        points = p.docs("v_point")
        assert points["1"]["p"] == {"x": 3.0, "y": 120.0} and points["2"]["p"] == {"x": -200.5, "y": -95.0}
        r = p.es("POST", f"/{p.alias('v_point')}/_search", {"query": {"range": {"p.y": {"gt": 90}}}})
        assert [h["_id"] for h in r["hits"]["hits"]] == ["1"]  # x and y are searchable doubles
        floats = p.docs("v_float")
        assert (floats["1"]["f"], floats["2"]["f"], floats["3"]["r"]) == ("NaN", "Infinity", "Infinity")
        assert floats["3"]["farr"] == ["Infinity", "-Infinity"]
        nums = p.docs("v_numeric")
        assert [nums[i]["num"] for i in "123"] == ["NaN", "Infinity", "-Infinity"] and nums["2"]["num2"] == "12.30"
        keys = p.docs("v_longkey")
        long_id = doc_id({"k": LONG_A})
        empty_id = doc_id({"k": ""})  # Elasticsearch refuses an empty _id: hashed like a long key
        assert set(keys) == {long_id, "short", empty_id} and keys[long_id]["_cdc"]["key"] == LONG_A
        assert keys[empty_id]["_cdc"]["key"] == "" and keys[empty_id]["v"] == 4
        assert keys[long_id]["v"] == 20
        chunks = p.docs("v_longkey_doc", chunks=True)
        assert all(len(i.encode()) <= 512 and c["parent_id"] == long_id for i, c in chunks.items())

        s = stats(p)
        for t in TOAST_TABLES:
            # The placeholders really came (TOASTed values) and were filled, never written.
            assert s[t].get("toast_filled", 0) + s[t].get("toast_from_mirror", 0) >= 7, (t, s[t])
            assert s[t].get("toast_missing", 0) == 0, (t, s[t])
        assert dlq_records(p) == 0
        for t in [*TOAST_TABLES, "v_point", "v_float", "v_numeric", "v_longkey", "v_longkey_doc"]:
            rc, rep, err = verify(p, f"public.{t}")
            assert rc == 0 and rep["drift"] == [] and rep["source_rows"] == rep["mirror_rows"], (t, rep, err)
        assert dlq_records(p) == 0


def test_existing_connector_switches_to_string_decimals_without_a_gap(tmp_path: Path,
                                                                      require: Callable[[str], dict[str, Any]]) -> None:
    """An existing PostgreSQL connector (decimal.handling.mode=precise, as before) picks up string mode on
    its next apply: rows before and after keep the same exact text and mapping; NaN arrives after."""
    for svc in ("kafka", "connect"):
        require(svc)
    tables = [{"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), tables) as p:
        cfg = json.loads(p.config_path.read_text())
        cfg["connectors"][0].update({"extra": {"decimal.handling.mode": "precise"}, "override_owned": True})
        p.config_path.write_text(json.dumps(cfg))
        p.sql("INSERT INTO orders VALUES (1, 'a', 19.90, 'new', now()), (2, 'b', 0.01, 'new', now())")
        p.apply()
        p.start_worker()
        p.wait("snapshot in precise mode", lambda: len(p.docs("orders")) == 2)
        mapping = p.es("GET", f"/{p.alias('orders')}/_mapping")
        del cfg["connectors"][0]["extra"], cfg["connectors"][0]["override_owned"]
        p.config_path.write_text(json.dumps(cfg))
        assert any("updated" in a or "update" in a for a in p.apply())
        p.sql("UPDATE orders SET amount = 'NaN' WHERE id = 2")
        p.sql("INSERT INTO orders VALUES (3, 'c', 12.30, 'new', now())")
        p.wait("changes in string mode", lambda: p.docs("orders").get("2", {}).get("amount") == "NaN"
               and p.docs("orders").get("3", {}).get("amount") == "12.30", timeout=180)
        assert p.docs("orders")["1"]["amount"] == "19.90"
        assert p.es("GET", f"/{p.alias('orders')}/_mapping") == mapping  # no mapping change
        rc, rep, err = verify(p, "public.orders")
        assert rc == 0 and rep["drift"] == [], (rep, err)
        assert dlq_records(p) == 0
