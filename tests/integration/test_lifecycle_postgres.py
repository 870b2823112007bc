"""Connector lifecycle on PostgreSQL, through the `cdcstream connectors` CLI and the real Connect/Kafka/PostgreSQL.

Every test owns a throwaway role, database, connector, slot, publication and topic prefix
(``lifecycle_support.pg_source``), removed afterwards whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

import cdcstream.cli.main
from cdcstream.ops.kconnect import ConnectClient, ConnectError
from tests.integration.lifecycle_support import (
    PgSource,
    cli,
    consume,
    end_offsets,
    output,
    pg_source,
    rows,
)
from tests.support import BOOTSTRAP, CONNECTION_ERRORS, delete_topics, free_port, topics_named, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: A Kafka Connect call answering with an error (absent, rebalancing) also means "not yet".
CONNECT_NOT_YET = (*CONNECTION_ERRORS, ConnectError)

SCHEMA = """
CREATE TABLE items (id INT PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 8) g;
"""
ITEMS = [{"name": "public.items"}]


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("postgres", "kafka", "connect"):
        require(svc)


@pytest.fixture
def client() -> ConnectClient:
    return ConnectClient()


@pytest.fixture
def src(stack: None, tmp_path: Path) -> Iterator[PgSource]:
    with pg_source(tmp_path, SCHEMA, ITEMS) as s:
        yield s


def _apply(src: PgSource) -> str:
    r = src.cli("connectors", "apply")
    assert r.exit_code == 0, output(r)
    return output(r)


def _running(client: ConnectClient, src: PgSource) -> None:
    client.wait_state(src.name, timeout=120)


def _snapshot_done(src: PgSource, n: int = 8) -> list[dict[str, Any]]:
    return consume(src.topic("items"), lambda ev: len({r["id"] for r in rows(ev, "r")}) >= n)


def _slot_pid(src: PgSource) -> int | None:
    got = src.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (src.slot,),
                  superuser=True, db="postgres")
    return got[0][0] if got else None


# --- plan / apply -------------------------------------------------------------------
def test_apply_twice_sends_nothing_the_second_time(src: PgSource, client: ConnectClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plan = src.cli("connectors", "plan")
    assert plan.exit_code == 0, output(plan)
    assert f"connector {src.name}: create" in plan.stdout
    # An env: password and no credentials.mode: provider mode shows the ${dir:...} placeholder, never the value.
    assert "+ database.password = ${dir:" in plan.stdout and src.password not in output(plan)

    assert f"created connector {src.name}" in _apply(src)
    _running(client, src)
    _snapshot_done(src)
    wait_until(lambda: _slot_pid(src) is not None, what="walsender attached")
    before_status, before_pid = client.status(src.name), _slot_pid(src)

    # The CLI's own client, so its write counter is the one that talked to Connect.
    counted = ConnectClient()
    monkeypatch.setattr(cdcstream.cli.main, "_client", lambda: counted)
    out = _apply(src)
    assert "nothing to do" in out, out
    assert counted.writes == 0
    # No PUT means no task restart: same task on the same worker, and the walsender serving
    # the slot is the same backend (a restarted task reconnects with a new one).
    after = client.status(src.name)
    assert after.state == "RUNNING" and after.tasks == before_status.tasks
    assert _slot_pid(src) == before_pid

    plan = src.cli("connectors", "plan")
    assert f"connector {src.name}: unchanged" in plan.stdout, output(plan)


def test_added_table_updates_connector_and_snapshots_its_rows(src: PgSource, client: ConnectClient) -> None:
    _apply(src)
    _running(client, src)
    src.sql("CREATE TABLE extra (id INT PRIMARY KEY, note TEXT)")
    src.sql("INSERT INTO extra VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    src.write_config([*ITEMS, {"name": "public.extra", "profile": "archive"}])

    plan = src.cli("connectors", "plan")
    assert f"connector {src.name}: update" in plan.stdout, output(plan)
    assert "tables added (their existing rows are snapshotted): public.extra" in plan.stdout
    assert "~ table.include.list" in plan.stdout

    out = _apply(src)
    assert f"updated connector {src.name}" in out and "incremental snapshot" in out, out
    assert src.sql("SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND tablename = 'extra'",
                   (src.slot,))
    ev = consume(src.topic("extra"), lambda ev: {r["id"] for r in rows(ev, "r")} >= {1, 2, 3})
    assert {r["note"] for r in rows(ev, "r")} == {"one", "two", "three"}
    # ... and the running connector streams the new table too.
    src.sql("INSERT INTO extra VALUES (4, 'four')")
    consume(src.topic("extra"), lambda ev: any(r["id"] == 4 for r in rows(ev, "c")))
    assert "nothing to do" in _apply(src)


def test_changes_made_while_paused_arrive_after_resume(src: PgSource, client: ConnectClient) -> None:
    _apply(src)
    _running(client, src)
    _snapshot_done(src)
    r = src.cli("connectors", "pause", src.name)
    assert r.exit_code == 0, output(r)
    client.wait_state(src.name, ("PAUSED",))
    src.sql("INSERT INTO items VALUES (100, 'written while paused')")
    start = end_offsets(src.topic("items"))
    time.sleep(3)
    assert end_offsets(src.topic("items")) == start, "a paused connector produced events"

    r = src.cli("connectors", "resume", src.name)
    assert r.exit_code == 0, output(r)
    ev = consume(src.topic("items"), lambda ev: any(r["id"] == 100 for r in rows(ev, "c")), start=start)
    assert [r["name"] for r in rows(ev, "c")] == ["written while paused"]
    assert client.status(src.name).state == "RUNNING"


def _fail_task(src: PgSource, client: ConnectClient) -> None:
    """Fail the task for real: take REPLICATION away and kill the walsender serving its slot."""
    wait_until(lambda: _slot_pid(src) is not None, what="walsender attached")
    src.sql(f'ALTER ROLE "{src.role}" NOREPLICATION', superuser=True, db="postgres")
    src.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
            (src.slot,), superuser=True, db="postgres")
    wait_until(lambda: client.status(src.name).failed_tasks == [0], timeout=60, what="task FAILED",
               retry_on=CONNECT_NOT_YET)


# errors.max.retries=0: Debezium's own retry loop would otherwise reconnect forever after the
# walsender is killed; with it, losing the replication connection fails the task, as it does
# for any operator who caps retries.
NO_RETRIES = {"extra": {"errors.max.retries": "0"}}


def test_failed_task_restarts_with_only_failed(stack: None, tmp_path: Path, client: ConnectClient) -> None:
    with pg_source(tmp_path, SCHEMA, ITEMS, **NO_RETRIES) as src:
        _apply(src)
        _running(client, src)
        _snapshot_done(src)
        _fail_task(src, client)
        status = src.cli("connectors", "status", src.name)
        assert "task 0: FAILED" in status.stdout, output(status)

        src.sql(f'ALTER ROLE "{src.role}" REPLICATION', superuser=True, db="postgres")
        start = end_offsets(src.topic("items"))
        r = src.cli("connectors", "restart", src.name, "--only-failed")
        assert r.exit_code == 0, output(r)
        # The restart is asynchronous (202): the status shows the old FAILED for a moment.
        wait_until(lambda: [t["state"] for t in client.status(src.name).tasks] == ["RUNNING"], timeout=90,
                   what="task RUNNING again", retry_on=CONNECT_NOT_YET)
        assert client.status(src.name).state == "RUNNING"
        src.sql("INSERT INTO items VALUES (200, 'after restart')")
        consume(src.topic("items"), lambda ev: any(r["id"] == 200 for r in rows(ev, "c")), start=start)


def test_regression_delete_drop_slot_of_a_failed_connector(stack: None, tmp_path: Path,
                                                           client: ConnectClient) -> None:
    """Bug: waiting for STOPPED raised as soon as it saw the FAILED task, so `delete --drop-slot`
    (stop, reset offsets, delete) could not clean up the very connector that needed it."""
    with pg_source(tmp_path, SCHEMA, ITEMS, **NO_RETRIES) as src:
        _apply(src)
        _running(client, src)
        _fail_task(src, client)
        src.sql(f'ALTER ROLE "{src.role}" REPLICATION', superuser=True, db="postgres")
        r = src.cli("connectors", "delete", src.name, "--drop-slot")
        assert r.exit_code == 0, output(r)
        assert client.get_config(src.name) is None and src.slots() == []


# --- delete --drop-slot ---------------------------------------------------------------
def _credentials_dir(src: PgSource) -> Path:
    from cdcstream.core.config import load_config
    from cdcstream.ops.credentials import credentials_dir

    return credentials_dir(load_config(src.config_path).connectors[0])


def test_delete_drop_slot_then_recreate_takes_a_fresh_snapshot(src: PgSource, client: ConnectClient) -> None:
    _apply(src)
    _running(client, src)
    _snapshot_done(src)
    src.sql("INSERT INTO items VALUES (9, 'streamed')")
    consume(src.topic("items"), lambda ev: any(r["id"] == 9 for r in rows(ev, "c")))
    # Without committed offsets the reset below would prove nothing (offset.flush.interval.ms: 5 s).
    wait_until(lambda: bool(client.offsets(src.name)), timeout=90, what="offsets committed",
               retry_on=CONNECT_NOT_YET)

    creds = _credentials_dir(src)
    assert (creds / "password").read_text() == src.password  # provider mode: the file Connect reads
    r = src.cli("connectors", "delete", src.name, "--drop-slot")
    assert r.exit_code == 0, output(r)
    assert "offsets reset" in r.stdout and f"dropped replication slot {src.slot}" in r.stdout, output(r)
    assert client.get_config(src.name) is None
    assert src.slots() == []
    assert src.slot not in src.publications()
    # Removed for good: no password left on disk for a connector that no longer exists.
    assert f"removed credential files in {creds}" in r.stdout and not creds.exists(), output(r)

    start = end_offsets(src.topic("items"))
    src.sql("INSERT INTO items VALUES (10, 'while deleted')")
    assert f"created connector {src.name}" in _apply(src)
    st = client.wait_state(src.name, timeout=120)
    assert [t["state"] for t in st.tasks] == ["RUNNING"]
    ev = consume(src.topic("items"), lambda ev: len(rows(ev)) >= 10, start=start)
    # A fresh snapshot: every row, the one written while the connector was gone included, as op=r.
    assert [e["op"] for e in ev[:10]] == ["r"] * 10
    assert {r["id"] for r in rows(ev[:10])} == set(range(1, 11))
    assert src.slots() == [src.slot]


def test_regression_drop_slot_after_plain_delete_still_resets_offsets(src: PgSource, client: ConnectClient) -> None:
    """Bug: `delete` then `delete --drop-slot` left the offsets in Connect (the connector was
    gone, so they were never reset); a re-created connector read them, skipped its snapshot
    and its task failed ("... no longer available on the server"): no rows arrived."""
    _apply(src)
    _running(client, src)
    _snapshot_done(src)
    wait_until(lambda: bool(client.offsets(src.name)), timeout=90, what="offsets committed",
               retry_on=CONNECT_NOT_YET)
    r = src.cli("connectors", "delete", src.name)
    assert r.exit_code == 0 and "offsets and the replication slot stay" in r.stdout, output(r)
    assert (_credentials_dir(src) / "password").exists()  # kept with the slot: --drop-slot below needs them
    wait_until(lambda: _slot_pid(src) is None, what="slot released")

    r = src.cli("connectors", "delete", src.name, "--drop-slot")
    assert r.exit_code == 0, output(r)
    assert "offsets reset" in r.stdout and src.slots() == []
    start = end_offsets(src.topic("items"))
    src.sql("INSERT INTO items VALUES (11, 'while deleted')")
    _apply(src)
    ev = consume(src.topic("items"), lambda ev: len(rows(ev)) >= 9, start=start)
    assert {e["op"] for e in ev[:9]} == {"r"}
    assert 11 in {r["id"] for r in rows(ev[:9])}


# --- incremental snapshot --------------------------------------------------------------
def test_snapshot_with_filter_reemits_only_matching_rows(src: PgSource, client: ConnectClient) -> None:
    _apply(src)
    _running(client, src)
    _snapshot_done(src)
    start = end_offsets(src.topic("items"))
    r = src.cli("connectors", "snapshot", src.name, "public.items", "--filter", "id > 5")
    assert r.exit_code == 0 and "rows where id > 5" in r.stdout, output(r)
    # settle: anything else the snapshot would (wrongly) emit comes within the same seconds.
    ev = consume(src.topic("items"), lambda ev: {r["id"] for r in rows(ev)} >= {6, 7, 8}, start=start, settle=4)
    assert sorted(r["id"] for r in rows(ev)) == [6, 7, 8]
    assert {(e["op"], e["source"]["snapshot"]) for e in ev} == {("r", "incremental")}

    bad = src.cli("connectors", "snapshot", src.name, "public.nope")
    assert bad.exit_code == 1 and "not captured" in bad.stderr


# --- refusals: nothing applied ---------------------------------------------------------
def _nothing_applied(src: PgSource, client: ConnectClient) -> None:
    assert client.get_config(src.name) is None
    assert src.slot not in src.publications()


def test_bad_config_and_unready_tables_are_refused_with_clear_errors(src: PgSource, client: ConnectClient) -> None:
    cfg = src.config_path
    good = cfg.read_text()

    cfg.write_text("connectors:\n  - name: x\n    tables: [a, b\n")
    r = src.cli("connectors", "apply")
    assert r.exit_code == 2 and f"{cfg}:" in r.stderr and "invalid YAML" in r.stderr, output(r)

    cfg.write_text(good.replace('"name": "public.items"', '"name": "public.items", "profile": "fulltext"'))
    r = src.cli("connectors", "apply")
    assert r.exit_code == 2, output(r)
    line = next(i for i, text in enumerate(cfg.read_text().splitlines(), 1) if "fulltext" in text)
    assert f"{cfg}:{line}: connectors[0] ({src.name}).tables[0] (public.items).profile:" in r.stderr, r.stderr
    assert "'full', 'index_only' or 'archive'" in r.stderr
    _nothing_applied(src, client)

    src.sql("CREATE TABLE nokey (a INT, b TEXT)")
    src.write_config([*ITEMS, {"name": "public.nokey"}, {"name": "public.missing"}])
    r = src.cli("connectors", "apply")
    assert r.exit_code == 1, output(r)
    assert "preflight failed; nothing applied" in r.stderr
    assert "table public.nokey has no primary key" in r.stderr and "fix: add a primary key" in r.stderr
    assert f"table public.missing does not exist in {src.db}" in r.stderr
    assert "fix: create it, or remove it from connector" in r.stderr
    plan = src.cli("connectors", "plan")
    assert plan.exit_code == 1 and "error: table public.nokey has no primary key" in plan.stdout
    _nothing_applied(src, client)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def replica_cluster(tmp_path: Path, stack: None) -> Iterator[int]:
    """A second, throwaway PostgreSQL with wal_level=replica, run as the stack's service user."""
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"{PG_BIN}/postgres missing; `cdcstream stack up` installs it")
    data = Path(f"/tmp/cdcstream-replica-{os.getpid()}-{free_port()}")
    data.mkdir(mode=0o700)
    user = "cdcstream" if os.geteuid() == 0 else None
    if user:
        shutil.chown(data, user, user)
    pw = data.parent / f"{data.name}.pw"
    pw.write_text("postgres\n")
    pw.chmod(0o644)
    port = free_port()
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(data / "pg"), "-U", "postgres", "--pwfile", str(pw),
                    "--auth-host=scram-sha-256", "--auth-local=trust"], check=True, user=user,
                   capture_output=True)
    proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(data / "pg"), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                             "-c", "wal_level=replica", "-c", "fsync=off"], user=user,
                            stdout=subprocess.DEVNULL, stderr=(data.parent / f"{data.name}.log").open("wb"))
    try:
        def accepts_connections() -> bool:
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="postgres", dbname="postgres",
                            connect_timeout=2).close()
            return True

        wait_until(accepts_connections, timeout=60, what="replica cluster up")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown, by the PID we started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)
        pw.unlink(missing_ok=True)
        (data.parent / f"{data.name}.log").unlink(missing_ok=True)


