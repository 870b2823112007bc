"""`cdcstream verify` against a real mirror: clean after the snapshot, drift found by key
after the mirror is damaged behind the pipeline's back, clean again after the documented fix
(an incremental snapshot of the drifting keys, a delete of the extra document)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Pipeline, pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TABLES: list[dict[str, Any]] = [
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.articles", "profile": "full", "text_columns": ["body"]},
]


def verify(p: Pipeline, *args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", *args, "--json"], env=p.env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=p.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.sql("INSERT INTO orders (id, customer, amount, ordered_at) SELECT g, 'c' || g, g * 1.10, "
              "'2024-01-01'::timestamp + g * interval '1 hour' FROM generate_series(1, 40) g")
        p.sql("INSERT INTO articles (id, title, body) VALUES (1, 't', %s)",
              (f"{p.tag} first paragraph about slots.\n\n{p.tag} second paragraph about leases.",))
        p.apply()
        p.start_worker()
        p.wait("snapshot", lambda: len(p.docs("orders")) == 40 and len(p.docs("articles", chunks=True)) >= 1)
        yield p


def test_verify_finds_drift_by_key_and_the_documented_fix_clears_it(pipe: Pipeline) -> None:
    p = pipe
    rc, rep, err = verify(p, "public.orders", "--settle", "60")
    assert rc == 0 and rep["source_rows"] == rep["mirror_rows"] == 40 and rep["drift"] == [], (rep, err)
    rc, rep, err = verify(p, "public.articles", "--settle", "60")
    assert rc == 0 and rep["chunks_checked"] >= 1, (rep, err)

    # Damage the mirror behind the pipeline's back: a lost document, a wrong value, a resurrected row.
    alias = p.alias("orders")
    p.es("DELETE", f"/{alias}/_doc/2?refresh=true")
    doc = p.es("GET", f"/{alias}/_doc/3")["_source"]
    p.es("PUT", f"/{alias}/_doc/3?refresh=true", {**doc, "amount": "0.00"})
    p.es("PUT", f"/{alias}/_doc/999?refresh=true", {**doc, "id": 999})
    p.es("DELETE", f"/{p.alias('articles')}-chunks/_doc/1%23body%230?refresh=true")

    rc, rep, _ = verify(p, "public.orders")
    assert rc == 1
    drift = {(d["key"], d["kind"]) for d in rep["drift"]}
    assert drift == {("2", "missing"), ("3", "differs"), ("999", "extra")}, rep["drift"]
    assert "amount" in next(d["detail"] for d in rep["drift"] if d["key"] == "3")
    # A sample of every row finds the same two; the extra row only shows in a full check
    # (here the counts even agree: one row lost, one resurrected).
    rc, rep, _ = verify(p, "public.orders", "--sample", "40")
    assert rc == 1 and {(d["key"], d["kind"]) for d in rep["drift"]} == {("2", "missing"), ("3", "differs")}
    rc, rep, _ = verify(p, "public.articles")
    assert rc == 1 and [d["kind"] for d in rep["drift"]] == ["chunks"] and "missing" in rep["drift"][0]["detail"]
    # The human form names the keys too.
    text = cli(p, "verify", "public.orders").stdout
    assert "DRIFT" in text and "missing" in text and " 2 " in text

    # The fix docs/operations.md gives: an incremental snapshot of the drifting keys, and a
    # delete of the document that has no row.
    r = cli(p, "connectors", "snapshot", p.connector, "public.orders", "--filter", "id IN (2, 3)")
    assert r.returncode == 0, r.stderr
    r = cli(p, "connectors", "snapshot", p.connector, "public.articles", "--filter", "id = 1")
    assert r.returncode == 0, r.stderr
    p.es("DELETE", f"/{alias}/_doc/999?refresh=true")
    rc, rep, err = verify(p, "public.orders", "--settle", "120")
    assert rc == 0 and rep["mirror_rows"] == 40, (rep, err)
    rc, rep, err = verify(p, "public.articles", "--settle", "120")
    assert rc == 0, (rep, err)


def test_verify_names_what_it_cannot_compare(pipe: Pipeline) -> None:
    p = pipe
    rc, _, err = verify(p, "public.nope")
    assert rc == 2 and "not in the config" in err and "public.orders" in err
    p.sql("CREATE TABLE nokey (a int)")
    cfg = json.loads(p.config_path.read_text())
    cfg["connectors"][0]["tables"].append({"name": "public.nokey", "profile": "index_only", "id_columns": []})
    p.config_path.write_text(json.dumps(cfg))
    rc, _, err = verify(p, "public.nokey")
    assert rc == 2 and "primary key" in err, err
