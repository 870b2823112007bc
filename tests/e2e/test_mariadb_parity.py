"""MariaDB parity through the worker (issue 17 item 6): a connector whose user has only Debezium's
tutorial grants (``read_only: true``: nothing written to the source) mirrors a table column for
column; a TRUNCATE empties the mirror like PostgreSQL's; ``connectors snapshot`` (a Kafka signal)
re-sends rows the mirror lost; ``verify --full`` agrees at every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.integration.lifecycle_support import MARIADB_GRANTS, MariaSource
from tests.support import removal_spec, teardown_connector

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCHEMA = [
    "CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, price DECIMAL(10,2) NOT NULL, "
    "made DATETIME(6) NOT NULL, attrs JSON, kind ENUM('a','b') NOT NULL DEFAULT 'a')",
    "INSERT INTO `{db}`.items VALUES (1, 'first', 1.50, '2024-01-01 10:00:00.123456', '{\"k\": 1}', 'a'), "
    "(2, 'second', 2.25, '2024-01-02 10:00:00', NULL, 'b'), (3, 'third', 3.00, '2024-01-03 10:00:00', '[]', 'a')",
]


@dataclass
class MariaPipe:
    p: Pipeline
    maria: MariaSource

    @property
    def connector(self) -> str:
        return f"e2e-{self.p.tag}-my"

    @property
    def table(self) -> str:
        return f"{self.maria.db}.items"

    @property
    def alias(self) -> str:
        return f"{self.connector}-{self.maria.db}-items".replace("_", "-")

    def docs(self) -> dict[str, dict[str, Any]]:
        self.p.es("POST", f"/{self.alias}/_refresh")
        r = self.p.es("POST", f"/{self.alias}/_search", {"size": 1000, "query": {"match_all": {}}})
        return {h["_id"]: h["_source"] for h in r.get("hits", {}).get("hits", [])}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=self.p.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)

    def verify(self) -> tuple[int, dict[str, Any], str]:
        r = self.cli("verify", self.table, "--connector", self.connector, "--full", "--json", "--settle", "60")
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


@pytest.fixture
def mp(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[MariaPipe]:
    for svc in ("kafka", "connect", "mariadb"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"),
                  [{"name": "public.orders", "profile": "index_only"}]) as p:
        maria = MariaSource(tmp_path, tag=p.tag)
        try:
            maria.create(SCHEMA, MARIADB_GRANTS, db_grants=False)  # Debezium's tutorial grants, nothing more
            cfg = json.loads(p.config_path.read_text())
            cfg["connectors"].append({
                "name": f"e2e-{p.tag}-my", "read_only": True,
                "connection": {"kind": "mariadb", "host": maria.host, "port": maria.port, "database": maria.db,
                               "user": maria.user, "password": f"env:LC_PW_{p.tag}", "tls": {"mode": "disable"}},
                "partitions": 2, "heartbeat_interval_ms": 1000,
                "tables": [{"name": f"{maria.db}.items", "profile": "index_only"}]})
            p.config_path.write_text(json.dumps(cfg, indent=2))
            p.env[f"LC_PW_{p.tag}"] = maria.password
            os.environ[f"LC_PW_{p.tag}"] = maria.password
            yield MariaPipe(p, maria)
        finally:
            p.kill_worker()
            client = ConnectClient()
            teardown_connector(removal_spec(f"e2e-{p.tag}-my", "mariadb", maria.db, host=maria.host,
                                            port=maria.port), client=client)
            maria.cleanup(client)


def test_read_only_mariadb_mirrors_truncates_and_resyncs(mp: MariaPipe) -> None:
    p, m = mp.p, mp.maria
    actions = p.apply()
    assert f"created signal topic _cdcstream.signals.{mp.connector}" in actions, actions
    assert m.sql("SHOW TABLES") == [("items",)]  # nothing created in the source
    p.start_worker()
    p.wait("snapshot", lambda: len(mp.docs()) == 3)
    doc = mp.docs()["1"]
    assert (doc["name"], doc["kind"]) == ("first", "a"), doc
    rc, rep, err = mp.verify()
    assert rc == 0 and rep["source_rows"] == rep["mirror_rows"] == 3 and rep["drift"] == [], (rep, err)

    m.sql(f"UPDATE `{m.db}`.items SET price = 9.99, attrs = '{{\"k\": 2}}' WHERE id = 2", root=True)
    m.sql(f"INSERT INTO `{m.db}`.items VALUES (4, 'fourth', 4.00, '2024-01-04 10:00:00', NULL, 'b')", root=True)
    p.wait("stream", lambda: set(mp.docs()) == {"1", "2", "3", "4"} and mp.docs()["2"]["name"] == "second")

    # TRUNCATE: a truncate event (op t) drops the older documents; rows written after it stay.
    m.sql(f"TRUNCATE TABLE `{m.db}`.items", root=True)
    m.sql(f"INSERT INTO `{m.db}`.items VALUES (7, 'after', 7.00, '2024-01-07 10:00:00', NULL, 'a')", root=True)
    p.wait("truncate mirrored", lambda: set(mp.docs()) == {"7"})
    rc, rep, err = mp.verify()
    assert rc == 0 and rep["source_rows"] == rep["mirror_rows"] == 1, (rep, err)

    # A document lost behind the pipeline's back comes back with an incremental snapshot signalled
    # through Kafka (the user may write nothing to the source).
    m.sql(f"INSERT INTO `{m.db}`.items VALUES (8, 'eighth', 8.00, '2024-01-08 10:00:00', NULL, 'b')", root=True)
    p.wait("insert", lambda: set(mp.docs()) == {"7", "8"})
    p.es("DELETE", f"/{mp.alias}/_doc/8?refresh=true")
    rc, rep, _ = mp.verify()
    assert rc == 1 and {(d["key"], d["kind"]) for d in rep["drift"]} == {("8", "missing"), ("*", "count")}, rep
    r = mp.cli("connectors", "snapshot", mp.connector, mp.table)
    assert r.returncode == 0 and f"_cdcstream.signals.{mp.connector}@" in r.stdout, r.stdout + r.stderr
    p.wait("resync", lambda: set(mp.docs()) == {"7", "8"})
    rc, rep, err = mp.verify()
    assert rc == 0 and rep["drift"] == [], (rep, err)
