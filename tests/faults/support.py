"""A fault-test pipeline: PostgreSQL and MariaDB sources, all three profiles, a seeded load
generator and `cdcstream verify` as the judge.

The load is deterministic per seed: each change picks a table and an operation (update 50%,
insert 30%, delete 20% of live keys), so a failing round can be replayed exactly.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.integration.lifecycle_support import MARIADB_GRANTS, MariaSource
from tests.support import removal_spec, teardown_connector

PG_TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["body"]},
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.audit_log", "profile": "archive"},
]
MARIA_SCHEMA = ["CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, customer VARCHAR(64) NOT NULL, "
                "amount DECIMAL(12,2) NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'new', "
                "ordered_at DATETIME(6) NOT NULL)",
                "CREATE TABLE `{db}`.events (id BIGINT PRIMARY KEY, actor VARCHAR(64) NOT NULL, "
                "action VARCHAR(64) NOT NULL)"]

WORDS = ("replication slot wal lsn snapshot offset partition broker index shard mapping chunk token vector "
         "embedding lease policy connector task worker changelog topic cluster").split()


def paragraph(rng: random.Random, tag: str) -> str:
    return f"{tag} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) + "."


@dataclass
class FaultPipeline:
    pg: Pipeline
    maria: MariaSource
    seed: int
    live: dict[str, set[int]] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    # Settings that point the judge (verify) at the servers when the worker goes through proxies.
    direct_env: dict[str, str] = field(default_factory=dict)

    # --- load ----------------------------------------------------------------------------
    def _sql(self, table: str, statement: str, params: tuple[Any, ...]) -> None:
        if table.startswith("maria."):
            self.maria.sql(statement, params)
        else:
            self.pg.sql(statement, params)

    def change(self, rng: random.Random) -> None:
        """One seeded change on one table."""
        table = rng.choices(["articles", "orders", "audit_log", "maria.orders", "maria.events"],
                            weights=[1, 4, 3, 4, 2])[0]
        live = self.live.setdefault(table, set())
        op = rng.choices(["u", "c", "d"], weights=[5, 3, 2])[0] if live else "c"
        tag = self.pg.tag
        if table == "audit_log":
            # An append-only log: archive tables see inserts mostly, and updates of the last rows.
            op = "c" if op == "d" else op
        if op == "c":
            k = self.next_id.get(table, 1)
            self.next_id[table] = k + 1
            live.add(k)
            self._insert(table, k, rng, tag)
        else:
            k = rng.choice(sorted(live))
            if op == "d":
                live.discard(k)
                name = table.removeprefix("maria.")
                self._sql(table, f"DELETE FROM {name} WHERE id = %s", (k,))
            else:
                self._update(table, k, rng, tag)
        self.changes += 1

    def _insert(self, table: str, k: int, rng: random.Random, tag: str) -> None:
        if table == "articles":
            body = "\n\n".join(paragraph(rng, f"{tag}-{k}-{i}") for i in range(rng.randint(1, 3)))
            self.pg.sql("INSERT INTO articles (id, title, body) VALUES (%s, %s, %s)", (k, f"article {k}", body))
        elif table == "orders":
            self.pg.sql("INSERT INTO orders (id, customer, amount) VALUES (%s, %s, %s)",
                        (k, f"c{rng.randint(1, 99)}", f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d}"))
        elif table == "audit_log":
            self.pg.sql("INSERT INTO audit_log VALUES (%s, %s, %s)", (k, f"u{rng.randint(1, 9)}", "login"))
        elif table == "maria.orders":
            self.maria.sql("INSERT INTO orders VALUES (%s, %s, %s, 'new', NOW(6))",
                           (k, f"c{rng.randint(1, 99)}", f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d}"))
        else:
            self.maria.sql("INSERT INTO events VALUES (%s, %s, %s)", (k, f"u{rng.randint(1, 9)}", "create"))

    def _update(self, table: str, k: int, rng: random.Random, tag: str) -> None:
        if table == "articles":
            if rng.random() < 0.5:
                self.pg.sql("UPDATE articles SET category = %s WHERE id = %s", (rng.choice(WORDS), k))
            else:
                self.pg.sql("UPDATE articles SET body = body || %s WHERE id = %s",
                            ("\n\n" + paragraph(rng, f"{tag}-{k}-u{rng.randint(0, 10**6)}"), k))
        elif table == "orders":
            self.pg.sql("UPDATE orders SET status = %s, amount = amount + 1 WHERE id = %s",
                        (rng.choice(["paid", "shipped", "void"]), k))
        elif table == "audit_log":
            self.pg.sql("UPDATE audit_log SET action = %s WHERE id = %s", (rng.choice(["logout", "sudo"]), k))
        elif table == "maria.orders":
            self.maria.sql("UPDATE orders SET status = %s, amount = amount + 1 WHERE id = %s",
                           (rng.choice(["paid", "shipped", "void"]), k))
        else:
            self.maria.sql("UPDATE events SET action = %s WHERE id = %s", (rng.choice(["update", "read"]), k))

    def load(self, n: int, rng: random.Random, per_s: float | None = None) -> threading.Thread:
        """Write ``n`` changes in a background thread (at ``per_s``, else as fast as the sources take them)."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                start = time.monotonic()
                for i in range(n):
                    self.change(rng)
                    if per_s:
                        ahead = start + i / per_s - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=run, name="fault-load", daemon=True)
        t.errors = errors  # type: ignore[attr-defined]
        t.start()
        return t

    # --- judge ---------------------------------------------------------------------------
    def verify(self, table: str, *args: str, settle: float = 180) -> tuple[int, dict[str, Any], str]:
        # The judge talks to the servers directly, never through the fault proxies.
        r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", table, "--json", "--settle",
                            str(settle), *args], env={**self.pg.env, **self.direct_env}, cwd=ROOT,
                           capture_output=True, text=True,
                           timeout=settle + 300, check=False)
        report: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            report = json.loads(r.stdout)
        return r.returncode, report, r.stderr

    @property
    def tables(self) -> list[str]:
        return ["public.articles", "public.orders", "public.audit_log",
                f"{self.maria.db}.orders", f"{self.maria.db}.events"]


