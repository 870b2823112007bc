"""docs/troubleshooting.md on the real stack, entry by entry: each test causes the symptom, runs
the entry's check exactly as the doc prints it and sees it detect the symptom, then applies the
documented fix and sees the symptom clear with nothing lost.

The commands are read from the doc (``runbook()`` parses each ``## entry`` into the code spans
of its ``Check:`` and ``Fix:`` bullets), so a changed command in the doc changes what runs here,
and a command that disappears fails the test. They run through ``bash`` with the venv's
``cdcstream`` on PATH and the placeholders the doc names (``NAME``, ``W``, ``AUTH``, ...) set
to this test's connector and worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from aiokafka.errors import KafkaError

from cdcstream.core.config import load_config
from cdcstream.ops import debezium
from cdcstream.ops.kconnect import ConnectClient, ConnectError
from tests.e2e.harness import Pipeline, pipeline
from tests.e2e.vault_env import DynamicSource, captured_ids, dynamic_source
from tests.support import CONNECTION_ERRORS, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
CONNECT_LOG = ROOT / ".stack" / "logs" / "connect.log"
SU: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": "postgres"}
TOKEN = "runbook-api-token-0123456789"

# What "not yet" looks like to the checks below, besides a service not answering: Kafka Connect
# answering an error (connector absent or rebalancing), a Kafka error reading a topic, a JSON
# answer without the field (the API's {"error": ...}) or no JSON at all (curl printed nothing).
CONNECT_NOT_YET = (*CONNECTION_ERRORS, ConnectError)
KAFKA_NOT_YET = (*CONNECTION_ERRORS, KafkaError)
JSON_NOT_YET = (*CONNECTION_ERRORS, KeyError, ValueError)


# --- the doc -----------------------------------------------------------------------------------
@dataclass
class Entry:
    title: str
    check: list[str]
    fix: list[str]


def runbook() -> dict[str, Entry]:
    """Each ``## title`` of the runbook with the code spans of its Check and Fix bullets (continuation
    lines and nested bullets included), whitespace-normalised."""
    out: dict[str, Entry] = {}
    for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", DOC.read_text(), re.M | re.S):
        parts = {"Check": "", "Fix": ""}
        current: str | None = None
        for line in m.group(2).splitlines():
            bullet = re.match(r"^- (\w+):(.*)", line)
            if bullet:
                current = bullet.group(1) if bullet.group(1) in parts else None
                if current:
                    parts[current] += bullet.group(2) + "\n"
            elif line.startswith("- ") or not line.strip():
                current = None if line.startswith("- ") else current
            elif current:
                parts[current] += line + "\n"

        def spans(text: str) -> list[str]:
            return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]

        out[m.group(1).strip()] = Entry(m.group(1).strip(), spans(parts["Check"]), spans(parts["Fix"]))
    return out


def doc_command(entry: str, part: str, prefix: str) -> str:
    """The command of runbook ``entry`` (its ``Check`` or ``Fix``) that starts with ``prefix``, as printed."""
    entries = runbook()
    assert entry in entries, f"docs/troubleshooting.md has no entry {entry!r}; entries: {list(entries)}"
    spans: list[str] = getattr(entries[entry], part.lower())
    found = [s for s in spans if s.startswith(prefix)]
    assert found, f"{entry!r} {part} names no command starting {prefix!r}; it names: {spans}"
    return found[0]


def doc_text(entry: str, part: str) -> list[str]:
    return list(getattr(runbook()[entry], part.lower()))


def run(cmd: str, env: dict[str, str], cwd: Path, **placeholders: str) -> str:
    """Run a documented command with bash, the doc's placeholders replaced; its output (must exit 0)."""
    for name, value in placeholders.items():
        cmd = re.sub(rf"\b{name}\b", lambda _m, v=value: v, cmd)  # type: ignore[misc]
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


