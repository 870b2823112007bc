"""A real pipeline for end-to-end tests: its own source database, connector, topics, indices and worker.

Everything carries a per-test tag, so runs never see each other's data, and is removed
afterwards (connector, slot, publication, topics, indices, database).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

from cdcstream.core.config import load_config
from cdcstream.core.resolver import Resolver
from cdcstream.ops.credentials import Credentials, credentials_dir
from cdcstream.ops.kconnect import ConnectClient
from cdcstream.ops.lifecycle import apply
from tests.support import (
    CONNECTION_ERRORS,
    WorkerApi,
    free_port,
    removal_spec,
    teardown_connector,
    topics_starting,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = """
CREATE TABLE public.articles (id INT PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL,
                              category TEXT NOT NULL DEFAULT 'general');
CREATE TABLE public.orders (id INT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2) NOT NULL,
                            status TEXT NOT NULL DEFAULT 'new', ordered_at TIMESTAMP NOT NULL DEFAULT now());
CREATE TABLE public.audit_log (id BIGINT PRIMARY KEY, actor TEXT NOT NULL, action TEXT NOT NULL);
"""


@dataclass
class Pipeline:
    tag: str
    tmp: Path
    pg: dict[str, Any]
    es_url: str
    embed: dict[str, Any]
    role: str = ""
    password: str = ""
    db: str = ""
    config_path: Path = Path()
    archive_dir: Path = Path()
    web_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    worker: subprocess.Popen[bytes] | None = None
    extra_tables: list[str] = field(default_factory=list)
    es_auth: tuple[str, str] | None = None

    @property
    def connector(self) -> str:
        return f"e2e-{self.tag}"

    def alias(self, table: str) -> str:
        return f"{self.connector}-public-{table.replace('_', '-')}"

    def topic(self, table: str) -> str:
        return f"{self.connector}.public.{table}"

    # --- source --------------------------------------------------------------------
    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(host=self.pg["host"], port=self.pg["port"], user=self.role, password=self.password,
                             dbname=self.db, autocommit=True) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def write_config(self, tables: list[dict[str, Any]]) -> None:
        cfg = {"connectors": [{
            "name": self.connector,
            "connection": {"kind": "postgres", "host": "127.0.0.1", "port": self.pg["port"], "database": self.db,
                           "user": self.role, "password": f"env:E2E_PG_PASSWORD_{self.tag}",
                           "tls": {"mode": "disable"}},
            "partitions": 2, "heartbeat_interval_ms": 1000,
            "tables": tables,
        }]}
        # JSON is YAML: the loader reads it like a hand-written file.
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def apply(self) -> list[str]:
        os.environ[f"E2E_PG_PASSWORD_{self.tag}"] = self.password
        return apply(load_config(self.config_path), ConnectClient(), Resolver(), "127.0.0.1:9092",
                     log_fn=lambda _m: None).actions

    # --- worker --------------------------------------------------------------------
    def start_worker(self) -> None:
        log = (self.tmp / "worker.log").open("ab")
        # The supervisor, as in production: it restarts the worker when captured topics appear.
        self.worker = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker"], env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, sig)
            self.worker.wait(60)

    def worker_log(self) -> str:
        p = self.tmp / "worker.log"
        return p.read_text(errors="replace")[-6000:] if p.exists() else ""

    def api(self, path: str) -> Any:
        """GET ``path`` of the worker's HTTP API, decoded (tests that write make a ``WorkerApi`` with the token)."""
        return WorkerApi(self.web_port, timeout=5).json(path)

    # --- mirror --------------------------------------------------------------------
    def es(self, method: str, path: str, body: Any = None) -> Any:
        r = requests.request(method, f"{self.es_url}{path}", json=body, timeout=30, auth=self.es_auth)
        return r.json() if r.content else None

    def docs(self, table: str, chunks: bool = False) -> dict[str, dict[str, Any]]:
        alias = self.alias(table) + ("-chunks" if chunks else "")
        self.es("POST", f"/{alias}/_refresh")
        r = self.es("POST", f"/{alias}/_search", {"size": 1000, "query": {"match_all": {}}})
        if "hits" not in r:
            return {}
        return {h["_id"]: h["_source"] for h in r["hits"]["hits"]}

    def wait(self, what: str, check: Callable[[], object], timeout: float = 120, worker_may_exit: bool = False,
             retry_on: tuple[type[BaseException], ...] = CONNECTION_ERRORS) -> None:
        """``tests.support.wait_until``, failing at once when the worker exits (unless it may) and
        showing the worker's log on a timeout."""

        def worker_exited() -> str | None:
            if worker_may_exit or self.worker is None or self.worker.poll() is None:
                return None
            return f"worker exited ({self.worker.returncode}):\n{self.worker_log()}"

        wait_until(check, timeout, what=what, retry_on=retry_on, abort=worker_exited,
                   detail=lambda: f"--- worker log:\n{self.worker_log()}")

    def embed_stats(self) -> dict[str, int]:
        return dict(requests.get(self.embed["stats_url"], timeout=5).json())