def join(t: threading.Thread, timeout: float = 900) -> None:
    t.join(timeout)
    assert not t.is_alive(), "the load generator did not finish"
    errors = t.errors  # type: ignore[attr-defined]
    assert not errors, f"load generator failed: {errors[0]!r}"


@contextlib.contextmanager
def fault_pipeline(tmp: Path, require: Callable[[str], dict[str, Any]], seed: int = 1234) -> Iterator[FaultPipeline]:
    for svc in ("kafka", "connect", "mariadb"):
        require(svc)
    with pipeline(tmp, require("postgres"), require("elasticsearch"), require("embeddings"), PG_TABLES) as p:
        maria = MariaSource(tmp, tag=p.tag)
        try:
            maria.create(MARIA_SCHEMA, MARIADB_GRANTS)
            cfg = json.loads(p.config_path.read_text())
            cfg["connectors"].append({
                "name": f"e2e-{p.tag}-my",
                "connection": {"kind": "mariadb", "host": maria.host, "port": maria.port, "database": maria.db,
                               "user": maria.user, "password": f"env:LC_PW_{p.tag}", "tls": {"mode": "disable"}},
                "partitions": 2, "heartbeat_interval_ms": 1000,
                "tables": [{"name": f"{maria.db}.orders", "profile": "index_only"},
                           {"name": f"{maria.db}.events", "profile": "archive"}]})
            p.config_path.write_text(json.dumps(cfg, indent=2))
            p.env[f"LC_PW_{p.tag}"] = maria.password
            import os

            os.environ[f"LC_PW_{p.tag}"] = maria.password
            yield FaultPipeline(p, maria, seed)
        finally:
            p.kill_worker()
            client = ConnectClient()
            # The MariaDB connector of this config (the PostgreSQL one goes with the pipeline), then
            # the MariaSource's own (never created here), database and user.
            teardown_connector(removal_spec(f"e2e-{p.tag}-my", "mariadb", maria.db, host=maria.host,
                                            port=maria.port), client=client)
            maria.cleanup(client)


def stop_gracefully(p: Pipeline) -> None:
    if p.worker is not None and p.worker.poll() is None:
        import os

        os.killpg(p.worker.pid, signal.SIGTERM)
        try:
            p.worker.wait(90)
        except subprocess.TimeoutExpired:
            p.kill_worker()