# --- helpers -----------------------------------------------------------------------------------
def su_sql(statement: str, params: tuple[Any, ...] = (), db: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(**SU, dbname=db, autocommit=True) as c:
        cur = c.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def slot_of(p: Pipeline) -> str:
    return debezium.slot_name(load_config(p.config_path).connectors[0])


def slot_row(p: Pipeline) -> tuple[Any, ...] | None:
    rows = su_sql("SELECT active, restart_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot_of(p),))
    return rows[0] if rows else None


def current_lsn() -> int:
    """The WAL write position, as ``pg_current_wal_lsn()`` in the doc's query and in ``lag_bytes``."""
    return int(su_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")[0][0])


def written_lsn() -> int:
    """The write position once everything inserted so far is written (the stack runs with
    synchronous_commit=off, so a commit returns before its WAL is written)."""
    inserted = int(su_sql("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")[0][0])
    wait_until(lambda: current_lsn() >= inserted, timeout=60, what="the WAL written")
    return current_lsn()


def lag_bytes(status_output: str) -> int:
    m = re.search(r"slot \S+: active=\w+ lag_bytes=(\d+)", status_output)
    assert m, f"no slot line in:\n{status_output}"
    return int(m.group(1))


def task_states(name: str) -> list[str]:
    return [str(t.get("state")) for t in ConnectClient().status(name).tasks]


def connector_state(name: str) -> str:
    return ConnectClient().status(name).state


def streaming(p: Pipeline) -> bool:
    row = slot_row(p)
    return connector_state(p.connector) == "RUNNING" and task_states(p.connector) == ["RUNNING"] \
        and row is not None and bool(row[0])


@contextlib.contextmanager
def runbook_pipeline(tmp: Path, require: Callable[[str], dict[str, Any]],
                     tables: list[dict[str, Any]]) -> Iterator[Pipeline]:
    """tests/e2e/harness.py's pipeline, removed afterwards (its heartbeat topic too)."""
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp, require("postgres"), require("elasticsearch"), require("embeddings"), tables) as p:
        yield p


def connector_only(tmp: Path, require: Callable[[str], dict[str, Any]]) -> contextlib.AbstractContextManager[Pipeline]:
    """A source database with a captured ``orders`` table and its connector (no worker)."""
    return runbook_pipeline(tmp, require, [{"name": "public.orders", "profile": "index_only"}])


def start_connector(p: Pipeline) -> None:
    p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'acme', 19.99), (2, 'globex', 5.00)")
    p.apply()
    ConnectClient().wait_state(p.connector, timeout=120)
    wait_until(lambda: streaming(p), timeout=180, what="the connector streaming", retry_on=CONNECT_NOT_YET)


# --- Connector or task FAILED ------------------------------------------------------------------
def test_connector_or_task_failed(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    entry = "Connector or task FAILED"
    check = doc_command(entry, "Check", "cdcstream connectors status")
    with connector_only(tmp_path, require) as p:
        start_connector(p)
        client = ConnectClient()

        # Cause 1: the publication dropped while the connector was stopped (a clean-up gone wrong).
        client.stop(p.connector)
        client.wait_state(p.connector, ("STOPPED",), tasks=False, timeout=120)
        p.sql(f"DROP PUBLICATION {debezium.publication_name(load_config(p.config_path).connectors[0])}")
        client.resume(p.connector)
        wait_until(lambda: task_states(p.connector) == ["FAILED"], timeout=180, what="the task FAILED",
                   retry_on=CONNECT_NOT_YET)
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: FAILED" in out, out
        reason = "Publication autocreation is disabled, please create one and restart the connector"
        assert reason in out and any(reason in s for s in doc_text(entry, "Fix")), out
        # Fix, as the doc prints it for this reason: apply re-creates the publication, then restart.
        out = run(doc_command(entry, "Fix", "cdcstream connectors apply"), p.env, tmp_path)
        assert "created publication" in out, out
        run(doc_command(entry, "Fix", "cdcstream connectors restart"), p.env, tmp_path, NAME=p.connector)
        wait_until(lambda: streaming(p), timeout=180, what="the connector streaming again",
                   retry_on=CONNECT_NOT_YET)
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: RUNNING" in out and "FAILED" not in out, out
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (3, 'initech', 1.00)")
        wait_until(lambda: {1, 2, 3} <= captured_ids(p.topic("orders")), timeout=180, what="row 3 in Kafka",
                   retry_on=KAFKA_NOT_YET)

        # Cause 2: the replication slot dropped while the connector was stopped; a row written meanwhile.
        client.stop(p.connector)
        client.wait_state(p.connector, ("STOPPED",), tasks=False, timeout=120)
        wait_until(lambda: slot_row(p) is not None and not slot_row(p)[0], timeout=180,  # type: ignore[index]
                   what="the slot released")
        su_sql("SELECT pg_drop_replication_slot(%s)", (slot_of(p),))
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (4, 'umbrella', 2.00)")
        client.resume(p.connector)
        wait_until(lambda: task_states(p.connector) == ["FAILED"], timeout=180, what="the task FAILED",
                   retry_on=CONNECT_NOT_YET)
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: FAILED" in out and "but this is no longer available on the server" in out, out
        # A restart cannot help here: the position is gone.
        run(doc_command(entry, "Fix", "cdcstream connectors restart"), p.env, tmp_path, NAME=p.connector)
        wait_until(lambda: task_states(p.connector) == ["FAILED"], timeout=180, what="the restarted task FAILED again",
                   retry_on=CONNECT_NOT_YET)
        # Fix, as printed: a new snapshot.
        out = run(doc_command(entry, "Fix", "cdcstream connectors delete"), p.env, tmp_path, NAME=p.connector)
        assert "offsets reset" in out and "dropped publication" in out, out
        out = run(doc_command(entry, "Fix", "cdcstream connectors apply"), p.env, tmp_path)
        assert f"created connector {p.connector}" in out, out
        wait_until(lambda: streaming(p), timeout=180, what="the connector streaming", retry_on=CONNECT_NOT_YET)
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: RUNNING" in out and "FAILED" not in out, out
        # Nothing lost: the snapshot brings every row, the one written while no slot existed too.
        wait_until(lambda: {1, 2, 3, 4} <= captured_ids(p.topic("orders")), timeout=180, what="rows 1-4 in Kafka",
                   retry_on=KAFKA_NOT_YET)


# --- Task RUNNING but not streaming ------------------------------------------------------------
def test_task_running_but_not_streaming(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    entry = "Task RUNNING but not streaming"
    check = doc_command(entry, "Check", "cdcstream connectors status")
    with connector_only(tmp_path, require) as p:
        start_connector(p)
        log_from = CONNECT_LOG.stat().st_size if CONNECT_LOG.exists() else 0
        # Cause: the role's password changed in the database (a DBA rotated it); the connector's
        # session ends (as on a database restart) and it must log in again.
        new_password = uuid.uuid4().hex
        su_sql(f"ALTER ROLE \"{p.role}\" PASSWORD '{new_password}'")
        su_sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
               (slot_of(p),))
        p.password = new_password  # the harness's own queries log in as the role
        wait_until(lambda: slot_row(p) is not None and not slot_row(p)[0], timeout=180,  # type: ignore[index]
                   what="the slot inactive")
        # The symptom: Connect keeps saying RUNNING.
        assert connector_state(p.connector) == "RUNNING" and task_states(p.connector) == ["RUNNING"]
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: RUNNING" in out and "slot: could not check:" in out, out
        assert f'password authentication failed for user "{p.role}"' in out, out
        logged = doc_command(entry, "Check", "WorkerSourceTask{id=NAME-0}").replace("NAME", p.connector)

        def in_log() -> bool:
            with CONNECT_LOG.open("rb") as f:
                f.seek(log_from)
                return logged.encode() in f.read()

        wait_until(in_log, timeout=120, what="the retry in the Connect log")
        # Fix, as printed: the new value where the password reference points, then apply.
        os.environ[f"E2E_PG_PASSWORD_{p.tag}"] = p.env[f"E2E_PG_PASSWORD_{p.tag}"] = new_password
        out = run(doc_command(entry, "Fix", "cdcstream connectors apply"), p.env, tmp_path)
        # Provider mode (the default for a reference): the config holds placeholders, so the files
        # change and the connector restarts. (This passed as "updated connector" only while the
        # credentials dir moved with the working directory: d0194bb.)
        assert f"restarted connector {p.connector}: its credential files changed" in out, out
        wait_until(lambda: streaming(p), timeout=180, what="the connector streaming again",
                   retry_on=CONNECT_NOT_YET)
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert re.search(r"slot \S+: active=True", out), out
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (3, 'initech', 1.00)")
        wait_until(lambda: {1, 2, 3} <= captured_ids(p.topic("orders")), timeout=180, what="row 3 in Kafka",
                   retry_on=KAFKA_NOT_YET)

        # Cause 2: the REPLICATION privilege revoked; the connector must log in again.
        su_sql(f'ALTER ROLE "{p.role}" NOREPLICATION')
        su_sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
               (slot_of(p),))
        wait_until(lambda: slot_row(p) is not None and not slot_row(p)[0], timeout=180,  # type: ignore[index]
                   what="the slot inactive")
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (4, 'umbrella', 2.00)")
        assert connector_state(p.connector) == "RUNNING" and task_states(p.connector) == ["RUNNING"]
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "task 0: RUNNING" in out and re.search(r"slot \S+: active=False lag_bytes=\d+", out), out
        # Fix, as printed: grant it back; the task's next retry picks it up, no restart.
        grant = doc_command(entry, "Fix", "ALTER ROLE ... WITH REPLICATION").replace("...", f'"{p.role}"')
        su_sql(grant)
        wait_until(lambda: streaming(p), timeout=180, what="the connector streaming again",
                   retry_on=CONNECT_NOT_YET)
        wait_until(lambda: {1, 2, 3, 4} <= captured_ids(p.topic("orders")), timeout=180, what="row 4 in Kafka",
                   retry_on=KAFKA_NOT_YET)


# --- Replication slot holding WAL ---------------------------------------------------------------
def test_replication_slot_holding_wal(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    entry = "Replication slot holding WAL"
    check = doc_command(entry, "Check", "cdcstream connectors status")
    query = doc_command(entry, "Check", "SELECT slot_name, active, pg_wal_lsn_diff")

    def sql_lag() -> tuple[bool, int]:
        rows = {r[0]: (bool(r[1]), int(r[2])) for r in su_sql(query.rstrip(";"))}
        return rows[slot_of(p)]

    def write_wal(first_id: int) -> None:
        # ~4 MB of WAL: 4,000 rows of 1 kB.
        p.sql("INSERT INTO orders (id, customer, amount) SELECT g, repeat('x', 1000), 1 "
              "FROM generate_series(%s::int, %s::int) g", (first_id, first_id + 3999))

    with connector_only(tmp_path, require) as p:
        start_connector(p)
        # Cause 1: a paused connector while the source keeps writing.
        ConnectClient().pause(p.connector)
        ConnectClient().wait_state(p.connector, ("PAUSED",), timeout=120)
        paused_at = current_lsn()  # the slot cannot move past this while paused
        write_wal(1000)
        floor = written_lsn() - paused_at
        out = run(check, p.env, tmp_path, NAME=p.connector)
        first = lag_bytes(out)
        assert first >= floor >= 3_000_000, out
        _active, lag = sql_lag()
        assert lag >= floor
        write_wal(10_000)
        written_lsn()
        second = lag_bytes(run(check, p.env, tmp_path, NAME=p.connector))
        assert second > first, (first, second)  # growing
        # Fix, as printed: resume; the slot moves past where it stood while paused.
        run(doc_command(entry, "Fix", "cdcstream connectors resume"), p.env, tmp_path, NAME=p.connector)

        def released() -> bool:
            before = current_lsn()
            out = run(check, p.env, tmp_path, NAME=p.connector)
            # lag < (LSN now - LSN at pause) means restart_lsn is past the pause point.
            return "active=True" in out and lag_bytes(out) < before - paused_at

        wait_until(released, timeout=180, what="the slot advancing after resume")
        wait_until(lambda: set(range(1000, 5000)) | set(range(10_000, 14_000)) <= captured_ids(p.topic("orders")),
                   timeout=180, what="every row written while paused in Kafka", retry_on=KAFKA_NOT_YET)

        # Cause 2: the connector deleted without --drop-slot: its slot stays, inactive.
        r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "connectors", "delete", p.connector], env=p.env,
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
        assert "the replication slot stay" in r.stdout
        wait_until(lambda: not sql_lag()[0], timeout=180, what="the slot inactive")
        write_wal(20_000)
        written_lsn()
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert f"{p.connector}: not created" in out and re.search(r"slot \S+: active=False", out), out
        assert lag_bytes(out) >= 3_000_000, out  # nothing consumes the slot: the WAL since stays
        assert sql_lag()[0] is False and sql_lag()[1] >= 3_000_000
        # Fix, as printed.
        out = run(doc_command(entry, "Fix", "cdcstream connectors delete"), p.env, tmp_path, NAME=p.connector)
        assert f"dropped replication slot {slot_of(p)}" in out, out
        assert slot_of(p) not in {r[0] for r in su_sql(query.rstrip(";"))}
        out = run(check, p.env, tmp_path, NAME=p.connector)
        assert "slot" not in out.replace(p.connector, ""), out


# --- DLQ growing --------------------------------------------------------------------------------
ARTICLE_TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]},
    {"name": "public.orders", "profile": "index_only"},
]