@contextlib.contextmanager
def pipeline(tmp: Path, pg: dict[str, Any], es: dict[str, Any], embed: dict[str, Any],
             tables: list[dict[str, Any]]) -> Iterator[Pipeline]:
    tag = uuid.uuid4().hex[:8]
    p = Pipeline(tag, tmp, pg, es["url"].rstrip("/"), embed, role=f"e2e_{tag}", password=uuid.uuid4().hex,
                 db=f"e2e_{tag}")
    p.config_path = tmp / "cdcstream.yaml"
    p.archive_dir = tmp / "archive"
    p.web_port = free_port()
    su = {"host": pg["host"], "port": pg["port"], "user": pg["user"], "password": pg["password"]}
    with psycopg.connect(**su, dbname="postgres", autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(sql.Identifier(p.role),
                                                                                 sql.Literal(p.password)))
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(p.db), sql.Identifier(p.role)))
    p.sql(SCHEMA)
    p.write_config(tables)
    p.env = {**os.environ, f"E2E_PG_PASSWORD_{tag}": p.password,
             "CDCSTREAM_APP_ID": f"e2e-{tag}", "CDCSTREAM_CONFIG": str(p.config_path),
             "CDCSTREAM_DATA_DIR": str(tmp / "worker"), "CDCSTREAM_WEB_PORT": str(p.web_port),
             "CDCSTREAM_PARTITIONS": "2", "CDCSTREAM_ARCHIVE_URL": f"file://{p.archive_dir}",
             "CDCSTREAM_ARCHIVE_MAX_RECORDS": "4", "CDCSTREAM_BATCH_WAIT_S": "0.2",
             "CDCSTREAM_EMBED_URL": embed["base_url"].replace("http://", "openai://"),
             "CDCSTREAM_EMBED_MODEL": embed["model"], "CDCSTREAM_EMBED_DIMENSIONS": str(embed["dimensions"]),
             "CDCSTREAM_CHUNK_TOKENS": "48"}
    try:
        yield p
    finally:
        p.kill_worker()
        _cleanup(p, su)


def _cleanup(p: Pipeline, su: dict[str, Any]) -> None:
    # Connector, slot, publication and its topics; then the worker's topics (app id e2e-<tag>).
    teardown_connector(removal_spec(p.connector, "postgres", p.db, host=su["host"], port=su["port"]),
                       Credentials(su["user"], su["password"]), also_topics=topics_starting(f"e2e-{p.tag}"))
    with contextlib.suppress(Exception):
        # Elasticsearch 8 refuses wildcard deletes (action.destructive_requires_name): name them.
        names = list(p.es("GET", f"/{p.connector}-*"))
        if names:
            p.es("DELETE", "/" + ",".join(names))
    with contextlib.suppress(Exception), psycopg.connect(**su, dbname="postgres", autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(p.db)))
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(p.role)))
    # Provider mode (the default for the env: password) wrote it under $CDCSTREAM_CREDENTIALS_DIR.
    with contextlib.suppress(Exception):
        shutil.rmtree(credentials_dir(load_config(p.config_path).connectors[0]))


def archived(p: Pipeline) -> list[dict[str, Any]]:
    import gzip

    out = []
    for f in sorted(p.archive_dir.rglob("*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


# --- helpers for the worker API tests (appended; nothing above changed) ------------------
def start_extra_worker(p: Pipeline, name: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """A further worker process of the same app (same app id and config) on its own web port
    and data dir; returns the process and its port. Stop it with ``stop_process``."""
    port = free_port()
    log = (p.tmp / f"worker-{name}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker"],
                            env={**p.env, "CDCSTREAM_WEB_PORT": str(port),
                                 "CDCSTREAM_DATA_DIR": str(p.tmp / f"worker-{name}"), **env},
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return proc, port


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(tmp: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium (Debian package `chromium`) with a throw-away profile."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise AssertionError("chromium is not installed: `apt-get install -y chromium` (make test installs it)")
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp, check=False)
