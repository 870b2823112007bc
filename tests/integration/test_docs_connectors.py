"""docs/connectors.md stays true: its walkthroughs run against the stack, its field table is generated.

Convention: a fenced ``sh`` block directly after a line ``<!-- test: GROUP -->`` is run; the
blocks of one group run in document order as one ``bash -euo pipefail`` script (so
``export`` carries over), in a temporary directory, with the venv's ``cdcstream`` on PATH.
The docs use fixed names (database ``shop``, role ``cdc_shop``, connectors ``shop-pg`` and
``shop-maria``); the test renames every ``shop`` to ``shop<tag>`` so runs never collide,
and removes whatever a failed run leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdcstream.cli.main import fields_markdown
from tests.integration.lifecycle_support import consume, rows
from tests.support import removal_spec, teardown_connector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "connectors.md"
BLOCK = re.compile(r"^<!-- test: (\w+) -->\n```sh\n(.*?)^```", re.M | re.S)


def blocks(group: str) -> list[str]:
    return [m.group(2) for m in BLOCK.finditer(DOC.read_text()) if m.group(1) == group]


def run_group(group: str, tag: str, tmp: Path, part: slice = slice(None)) -> str:
    every = blocks(group)
    # A later part runs in a new shell: carry the group's exports (the password variables) over.
    exports = [line for b in every for line in b.splitlines() if line.startswith("export ")]
    script = "\n".join(exports + every[part]).replace("shop", f"shop{tag}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "CDCSTREAM_WEB_PORT": "1"}  # no worker: plan says it could not check, quickly
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, f"docs block group {group!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_field_table_is_generated_from_the_models() -> None:
    text = DOC.read_text()
    embedded = text.split("<!-- fields:start -->\n", 1)[1].split("<!-- fields:end -->", 1)[0]
    assert embedded == fields_markdown(), "run `cdcstream connectors fields` and paste it between the markers"


def test_every_group_has_blocks() -> None:
    assert len(blocks("postgres")) >= 4 and len(blocks("mariadb")) >= 4


def test_postgres_walkthrough_runs(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    for svc in ("postgres", "kafka", "connect"):
        require(svc)
    tag = uuid.uuid4().hex[:8]
    name, db = f"shop{tag}-pg", f"shop{tag}"
    try:
        # Everything but the removal block first: on a busy machine the connector could be
        # deleted before its snapshot produced anything, and the test would see nothing.
        out = run_group("postgres", tag, tmp_path, slice(None, -1))
        # env: password, no credentials.mode: a ${dir:...} placeholder, never the value (provider mode).
        assert f"connector {name}: create" in out and "+ database.password = ${dir:" in out
        assert "change-me" not in out.split(f"connector {name}: create", 1)[1]
        assert f"created connector {name}" in out and "nothing to do" in out
        assert "rows where id > 5" in out
        ev = consume(f"{name}.public.orders", lambda ev: {r["id"] for r in rows(ev, "r")} >= set(range(1, 9)))
        assert {r["customer"] for r in rows(ev)} == {f"customer {i}" for i in range(1, 9)}
        out = run_group("postgres", tag, tmp_path, slice(-1, None))
        assert f"dropped replication slot cdcstream_shop{tag}_pg" in out
    finally:
        teardown_connector(removal_spec(name, "postgres", db))
        with contextlib.suppress(Exception), psycopg.connect(host="127.0.0.1", port=5432, user="postgres",
                                                             password="postgres", dbname="postgres",
                                                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'DROP ROLE IF EXISTS "cdc_shop{tag}"')


def test_mariadb_walkthrough_runs(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    for svc in ("mariadb", "kafka", "connect"):
        require(svc)
    tag = uuid.uuid4().hex[:8]
    name, db = f"shop{tag}-maria", f"shop{tag}"
    try:
        # Removal last, after the events arrived (see the PostgreSQL walkthrough).
        out = run_group("mariadb", tag, tmp_path, slice(None, -3))
        assert f"created signal topic _cdcstream.signals.{name}" in out and f"created connector {name}" in out
        assert "error:" not in out  # Debezium's tutorial grants are enough for a read_only connector
        # Row 3 arrives as op=c, or as op=r when the insert beat the initial snapshot's read.
        ev = consume(f"{name}.{db}.orders", lambda ev: {r["id"] for r in rows(ev)} >= {1, 2, 3})
        assert {r["customer"] for r in rows(ev)} == {"acme", "globex", "initech"}
        out = run_group("mariadb", tag, tmp_path, slice(-3, -2))
        assert f"snapshot signal _cdcstream.signals.{name}@" in out

        def incremental(ev: list[dict[str, Any]]) -> set[int]:
            return {r["id"] for e in ev if e["source"].get("snapshot") == "incremental" for r in rows([e])}

        ev = consume(f"{name}.{db}.orders", lambda ev: incremental(ev) >= {2, 3})
        assert incremental(ev) == {2, 3}  # the filter: id >= 2
        run_group("mariadb", tag, tmp_path, slice(-2, -1))
        # Four partitions: the truncate (no key) and the new row may lie in different ones; the
        # worker orders them by source position.
        ev = consume(f"{name}.{db}.orders", lambda ev: any(r.get("note") for r in rows(ev, "c"))
                     and any(e["op"] == "t" for e in ev))
        assert rows(ev, "c")[-1] == {"id": 4, "customer": "umbrella", "amount": rows(ev, "c")[-1]["amount"],
                                     "note": "after the truncate"}
        out = run_group("mariadb", tag, tmp_path, slice(-1, None))
        assert f"deleted schema-history topic _cdcstream.schema-history.{name}" in out
        assert f"deleted signal topic _cdcstream.signals.{name}" in out
    finally:
        # Connector, schema-history topic and topics first: a running task would capture the DROP DATABASE.
        teardown_connector(removal_spec(name, "mariadb", db))
        with contextlib.suppress(Exception):
            conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="mariadb", autocommit=True)
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
                cur.execute(f"DROP USER IF EXISTS 'cdc_shop{tag}'@'%'")
            conn.close()