def worker_env(p: Pipeline) -> dict[str, str]:
    """What the doc's commands need: the worker URL and the token header, as docs/api.md sets them."""
    return {**p.env, "W": f"http://127.0.0.1:{p.web_port}", "CDCSTREAM_TOKEN_VALUE": TOKEN,
            "AUTH": f"Authorization: Bearer {TOKEN}"}


def start_worker(p: Pipeline) -> None:
    """The harness's worker, logging at info: a stuck start shows its recovery in worker.log."""
    log = (p.tmp / "worker.log").open("ab")
    p.worker = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker", "--loglevel", "info"], env=p.env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def restart_worker(p: Pipeline, **env: str) -> None:
    p.kill_worker(signal.SIGTERM)
    p.env.update(env)
    start_worker(p)
    p.wait("the worker API", lambda: isinstance(p.api("/api/tables")["tables"], list), timeout=180,
           retry_on=JSON_NOT_YET)


def chunk_parents(p: Pipeline) -> set[str]:
    return {str(c["parent_id"]) for c in p.docs("articles", chunks=True).values()}


def blocked_on(p: Pipeline, check: str, env: dict[str, str], tmp: Path, sink: str) -> dict[str, Any] | None:
    """The documented check's ``blocked`` entry for ``sink``, if the worker is blocked on it."""
    for b in json.loads(run(check, env, tmp)).get("blocked") or []:
        if b["sink"] == sink:
            return dict(b)
    return None


