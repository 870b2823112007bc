"""Throwaway sources for the connector lifecycle tests, driven through the real CLI.

Each ``PgSource``/``MariaSource`` owns a unique role/user, database, connector name and
topic prefix, and removes all of them afterwards: connector (stopped, offsets reset,
deleted), replication slot, publication, topics, database and role.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner, Result
from psycopg import sql

from cdcstream.cli.main import main
from cdcstream.ops.credentials import Credentials
from cdcstream.ops.kconnect import ConnectClient
from tests.support import BOOTSTRAP, removal_spec, teardown_connector


def cli(*args: str, env: dict[str, str]) -> Result:
    """Run ``cdcstream ARGS`` in-process; ``env`` carries CDCSTREAM_CONFIG and the password variable."""
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def output(r: Result) -> str:
    return r.stdout + r.stderr


# --- Kafka ---------------------------------------------------------------------------
def end_offsets(topic: str) -> dict[int, int]:
    """The topic's current end offset per partition (missing topic: empty)."""

    async def go() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = await consumer.end_offsets(tps) if tps else {}
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def consume(topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 90.0,
            start: dict[int, int] | None = None, settle: float = 0.0) -> list[dict[str, Any]]:
    """Read ``topic`` without a consumer group until ``until(payloads)`` holds (tombstones skipped).

    ``start``: offsets per partition to begin at (``end_offsets`` taken earlier), else the
    beginning. ``settle``: keep reading this long after ``until`` holds, to catch extras.
    """

    async def go() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", metadata_max_age_ms=1000)
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            parts: set[int] = set()
            while not parts and time.monotonic() < deadline:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
                if not parts:
                    await asyncio.sleep(0.5)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            for tp in tps:
                if start is not None and tp.partition in start:
                    consumer.seek(tp, start[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            done_at: float | None = None
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        if rec.value is not None:
                            v = json.loads(rec.value)
                            out.append(v.get("payload", v))
                if done_at is None and until(out):
                    done_at = time.monotonic()
                if done_at is not None and time.monotonic() - done_at >= settle:
                    return out
        finally:
            await consumer.stop()
        raise AssertionError(f"timed out on {topic}; saw {[(e.get('op'), e.get('after')) for e in out][-20:]}")

    return asyncio.run(go())


def rows(events: list[dict[str, Any]], op: str | None = None) -> list[dict[str, Any]]:
    return [e["after"] for e in events if e.get("after") and (op is None or e.get("op") == op)]


# --- PostgreSQL ----------------------------------------------------------------------
@dataclass
class PgSource:
    tmp: Path
    host: str = "127.0.0.1"
    port: int = 5432
    su: dict[str, Any] = field(default_factory=lambda: {"user": "postgres", "password": "postgres"})
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def name(self) -> str:
        return f"lc-pg-{self.tag}"

    @property
    def role(self) -> str:
        return f"lc_{self.tag}"

    @property
    def db(self) -> str:
        return f"lc_{self.tag}"

    @property
    def password(self) -> str:
        return f"pw-{self.tag}"

    @property
    def slot(self) -> str:
        return f"cdcstream_lc_pg_{self.tag}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "cdcstream.yaml"

    @property
    def env(self) -> dict[str, str]:
        return {"CDCSTREAM_CONFIG": str(self.config_path), f"LC_PW_{self.tag}": self.password,
                # No worker runs for these tests: a port nobody listens on makes `plan` say so quickly.
                "CDCSTREAM_WEB_PORT": os.environ.get("LC_WEB_PORT", "1")}

    def topic(self, table: str) -> str:
        return f"{self.name}.public.{table}"

    def sql(self, statement: str | sql.Composable, params: tuple[Any, ...] = (), *, superuser: bool = False,
            db: str | None = None) -> list[tuple[Any, ...]]:
        user, pw = (self.su["user"], self.su["password"]) if superuser else (self.role, self.password)
        with psycopg.connect(host=self.host, port=self.port, user=user, password=pw, dbname=db or self.db,
                             autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create(self, schema: str) -> None:
        self.sql(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
            sql.Identifier(self.role), sql.Literal(self.password)), superuser=True, db="postgres")
        self.sql(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(self.db), sql.Identifier(self.role)), superuser=True, db="postgres")
        if schema:
            self.sql(schema)

    def write_config(self, tables: list[dict[str, Any]], **connector: Any) -> None:
        cfg = {"connectors": [{
            "name": self.name,
            "connection": {"kind": "postgres", "host": self.host, "port": self.port, "database": self.db,
                           "user": self.role, "password": f"env:LC_PW_{self.tag}", "tls": {"mode": "disable"}},
            "partitions": 1, "heartbeat_interval_ms": 1000, "tables": tables, **connector}]}
        self.config_path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML

    def cli(self, *args: str) -> Result:
        return cli(*args, env=self.env)

    def slots(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
                                       (self.slot,), superuser=True, db="postgres")]

    def publications(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT pubname FROM pg_publication")]

    def cleanup(self, client: ConnectClient) -> None:
        # As the superuser: a test may have taken REPLICATION away from the role.
        teardown_connector(removal_spec(self.name, "postgres", self.db, host=self.host, port=self.port),
                           Credentials(self.su["user"], self.su["password"]), client=client)
        with contextlib.suppress(Exception):
            # The publication lives in the database: it goes with it.
            self.sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)', superuser=True, db="postgres")
            self.sql(f'DROP ROLE IF EXISTS "{self.role}"', superuser=True, db="postgres")


