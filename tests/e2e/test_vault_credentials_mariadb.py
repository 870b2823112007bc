"""Vault dynamic credentials for a MariaDB connector on the real stack (issue 17 item 6): Vault's
database engine with the ``mysql-database-plugin`` issues users with Debezium's tutorial grants
only (the connector is ``read_only``, so a revocable user owns nothing in the source); rotation
mid-stream loses no change, the task reads the binlog as the new user, the old user is dropped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import pymysql
import pytest
from aiokafka.errors import KafkaError

from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.vault_env import ROOT, captured_ids, policy_hcl
from tests.support import CONNECTION_ERRORS, removal_spec, teardown_connector, topics_starting, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GRANTS = "SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT"
KAFKA_NOT_YET = (*CONNECTION_ERRORS, KafkaError)


@dataclass
class MariaDynamic:
    tag: str
    tmp: Path
    root: dict[str, Any]
    vault: hvac.Client
    env: dict[str, str] = field(default_factory=dict)

    @property
    def connector(self) -> str:
        return f"vdyn-my-{self.tag}"

    @property
    def db(self) -> str:
        return f"vdyn_{self.tag}"

    @property
    def role(self) -> str:
        return f"cdc-my-{self.tag}"

    @property
    def creds_dir(self) -> Path:
        return self.tmp / "connect-credentials"

    @property
    def topic(self) -> str:
        return f"{self.connector}.{self.db}.items"

    def sql(self, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        conn = pymysql.connect(**self.root, autocommit=True, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def lease(self) -> dict[str, Any]:
        return dict(json.loads((self.creds_dir / "lease.json").read_text()))

    def user_exists(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM mysql.user WHERE user = %s", (name,)))

    def binlog_readers(self) -> set[str]:
        return {r[0] for r in self.sql("SELECT user FROM information_schema.processlist "
                                       "WHERE command LIKE 'Binlog Dump%%'")}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env={**os.environ, **self.env},
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def src(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[MariaDynamic]:
    for svc in ("kafka", "connect"):
        require(svc)
    maria, vault_info = require("mariadb"), require("vault")
    port = int(maria.get("port", 3306))
    root: dict[str, Any] = {"host": "127.0.0.1", "port": port, "user": "root", "password": "mariadb"}
    v = hvac.Client(url=vault_info["addr"], token=vault_info["token"])
    s = MariaDynamic(uuid.uuid4().hex[:8], tmp_path, root, v)
    name = f"my-{s.tag}"
    try:
        s.sql(f"CREATE DATABASE `{s.db}`")
        s.sql(f"CREATE TABLE `{s.db}`.items (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL)")
        v.secrets.database.configure(
            name=name, plugin_name="mysql-database-plugin", allowed_roles=[s.role],
            connection_url=f"{{{{username}}}}:{{{{password}}}}@tcp({root['host']}:{root['port']})/",
            username=root["user"], password=root["password"], verify_connection=True)
        v.secrets.database.create_role(
            name=s.role, db_name=name, default_ttl="10m", max_ttl="30m",
            creation_statements=["CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}';",
                                 f"GRANT {GRANTS} ON *.* TO '{{{{name}}}}'@'%';"])
        v.sys.create_or_update_policy(name=name, policy=policy_hcl("database", s.role))
        v.auth.approle.create_or_update_approle(role_name=name, token_policies=[name], token_ttl="20m",
                                                token_max_ttl="2h")
        role_id = v.auth.approle.read_role_id(role_name=name)["data"]["role_id"]
        sid = tmp_path / "vault-secret-id"
        sid.write_text(v.auth.approle.generate_secret_id(role_name=name)["data"]["secret_id"])
        sid.chmod(0o600)
        cfg = tmp_path / "cdcstream.yaml"
        cfg.write_text(json.dumps({"connectors": [{
            "name": s.connector, "read_only": True,
            "connection": {"kind": "mariadb", "host": root["host"], "port": root["port"], "database": s.db,
                           "tls": {"mode": "disable"}},
            "partitions": 1, "heartbeat_interval_ms": 1000,
            "tables": [{"name": f"{s.db}.items", "profile": "index_only"}],
            "credentials": {"mode": "provider", "dir": str(s.creds_dir), "vault_role": s.role}}]}, indent=2))
        s.env = {"CDCSTREAM_VAULT_ADDR": vault_info["addr"], "CDCSTREAM_VAULT_AUTH": "approle",
                 "CDCSTREAM_VAULT_ROLE_ID": role_id, "CDCSTREAM_VAULT_SECRET_ID_FILE": str(sid),
                 "CDCSTREAM_CONFIG": str(cfg), "CDCSTREAM_WEB_PORT": "1"}
        yield s
    finally:
        teardown_connector(removal_spec(s.connector, "mariadb", s.db, port=port),
                           also_topics=topics_starting(s.connector))
        with contextlib.suppress(Exception):
            v.sys.revoke_prefix(f"database/creds/{s.role}")
        removals: list[Callable[[], object]] = [
            lambda: v.secrets.database.delete_role(s.role),
            lambda: v.secrets.database.delete_connection(name),
            lambda: v.auth.approle.delete_role(role_name=name),
            lambda: v.sys.delete_policy(name=name)]
        for call in removals:
            with contextlib.suppress(Exception):
                call()
        with contextlib.suppress(Exception):
            s.sql(f"DROP DATABASE IF EXISTS `{s.db}`")


class Writer(threading.Thread):
    def __init__(self, s: MariaDynamic, start_id: int) -> None:
        super().__init__(daemon=True)
        self.s, self.next_id, self.stop_flag = s, start_id, threading.Event()
        self.written: list[int] = []

    def run(self) -> None:
        conn = pymysql.connect(**self.s.root, autocommit=True)
        try:
            with conn.cursor() as cur:
                while not self.stop_flag.is_set():
                    cur.execute(f"INSERT INTO `{self.s.db}`.items VALUES (%s, %s)",
                                (self.next_id, f"row {self.next_id}"))
                    self.written.append(self.next_id)
                    self.next_id += 1
                    time.sleep(0.02)
        finally:
            conn.close()


def test_mariadb_dynamic_credentials_rotated_mid_stream(src: MariaDynamic) -> None:
    src.sql(f"INSERT INTO `{src.db}`.items VALUES " + ", ".join(f"({i}, 'snap {i}')" for i in range(1, 31)))
    r = src.cli("connectors", "apply")
    assert r.returncode == 0, r.stderr + r.stdout
    ConnectClient().wait_state(src.connector, timeout=120)
    first = src.lease()["username"]
    wait_until(lambda: first in src.binlog_readers(), timeout=120, what="the task reading the binlog as the user")
    writer = Writer(src, 1000)
    writer.start()
    users = [first]
    try:
        for _ in range(2):
            time.sleep(2)
            r = src.cli("credentials", "rotate", src.connector)
            assert r.returncode == 0 and "credentials rotated" in r.stdout, r.stderr + r.stdout
            users.append(src.lease()["username"])
            assert users[-1] in src.binlog_readers()  # the task reads the binlog as the new user...
            assert not src.user_exists(users[-2])  # ...and the old user is dropped (lease revoked)
        time.sleep(2)
    finally:
        writer.stop_flag.set()
        writer.join(30)
    assert len(set(users)) == 3 and len(writer.written) > 100
    want = set(range(1, 31)) | set(writer.written)
    wait_until(lambda: want <= captured_ids(src.topic), timeout=120, what=f"all {len(want)} rows in Kafka",
               retry_on=KAFKA_NOT_YET)
    assert ConnectClient().status(src.connector).state == "RUNNING"
    status = src.cli("credentials", "status")
    assert f"user={users[-1]}" in status.stdout and "mode=provider" in status.stdout