def start_without_embeddings(p: Pipeline) -> dict[str, str]:
    """Apply the config and start a worker with no embeddings configured (a full-profile table then
    blocks); returns the documented commands' environment once the worker API answers."""
    p.env.update({"CDCSTREAM_EMBED_URL": "", "CDCSTREAM_API_TOKEN": "env:RUNBOOK_API_TOKEN",
                  "RUNBOOK_API_TOKEN": TOKEN})
    p.apply()
    start_worker(p)
    p.wait("the worker API", lambda: isinstance(p.api("/api/tables")["tables"], list), timeout=180,
           retry_on=JSON_NOT_YET)
    return worker_env(p)


def test_sink_blocked(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    """Issue 16: a config problem is not the events' fault: nothing goes to the DLQ, the worker
    waits and says why, and resumes once fixed (before: both articles were dead-lettered)."""
    entry = "Sink blocked"
    check = doc_command(entry, "Check", "curl -s $W/api/tables")
    with runbook_pipeline(tmp_path, require, ARTICLE_TABLES) as p:
        tag = p.tag
        p.sql("INSERT INTO articles (id, title, body) VALUES (1, %s, %s)",
              (f"Slots {tag}", f"Run {tag}: a replication slot keeps WAL until its consumer confirms it."))
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'acme', 19.99)")
        # Cause: a full-profile table on a worker without embeddings.
        env = start_without_embeddings(p)
        p.wait("blocked on embeddings", lambda: blocked_on(p, check, env, tmp_path, "embeddings"),
               timeout=240, retry_on=JSON_NOT_YET)
        b = blocked_on(p, check, env, tmp_path, "embeddings")
        assert b is not None and b["reason"] == "not configured" and "embed_url" in b["error"], b
        assert f"{p.connector}/{p.db}/public/articles" in b["tables"] or any("articles" in t for t in b["tables"])
        metrics = requests.get(f"{env['W']}/metrics", timeout=10).text
        assert 'cdcstream_sink_blocked{sink="embeddings",reason="not configured"} 1' in metrics
        assert "blocked (embeddings: not configured)" in p.worker_log()
        dlq = json.loads(run('curl -s "$W/api/dlq?limit=20"', env, tmp_path))
        assert dlq["records"] == [], dlq  # nothing is the events' fault
        # Fix, as printed for `not configured`: set it and restart the worker.
        doc_text(entry, "Fix")  # the entry exists with its fixes
        restart_worker(p, CDCSTREAM_EMBED_URL=p.embed["base_url"].replace("http://", "openai://"))
        env = worker_env(p)
        p.wait("the article embedded and the order indexed",
               lambda: chunk_parents(p) == {"1"} and set(p.docs("orders")) == {"1"}, timeout=240)
        p.wait("unblocked", lambda: blocked_on(p, check, env, tmp_path, "embeddings") is None,
               retry_on=JSON_NOT_YET)
        assert json.loads(run('curl -s "$W/api/dlq?limit=20"', env, tmp_path))["records"] == []