@contextlib.contextmanager
def pg_source(tmp: Path, schema: str, tables: list[dict[str, Any]], **connector: Any) -> Iterator[PgSource]:
    src = PgSource(tmp)
    client = ConnectClient()
    try:
        src.create(schema)
        src.write_config(tables, **connector)
        yield src
    finally:
        src.cleanup(client)


# --- MariaDB -------------------------------------------------------------------------
@dataclass
class MariaSource:
    tmp: Path
    host: str = "127.0.0.1"
    port: int = 3306
    root_password: str = "mariadb"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def name(self) -> str:
        return f"lc-my-{self.tag}"

    @property
    def user(self) -> str:
        return f"lc_{self.tag}"

    @property
    def db(self) -> str:
        return f"lc_{self.tag}"

    @property
    def password(self) -> str:
        return f"pw-{self.tag}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "cdcstream.yaml"

    @property
    def env(self) -> dict[str, str]:
        return {"CDCSTREAM_CONFIG": str(self.config_path), f"LC_PW_{self.tag}": self.password,
                "CDCSTREAM_WEB_PORT": "1"}

    def topic(self, table: str) -> str:
        return f"{self.name}.{self.db}.{table}"

    def sql(self, statement: str, params: tuple[Any, ...] = (), *, root: bool = False) -> list[tuple[Any, ...]]:
        user, pw = ("root", self.root_password) if root else (self.user, self.password)
        conn = pymysql.connect(host=self.host, port=self.port, user=user, password=pw, autocommit=True,
                               connect_timeout=10, database=None if root else self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)  # None: no %-formatting of the '%' host
                return list(cur.fetchall())
        finally:
            conn.close()

    def create(self, schema: list[str], grants: str, db_grants: bool = True) -> None:
        self.sql(f"CREATE DATABASE `{self.db}`", root=True)
        self.sql(f"CREATE USER '{self.user}'@'%%' IDENTIFIED BY %s", (self.password,), root=True)
        if grants:
            self.sql(f"GRANT {grants} ON *.* TO '{self.user}'@'%'", root=True)
        if db_grants:
            # The connector's user creates the signal and heartbeat tables and writes heartbeats
            # (without: the global grants only, as in Debezium's tutorial; read_only connectors).
            self.sql(f"GRANT ALL PRIVILEGES ON `{self.db}`.* TO '{self.user}'@'%'", root=True)
        for stmt in schema:
            self.sql(stmt.replace("{db}", self.db), root=True)

    def write_config(self, tables: list[dict[str, Any]], **connector: Any) -> None:
        cfg = {"connectors": [{
            "name": self.name,
            "connection": {"kind": "mariadb", "host": self.host, "port": self.port, "database": self.db,
                           "user": self.user, "password": f"env:LC_PW_{self.tag}", "tls": {"mode": "disable"}},
            "partitions": 1, "heartbeat_interval_ms": 1000, "tables": tables, **connector}]}
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def cli(self, *args: str) -> Result:
        return cli(*args, env=self.env)

    def cleanup(self, client: ConnectClient) -> None:
        # Stopped before the DROP DATABASE: a running task would capture it and re-create topics.
        teardown_connector(removal_spec(self.name, "mariadb", self.db, host=self.host, port=self.port),
                           client=client)
        with contextlib.suppress(Exception):
            self.sql(f"DROP DATABASE IF EXISTS `{self.db}`", root=True)
        with contextlib.suppress(Exception):
            self.sql(f"DROP USER IF EXISTS '{self.user}'@'%'", root=True)


MARIADB_GRANTS = "SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT"


@contextlib.contextmanager
def maria_source(tmp: Path, schema: list[str], tables: list[dict[str, Any]], grants: str = MARIADB_GRANTS,
                 db_grants: bool = True, **connector: Any) -> Iterator[MariaSource]:
    src = MariaSource(tmp)
    client = ConnectClient()
    try:
        src.create(schema, grants, db_grants)
        src.write_config(tables, **connector)
        yield src
    finally:
        src.cleanup(client)