def test_wal_level_replica_is_refused_with_its_fix(replica_cluster: int, tmp_path: Path,
                                                   client: ConnectClient) -> None:
    # The cluster (and with it role, database and tables) is removed by the fixture.
    src = PgSource(tmp_path, port=replica_cluster)
    src.create(SCHEMA)
    src.write_config(ITEMS)
    r = src.cli("connectors", "apply")
    assert r.exit_code == 1, output(r)
    assert "wal_level is 'replica', Debezium needs 'logical'" in r.stderr
    assert "fix: ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL" in r.stderr
    assert client.get_config(src.name) is None
    assert src.publications() == []


# --- plan: drift of live profiles ------------------------------------------------------
class _FakeWorker(BaseHTTPRequestHandler):
    tables: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        body = json.dumps({"tables": self.tables, "worker": "fake"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_plan_shows_profile_drift_or_says_it_could_not_check(src: PgSource) -> None:
    src.sql("CREATE TABLE docs (id INT PRIMARY KEY, body TEXT)")
    src.write_config([*ITEMS, {"name": "public.docs", "profile": "full", "text_columns": ["body"]}])
    r = src.cli("connectors", "plan")
    assert "profiles: could not check live profiles: worker API http://127.0.0.1:1 did not answer" in r.stdout

    # The worker's GET /api/tables as served by cdcstream.web.views: an operator switched items to archive.
    _FakeWorker.tables = [
        {"table": f"{src.name}/{src.db}/public/items", "profile": "archive"},
        {"table": f"{src.name}/{src.db}/public/docs", "profile": "full"},
    ]
    server = HTTPServer(("127.0.0.1", 0), _FakeWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**src.env, "CDCSTREAM_WEB_PORT": str(server.server_address[1])}
        r = cli("connectors", "plan", env=env)
        assert ("profile drift: public.items: live profile archive, YAML says index_only; the live profile wins "
                "until `cdcstream connectors apply --reset-profiles`") in r.stdout, output(r)
        assert "public.docs" not in r.stdout.split("profile drift")[-1]
        _FakeWorker.tables[0]["profile"] = "index_only"
        r = cli("connectors", "plan", env=env)
        assert "profiles: as in the YAML" in r.stdout and "drift" not in r.stdout, output(r)
    finally:
        server.shutdown()




def test_apply_reset_profiles_sends_the_yaml_profile_through_the_control_topic(src: PgSource,
                                                                               client: ConnectClient) -> None:
    """The worker side is played by a fake API plus a consumer of the control topic standing in
    for agents.control: what is checked here is the command the CLI sends and its wait."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    app_id = f"lc-{src.tag}"
    control = f"{app_id}-control"
    key = f"{src.name}/{src.db}/public/items"
    _FakeWorker.tables = [{"table": key, "profile": "archive"}]
    seen: list[dict[str, Any]] = []

    async def create_control_topic() -> None:
        a = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await a.start()
        try:
            await a.create_topics([NewTopic(control, 1, 1)])
        finally:
            await a.close()

    async def control_agent(stop: threading.Event) -> None:
        consumer = AIOKafkaConsumer(control, bootstrap_servers="127.0.0.1:9092", group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            while not stop.is_set():
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for rec in records:
                        cmd = json.loads(rec.value)
                        seen.append({**cmd, "_key": rec.key.decode()})
                        _FakeWorker.tables = [{"table": cmd["table"], "profile": cmd["profile"]}]
        finally:
            await consumer.stop()

    asyncio.run(create_control_topic())
    server = HTTPServer(("127.0.0.1", 0), _FakeWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    agent = threading.Thread(target=lambda: asyncio.run(control_agent(stop)), daemon=True)
    agent.start()
    try:
        no_worker = src.cli("connectors", "apply", "--reset-profiles")
        assert no_worker.exit_code == 1 and "start `cdcstream worker`" in no_worker.stderr, output(no_worker)

        env = {**src.env, "CDCSTREAM_WEB_PORT": str(server.server_address[1]), "CDCSTREAM_APP_ID": app_id}
        r = cli("connectors", "apply", "--reset-profiles", env=env)
        assert r.exit_code == 0, output(r)
        assert f"profile of {src.name} public.items: archive -> index_only (reset to the YAML)" in r.stdout
        assert len(seen) == 1 and seen[0]["_key"] == key
        assert {k: seen[0][k] for k in ("type", "table", "profile", "drop_index")} == {
            "type": "set_profile", "table": key, "profile": "index_only", "drop_index": False}
        r = cli("connectors", "apply", "--reset-profiles", env=env)
        assert "nothing to do" in r.stdout and len(seen) == 1, output(r)
    finally:
        stop.set()
        agent.join(10)
        server.shutdown()
        delete_topics(topics_named(control))