def test_dlq_growing(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    entry = "DLQ growing"
    check = doc_command(entry, "Check", 'curl -s "$W/api/dlq')
    check_tables = doc_command(entry, "Check", "curl -s $W/api/tables")
    replay = doc_command(entry, "Fix", 'curl -s -X POST -H "$AUTH" $W/api/dlq/replay')
    skip = doc_command("Sink blocked", "Fix", "cdcstream dlq skip")
    blocked_check = doc_command("Sink blocked", "Check", "curl -s $W/api/tables")
    with runbook_pipeline(tmp_path, require, ARTICLE_TABLES) as p:
        tag = p.tag
        p.sql("INSERT INTO articles (id, title, body) VALUES (1, %s, %s), (2, %s, %s)",
              (f"Slots {tag}", f"Run {tag}: a replication slot keeps WAL until its consumer confirms it.",
               f"Pasta {tag}", f"Run {tag}: boil water, add salt, cook the noodles for ten minutes."))
        # Cause 1 (operator): the worker blocks on the articles (no embeddings configured) and an
        # operator decides they are at fault after all: `dlq skip` moves them to the DLQ.
        env = start_without_embeddings(p)
        table = f"{p.connector}.public.articles"
        # Positions are (partition, offset): the two articles may sit at offset 0 of two partitions.
        skipped: list[tuple[int, int]] = []
        for n in (1, 2):
            def waiting_on_next(skipped: list[tuple[int, int]] = skipped) -> bool:
                b = blocked_on(p, blocked_check, env, tmp_path, "embeddings")
                pos = next((v for k, v in (b or {}).get("positions", {}).items() if k.endswith("articles")), None)
                return pos is not None and (pos["partition"], pos["offset"]) not in skipped

            p.wait(f"blocked on article {n}", waiting_on_next, timeout=240, retry_on=JSON_NOT_YET)
            b = blocked_on(p, blocked_check, env, tmp_path, "embeddings")
            assert b is not None
            skipped += [(v["partition"], v["offset"]) for k, v in b["positions"].items() if k.endswith("articles")]
            out = run(skip, env, tmp_path, TABLE=table)
            assert "it goes to the DLQ" in out, out
        # The batch goes through once nothing in it blocks: both skipped records are then written.
        p.wait("2 skipped", lambda: len(json.loads(run(check, env, tmp_path))["records"]) == 2,
               retry_on=JSON_NOT_YET)
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'acme', 19.99)")
        p.wait("the order indexed", lambda: set(p.docs("orders")) == {"1"}, timeout=240)
        # Cause 2 (poison): bytes that are no Debezium record, written to a captured topic.
        asyncio.run(_produce(p.topic("orders"), b'{"id": 99}', b"{this is not a change event"))

        def dlq() -> dict[str, Any]:
            return dict(json.loads(run(check, env, tmp_path)))

        p.wait("three dead letters", lambda: len(dlq()["records"]) == 3, retry_on=JSON_NOT_YET)
        # The check, as printed, shows each record with its reason and origin.
        records = dlq()["records"]
        operator = [r for r in records if r["topic"] == p.topic("articles")]
        poison = [r for r in records if r["topic"] == p.topic("orders")]
        assert len(operator) == 2 and len(poison) == 1, records
        for r in operator:
            assert r["reason"].startswith("skipped by operator: ") and "not configured" in r["reason"], r
            assert isinstance(r["offset"], int)
        assert poison[0]["reason"].startswith("decode: ") and poison[0]["value"] == "{this is not a change event"
        tables = {t["name"].rsplit(".", 1)[-1]: t for t in json.loads(run(check_tables, env, tmp_path))["tables"]}
        assert tables["articles"]["dlq"] == 2 and tables["orders"]["dlq"] == 1
        assert set(p.docs("orders")) == {"1"}  # the stream went on past the dead letters
        # Fix, as printed for `skipped by operator:` reasons: fix the cause (embed_url, restart),
        # replay those records.
        restart_worker(p, CDCSTREAM_EMBED_URL=p.embed["base_url"].replace("http://", "openai://"))
        env = worker_env(p)
        out = run(replay, env, tmp_path, DLQ_OFFSETS=", ".join(str(r["dlq_offset"]) for r in operator))
        assert sorted(x["dlq_offset"] for x in json.loads(out)["replayed"]) == sorted(
            r["dlq_offset"] for r in operator)
        p.wait("the replayed articles embedded and indexed",
               lambda: chunk_parents(p) == {"1", "2"} and set(p.docs("articles")) == {"1", "2"}, timeout=240)
        # Cleared: new changes of the table flow, and the DLQ stops growing.
        p.sql("INSERT INTO articles (id, title, body) VALUES (3, %s, %s)",
              (f"Kafka {tag}", f"Run {tag}: Kafka Connect restarts failed tasks on request."))
        p.wait("article 3 embedded", lambda: "3" in chunk_parents(p), timeout=240)
        assert len(dlq()["records"]) == 3
        # And what the doc says of `decode:` reasons: a replay only dead-letters them again.
        out = run(replay, env, tmp_path, DLQ_OFFSETS=str(poison[0]["dlq_offset"]))
        assert len(json.loads(out)["replayed"]) == 1
        p.wait("the poison dead-lettered again", lambda: len(dlq()["records"]) == 4, retry_on=JSON_NOT_YET)
        again = dlq()["records"][-1]
        assert again["reason"].startswith("decode: ") and again["value"] == poison[0]["value"]


