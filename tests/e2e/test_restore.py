"""Point-in-time restore from the archive (issue 20 part 1), on the real stack: a table with
inserts, updates, deletes and a delete-then-insert of one key, archived over many objects (4
records each), restored at three cuts (two times, one source position), and a fourth after a
TRUNCATE, into JSON Lines files, a PostgreSQL table (created by the restore, and one created
beforehand like the source) and an Elasticsearch index; each compared row by row with the
source as queried at that moment. Then `cdcstream history` lists every version of one row. The
same on MariaDB, by binlog position and by time."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Pipeline, pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

Rows = list[tuple[Any, ...]]


def archived_events(p: Pipeline) -> int:
    return sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in p.archive_dir.rglob("*.jsonl.gz"))


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=p.env, cwd=p.tmp,
                          capture_output=True, text=True, timeout=300, check=False)


def cut_now(p: Pipeline) -> tuple[str, str, Rows]:
    """The source's clock, the WAL position just before the next record (a cut is inclusive) and the rows
    now (nothing is written meanwhile)."""
    (ts, lsn), = p.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
                       "(pg_current_wal_insert_lsn() - 1)::text")
    rows = p.sql("SELECT id, actor, action FROM audit_log ORDER BY id")
    time.sleep(0.05)  # the next commit is stamped a later millisecond
    return str(ts), f"lsn={lsn}", rows


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    for svc in ("kafka", "connect", "postgres", "elasticsearch"):
        require(svc)
    return require


def test_restore_at_three_cuts_matches_the_source_then(tmp_path: Path,
                                                       stack: Callable[[str], dict[str, Any]]) -> None:
    tables = [{"name": "public.audit_log", "profile": "archive"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        p.env.update({"CDCSTREAM_ARCHIVE_MAX_RECORDS": "4", "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "1",
                      "RESTORE_DSN": f"postgresql://{p.role}:{p.password}@{p.pg['host']}:{p.pg['port']}/{p.db}"})
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'login' FROM generate_series(1, 10) g")
        p.apply()
        p.start_worker()
        events = 10
        p.wait("the snapshot archived", lambda: archived_events(p) == events, timeout=180)

        # Life before cut 1: inserts, an update, a delete.
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'view' FROM generate_series(11, 15) g")
        p.sql("UPDATE audit_log SET action = 'logout' WHERE id = 2")
        p.sql("DELETE FROM audit_log WHERE id = 5")
        events += 7
        cuts = [cut_now(p)]
        # Before cut 2: several updates of one row, deletes, key 5 inserted again.
        for n in range(3):
            p.sql("UPDATE audit_log SET action = %s WHERE id = 3", (f"edit-{n}",))
        p.sql("DELETE FROM audit_log WHERE id IN (1, 11)")
        p.sql("INSERT INTO audit_log VALUES (5, 'again', 'login')")
        p.sql("BEGIN; UPDATE audit_log SET actor = 'admin' WHERE id BETWEEN 6 AND 9; "
              "INSERT INTO audit_log VALUES (16, 'user16', 'login'); COMMIT")
        events += 3 + 2 + 1 + 4 + 1
        cuts.append(cut_now(p))
        # Before cut 3: a deleted key updated after its re-insert, more deletes and inserts.
        p.sql("UPDATE audit_log SET action = 'logout' WHERE id = 5")
        p.sql("DELETE FROM audit_log WHERE id IN (3, 12, 16)")
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'signup' FROM generate_series(17, 20) g")
        events += 1 + 3 + 4
        cuts.append(cut_now(p))
        # After every cut: changes none of the restores may show.
        p.sql("UPDATE audit_log SET action = 'late' WHERE id IN (2, 4, 5)")
        p.sql("DELETE FROM audit_log WHERE id = 17")
        p.sql("INSERT INTO audit_log VALUES (21, 'user21', 'late')")
        events += 3 + 1 + 1
        # A fourth cut after a TRUNCATE: only what was inserted since.
        p.sql("TRUNCATE audit_log")
        p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'fresh' FROM generate_series(40, 42) g")
        events += 1 + 3
        cuts.append(cut_now(p))
        p.sql("UPDATE audit_log SET action = 'late' WHERE id = 40")
        events += 1
        p.wait("every change archived", lambda: archived_events(p) == events, timeout=120)
        objects = len(list(p.archive_dir.rglob("*.jsonl.gz")))
        assert objects >= 8, objects  # the table spans many objects

        # Cut 1 by time -> JSON Lines.
        (ts1, _lsn1, rows1), (_ts2, lsn2, rows2), (ts3, _lsn3, rows3), (ts4, _lsn4, rows4) = cuts
        out = tmp_path / "cut1.jsonl"
        r = cli(p, "restore", "public.audit_log", "--as-of", ts1, "--to", "jsonl", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{len(rows1)} rows" in r.stdout and "events" in r.stdout and "read" in r.stdout, r.stdout
        assert "objects" in r.stderr, r.stderr  # the progress line
        restored = [json.loads(x) for x in out.read_text().splitlines()]
        assert [(x["id"], x["actor"], x["action"]) for x in restored] == rows1

        # Cut 2 by source position -> a PostgreSQL table made like the source beforehand ...
        p.sql("CREATE TABLE restored_2 (LIKE audit_log INCLUDING ALL)")
        r = cli(p, "restore", "public.audit_log", "--as-of", lsn2, "--to", "postgres", "env:RESTORE_DSN",
                "public.restored_2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert p.sql("SELECT id, actor, action FROM restored_2 ORDER BY id") == rows2, (lsn2, r.stdout)
        # ... and cut 1 into one the restore creates (types from the values); a second run refuses.
        r = cli(p, "restore", "public.audit_log", "--as-of", ts1, "--to", "postgres", "env:RESTORE_DSN",
                "restored_1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert p.sql("SELECT id, actor, action FROM restored_1 ORDER BY id") == rows1
        r = cli(p, "restore", "public.audit_log", "--as-of", ts1, "--to", "postgres", "env:RESTORE_DSN",
                "restored_1")
        assert r.returncode == 1 and "is not empty" in r.stderr, r.stdout + r.stderr

        # Cut 3 by time -> a new Elasticsearch index.
        index = f"{p.connector}-restored-3"
        r = cli(p, "restore", "public.audit_log", "--as-of", ts3, "--to", "index", index)
        assert r.returncode == 0, r.stdout + r.stderr
        hits = p.es("POST", f"/{index}/_search", {"size": 100, "sort": [{"id": "asc"}]})["hits"]["hits"]
        assert [(h["_source"]["id"], h["_source"]["actor"], h["_source"]["action"]) for h in hits] == rows3
        assert [h["_id"] for h in hits] == [str(x[0]) for x in rows3]

        # After the TRUNCATE: the rows inserted since, nothing from before.
        out = tmp_path / "cut4.jsonl.gz"
        r = cli(p, "restore", "public.audit_log", "--as-of", ts4, "--to", "jsonl", str(out))
        assert r.returncode == 0 and "1 truncate(s) applied" in r.stdout, r.stdout + r.stderr
        restored = [json.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
        assert [(x["id"], x["actor"], x["action"]) for x in restored] == rows4 == [
            (40, "user40", "fresh"), (41, "user41", "fresh"), (42, "user42", "fresh")]

        # Each cut differs from the others and from now: the restores really chose by the cut.
        now = p.sql("SELECT id, actor, action FROM audit_log ORDER BY id")
        assert len({json.dumps(x) for x in (rows1, rows2, rows3, rows4, now)}) == 5

        # History of key 5: snapshot, delete, insert again, two updates.
        r = cli(p, "history", "public.audit_log", "5")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert [x.split()[2] for x in lines] == ["snapshot", "delete", "insert", "update", "update", "truncate"], \
            r.stdout
        assert '"action":"late"' in lines[-2] and "lsn=" in lines[0]
        r = cli(p, "history", "public.audit_log", '{"id": 3}', "--json")
        versions = [json.loads(x) for x in r.stdout.splitlines()]
        assert [v["op"] for v in versions] == ["r", "u", "u", "u", "d", "t"], versions
        assert [v["after"]["action"] for v in versions[1:4]] == ["edit-0", "edit-1", "edit-2"]
        # A cut before anything was archived: an empty table, said so.
        r = cli(p, "restore", "public.audit_log", "--as-of", "2000-01-01T00:00:00Z", "--to", "jsonl",
                str(tmp_path / "empty.jsonl"))
        assert r.returncode == 0 and "0 rows" in r.stdout, r.stdout + r.stderr
        assert "the cut is before the archive's oldest change" in r.stderr, r.stderr

        # The same objects in the stack's S3 object store, read from a host without the config.
        s3_restore(p, stack("objectstore"), ts3, rows3)


def s3_restore(p: Pipeline, info: dict[str, Any], cut: str, expected: Rows) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=info["endpoint"], aws_access_key_id=info["access_key"],
                          aws_secret_access_key=info["secret_key"], region_name=info["region"])
    prefix = f"e2e-{p.tag}-restore"
    keys = []
    try:
        for f in sorted(p.archive_dir.rglob("*.jsonl.gz")):
            keys.append(f"{prefix}/{f.relative_to(p.archive_dir)}")
            client.put_object(Bucket=info["bucket"], Key=keys[-1], Body=f.read_bytes())
        env = {k: v for k, v in p.env.items() if k != "CDCSTREAM_CONFIG"}
        env.update({"CDCSTREAM_ARCHIVE_URL": f"s3://{info['bucket']}/{prefix}?endpoint={info['endpoint']}",
                    "CDCSTREAM_ARCHIVE_ACCESS_KEY": "env:E2E_S3_ACCESS",
                    "CDCSTREAM_ARCHIVE_SECRET_KEY": "env:E2E_S3_SECRET",
                    "E2E_S3_ACCESS": info["access_key"], "E2E_S3_SECRET": info["secret_key"]})
        out = p.tmp / "s3.jsonl"
        r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "restore", "public.audit_log", "--as-of", cut,
                            "--to", "jsonl", str(out)], env=env, cwd=p.tmp / "archive", capture_output=True,
                           text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"restore {p.connector} public.audit_log" in r.stderr  # the connector found in the archive
        restored = [json.loads(x) for x in out.read_text().splitlines()]
        assert [(x["id"], x["actor"], x["action"]) for x in restored] == expected
    finally:
        for k in keys:
            client.delete_object(Bucket=info["bucket"], Key=k)


# --- MariaDB: binlog positions and second-precision times ------------------------------------------
MARIA_SCHEMA = ["CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, qty INT NOT NULL)",
                "INSERT INTO `{db}`.items VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4)"]


def test_restore_a_mariadb_table_by_binlog_position_and_time(tmp_path: Path,
                                                             require: Callable[[str], dict[str, Any]]) -> None:
    """The same on MariaDB: a cut by binlog position (`SHOW MASTER STATUS`) and one by time (the
    binlog stamps whole seconds, so the changes after a time cut start in the next second)."""
    import os
    import signal

    from tests.integration.lifecycle_support import maria_source
    from tests.support import delete_topics, free_port, topics_starting, wait_until

    for svc in ("mariadb", "kafka", "connect", "elasticsearch"):
        require(svc)
    with maria_source(tmp_path, MARIA_SCHEMA, []) as src:
        table = f"{src.db}.items"
        src.write_config([{"name": table, "profile": "archive"}])
        archive = tmp_path / "archive"
        app_id = f"e2e-rst-{src.tag}"
        env = {**os.environ, **src.env, "CDCSTREAM_APP_ID": app_id, "CDCSTREAM_DATA_DIR": str(tmp_path / "worker"),
               "CDCSTREAM_WEB_PORT": str(free_port()), "CDCSTREAM_PARTITIONS": "1",
               "CDCSTREAM_ARCHIVE_URL": f"file://{archive}", "CDCSTREAM_ARCHIVE_MAX_RECORDS": "3",
               "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "1", "CDCSTREAM_BATCH_WAIT_S": "0.2"}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300, check=False)

        def archived() -> int:
            return sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in archive.rglob("*.jsonl.gz"))

        def source_rows() -> Rows:
            return [tuple(x) for x in src.sql("SELECT id, name, qty FROM items ORDER BY id")]

        def position_cut() -> tuple[str, Rows]:
            # SHOW MASTER STATUS: where the next event goes; everything before it is in the cut.
            row = src.sql("SHOW MASTER STATUS", root=True)[0]
            return f"{row[0]}:{int(row[1]) - 1}", source_rows()

        def time_cut() -> tuple[str, Rows]:
            (now,), = src.sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%fZ')")
            rows = source_rows()
            time.sleep(1.1)  # the binlog's clock has whole seconds: later changes in a later one
            return str(now), rows

        log = (tmp_path / "worker.log").open("ab")
        worker: subprocess.Popen[bytes] | None = None
        try:
            r = run("connectors", "apply")
            assert r.returncode == 0, r.stdout + r.stderr
            worker = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker"], env=env, cwd=tmp_path,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            wait_until(lambda: archived() == 4, 180, what="the snapshot archived")
            time.sleep(1.1)  # the snapshot's second is over
            src.sql("INSERT INTO items VALUES (5, 'e', 5), (6, 'f', 6)")
            src.sql("UPDATE items SET qty = qty + 10 WHERE id IN (1, 2)")
            src.sql("DELETE FROM items WHERE id = 3")
            pos1, rows1 = position_cut()
            src.sql("UPDATE items SET name = 'z' WHERE id = 1")
            src.sql("DELETE FROM items WHERE id IN (2, 5)")
            src.sql("INSERT INTO items VALUES (3, 'again', 30)")
            ts2, rows2 = time_cut()
            src.sql("UPDATE items SET qty = 0")
            src.sql("INSERT INTO items VALUES (7, 'g', 7)")
            wait_until(lambda: archived() == 4 + 2 + 2 + 1 + 1 + 2 + 1 + 4 + 1, 120, what="every change archived")
            assert rows1 != rows2 != source_rows()

            out = tmp_path / "pos1.jsonl"
            r = run("restore", table, "--as-of", pos1, "--to", "jsonl", str(out))
            assert r.returncode == 0, r.stdout + r.stderr
            assert [(x["id"], x["name"], x["qty"]) for x in map(json.loads, out.read_text().splitlines())] == rows1
            out = tmp_path / "ts2.jsonl"
            r = run("restore", table, "--as-of", ts2, "--to", "jsonl", str(out))
            assert r.returncode == 0, r.stdout + r.stderr
            assert [(x["id"], x["name"], x["qty"]) for x in map(json.loads, out.read_text().splitlines())] == rows2
            r = run("history", table, "3")
            assert [x.split()[2] for x in r.stdout.splitlines()] == ["snapshot", "delete", "insert", "update"], \
                r.stdout + r.stderr
        finally:
            if worker is not None and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(60)
            delete_topics(topics_starting(app_id))