async def _produce(topic: str, key: bytes, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
    await prod.start()
    try:
        await prod.send_and_wait(topic, key=key, value=value, partition=0)
    finally:
        await prod.stop()


# --- Elasticsearch mapping conflict -------------------------------------------------------------
def doc_pattern(span: str, **placeholders: str) -> re.Pattern[str]:
    """A documented message as a pattern: ``...`` matches anything, placeholders their values."""
    pattern = re.escape(span).replace(re.escape("..."), ".*?")
    for name, value in placeholders.items():
        pattern = re.sub(rf"\b{name}\b", lambda _m, v=value: re.escape(v), pattern)  # type: ignore[misc]
    return re.compile(pattern)


def test_elasticsearch_mapping_conflict(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    """A column's type change no longer blocks or dead-letters (issue 17 item 1): the worker
    rebuilds the index into its next generation; the entry's check shows it."""
    entry = "Elasticsearch mapping conflict"
    check = doc_command(entry, "Check", 'curl -s "$W/api/tables"')
    es = require("elasticsearch")
    with runbook_pipeline(tmp_path, require, [{"name": "public.orders", "profile": "index_only"}]) as p:
        alias = p.alias("orders")
        p.sql("ALTER TABLE orders ADD COLUMN qty INT")
        p.sql("INSERT INTO orders (id, customer, amount, qty) VALUES (1, 'acme', 1, 1), (2, 'globex', 2, 2)")
        p.apply()
        start_worker(p)
        p.wait("the rows indexed", lambda: set(p.docs("orders")) == {"1", "2"}, timeout=240)
        assert "long" in json.dumps(p.es("GET", f"/{alias}/_mapping/field/qty"))
        # Cause: the column changes type; the next change of a row does not fit the mapping.
        p.sql("ALTER TABLE orders ALTER COLUMN qty TYPE TEXT")
        p.sql("UPDATE orders SET qty = 'a dozen' WHERE id = 2")
        env = {**worker_env(p), "ES": es["url"].rstrip("/")}
        p.wait("every row in the new generation with its current value",
               lambda: {k: d.get("qty") for k, d in p.docs("orders").items()} == {"1": "1", "2": "a dozen"},
               timeout=240)
        assert list(p.es("GET", f"/_alias/{alias}")) == [f"{alias}-000002"]
        assert "long" not in json.dumps(p.es("GET", f"/{alias}/_mapping/field/qty"))
        # The check, as printed: the table has no migration left and is not blocked.
        tables = json.loads(run(check, env, tmp_path))
        assert tables["blocked"] == [] and [t["migration"] for t in tables["tables"]] == [None], tables
        assert json.loads(run('curl -s "$W/api/dlq?limit=20"', env, tmp_path))["records"] == []
        p.sql("UPDATE orders SET qty = 'two dozen' WHERE id = 1")
        p.wait("the next change indexed", lambda: p.docs("orders")["1"].get("qty") == "two dozen",
               retry_on=(*CONNECTION_ERRORS, KeyError))
        # The fix for values the rebuild could not convert, as printed: re-read the table.
        out = run(doc_command(entry, "Fix", "cdcstream connectors snapshot NAME TABLE"), p.env, tmp_path,
                  NAME=p.connector, TABLE="public.orders")
        assert "snapshot signal" in out, out
        p.wait("the re-read rows indexed", lambda: int(p.api("/api/tables")["tables"][0]["stats"]
                                                       .get("snapshot_rows_incremental", 0)) >= 2,
               retry_on=(*CONNECTION_ERRORS, KeyError, IndexError))
        assert {k: d.get("qty") for k, d in p.docs("orders").items()} == {"1": "two dozen", "2": "a dozen"}


# --- Embedding 429s -----------------------------------------------------------------------------
@dataclass
class PrivateEmbeddings:
    """A private instance of the stack's embeddings server (cdcstream/stack/embedserver.py): its
    counters and rate limit are this test's alone, the shared server on :8000 is never touched."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        return dict(requests.get(f"{self.url}/stats", timeout=10).json())

    def limit(self, rpm: int) -> None:
        """Set the requests-per-minute limit; also empties the server's one-minute window."""
        r = requests.post(f"{self.url}/admin/limits", json={"rpm": rpm}, timeout=10)
        assert r.status_code == 200 and r.json()["rpm_limit"] == rpm, r.text


@contextlib.contextmanager
def private_embeddings(tmp: Path) -> Iterator[PrivateEmbeddings]:
    from cdcstream.stack.base import StackPaths
    from cdcstream.stack.services.embeddings import EmbeddingsService

    svc = EmbeddingsService(StackPaths())
    port = free_port()
    # The stack's own command line, on another port and one thread (the machine is shared).
    cmd = svc.command()
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--threads") + 1] = "1"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    with (tmp / "embeddings.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = PrivateEmbeddings(port, proc)
    try:
        wait_until(lambda: proc.poll() is None and requests.get(f"{server.url}/health", timeout=5).status_code == 200,
                   timeout=120, what="the private embeddings server",
                   detail=lambda: (tmp / "embeddings.log").read_text(errors="replace")[-2000:])
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)


def article_body(tag: str, n: int, words: int = 220) -> str:
    """Text unique to this run and row (no embedding-cache hit), about 1.2 cl100k tokens per word."""
    return " ".join(f"{tag}r{n}w{i}" if i % 7 == 0 else ("slot", "stream", "offset", "replica", "index", "shard",
                                                         "vector")[i % 7] for i in range(words))


def test_embedding_429s(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    from cdcstream.pipeline.tokens import get_encoding

    entry = "Embedding 429s"
    stats_check = doc_command(entry, "Check", "curl -s http://127.0.0.1:8000/stats")
    log_line = doc_command(entry, "Check", "embeddings: rate limited (HTTP 429")
    log_prefix = log_line.split(",")[0]  # "embeddings: rate limited (HTTP 429"
    fix_text = " ".join(doc_text(entry, "Fix"))
    assert "CDCSTREAM_EMBED_TOKENS_PER_MINUTE" in fix_text and "CDCSTREAM_EMBED_CONCURRENCY" in fix_text
    rpm = 4  # the "tier": requests per minute the API accepts
    with private_embeddings(tmp_path) as api, runbook_pipeline(
            tmp_path, require, [{"name": "public.articles", "profile": "full", "text_columns": ["body"]}]) as p:
        tag = p.tag
        enc = get_encoding("cl100k_base")
        min_tokens = min(len(enc.encode(article_body(tag, n))) for n in range(20))
        stats_cmd = stats_check.replace("127.0.0.1:8000", f"127.0.0.1:{api.port}")
        p.env["CDCSTREAM_EMBED_URL"] = f"openai://127.0.0.1:{api.port}/v1"
        p.sql("INSERT INTO articles (id, title, body) VALUES (0, 'first', %s)", (article_body(tag, 0),))
        p.apply()
        start_worker(p)
        p.wait("the first article embedded", lambda: chunk_parents(p) == {"0"}, timeout=240)

        def one_by_one(ids: range) -> None:
            # One row per batch, hence one embedding request per row: the load a limit is about.
            for n in ids:
                p.sql("INSERT INTO articles (id, title, body) VALUES (%s, 't', %s)", (n, article_body(tag, n)))
                p.wait(f"article {n} embedded", lambda n=n: str(n) in chunk_parents(p), timeout=300)  # type: ignore[misc]

        # Cause: more requests in a minute than the API allows (rpm + 1 rows, one request each).
        api.limit(rpm)
        before = json.loads(run(stats_cmd, p.env, tmp_path))
        one_by_one(range(1, rpm + 2))
        # The check, as printed: the server's counter and the worker's log line.
        after = json.loads(run(stats_cmd, p.env, tmp_path))
        assert after["rejected_429"] > before["rejected_429"], after
        assert log_prefix in (p.tmp / "worker.log").read_text(errors="replace"), p.worker_log()
        # Nothing lost while rate limited: every row made it (waited in Kafka, retried after Retry-After).
        assert chunk_parents(p) == {str(n) for n in range(rpm + 2)}

        # Fix, as printed: a tokens-per-minute budget and lower concurrency, worker restarted. Within any
        # minute the budget lets at most 2 x the setting through, so requests of >= min_tokens stay at most
        # 2 x setting / min_tokens = 3 a minute, under the API's 4 (the doc's R x T / 2 bound, with a margin).
        budget = (rpm - 1) * min_tokens // 2
        restart_worker(p, CDCSTREAM_EMBED_TOKENS_PER_MINUTE=str(budget), CDCSTREAM_EMBED_CONCURRENCY="1")
        api.limit(rpm)  # a fresh minute
        rejected = json.loads(run(stats_cmd, p.env, tmp_path))["rejected_429"]
        log_size = len((p.tmp / "worker.log").read_bytes())
        one_by_one(range(100, 100 + rpm + 1))  # the same load that was refused above
        final = json.loads(run(stats_cmd, p.env, tmp_path))
        assert final["rejected_429"] == rejected, final  # no 429 any more...
        assert log_prefix.encode() not in (p.tmp / "worker.log").read_bytes()[log_size:]
        # ...and every row, from before and after the fix, is embedded and indexed.
        want = {str(n) for n in range(rpm + 2)} | {str(n) for n in range(100, 100 + rpm + 1)}
        assert chunk_parents(p) == want and set(p.docs("articles")) == want
        tables = {t["name"].rsplit(".", 1)[-1]: t for t in p.api("/api/tables")["tables"]}
        assert tables["articles"]["dlq"] == 0


# --- Vault lease expired ------------------------------------------------------------------------
@pytest.fixture
def vault_src(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[DynamicSource]:
    """vault_env's dynamic source, removed afterwards (its heartbeat topic too)."""
    for svc in ("kafka", "connect"):
        require(svc)
    with dynamic_source(tmp_path, require("postgres"), require("vault")) as s:
        yield s


def test_vault_lease_expired(vault_src: DynamicSource, tmp_path: Path) -> None:
    entry = "Vault lease expired"
    s = vault_src
    check = doc_command(entry, "Check", "cdcstream credentials status")
    fix = doc_command(entry, "Fix", "cdcstream credentials rotate NAME")
    env = {**os.environ, **s.env}
    r = s.cli("connectors", "apply")
    assert r.returncode == 0, r.stderr + r.stdout
    ConnectClient().wait_state(s.connector, timeout=120)
    wait_until(lambda: s.slot_user() == s.lease()["username"], timeout=180, what="the connector streaming")
    out = run(check, env, tmp_path)
    assert "login=ok" in out, out
    first = s.lease()
    s.sql("INSERT INTO public.items VALUES (1, 'before')")
    # Cause: Vault revokes the lease (as when it expires, or with the token that created it): the
    # revocation statements end the connector's session and drop its database user.
    s.vault.sys.revoke_lease(first["lease_id"])
    wait_until(lambda: not s.role_exists(first["username"]), timeout=180, what="the user dropped")
    s.sql("INSERT INTO public.items VALUES (2, 'while the lease is gone')")
    # The check, as printed, sees it (the lease file alone still looks fine: expires_in > 0).
    out = run(check, env, tmp_path)
    assert f"user={first['username']}" in out, out
    assert f'login=failed: password authentication failed for user "{first["username"]}"' in out, out
    assert ConnectClient().status(s.connector).state == "RUNNING"  # Connect alone would not tell
    assert s.password() not in out
    # Fix, as printed.
    out = run(fix, env, tmp_path, NAME=s.connector)
    assert "credentials rotated" in out, out
    lease = s.lease()
    assert lease["username"] != first["username"] and s.slot_user() == lease["username"]
    out = run(check, env, tmp_path)
    assert f"user={lease['username']}" in out and "login=ok" in out, out
    s.sql("INSERT INTO public.items VALUES (3, 'after the rotation')")
    # Nothing lost: the change made while the connector could not log in arrives too.
    wait_until(lambda: {1, 2, 3} <= captured_ids(s.topic), timeout=180, what="rows 1-3 in Kafka",
               retry_on=KAFKA_NOT_YET)
