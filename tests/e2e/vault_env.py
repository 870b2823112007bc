"""A source database whose connector logs in with Vault dynamic credentials, for end-to-end tests.

What ``dynamic_source`` sets up (per test tag, removed afterwards), as docs/vault.md tells
operators to:

* PostgreSQL: database ``vdyn_<tag>``; NOLOGIN group role ``cdc_owner_<tag>`` that owns the
  database, the captured table and (through ``credentials.owner_role``) the signal/heartbeat
  tables and the publication;
* Vault: ``database/config/pg-<tag>`` (postgresql-database-plugin, the stack superuser) and
  role ``cdc-<tag>`` creating ``LOGIN REPLICATION ... IN ROLE cdc_owner_<tag>`` users;
* an AppRole whose policy is the one docs/vault.md shows, and the CDCSTREAM_VAULT_* settings
  for it (the secret id in a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import psycopg
from psycopg import sql

from cdcstream.core.config import load_config
from cdcstream.ops import debezium
from cdcstream.ops.credentials import Credentials
from tests.support import removal_spec, teardown_connector, topics_starting

ROOT = Path(__file__).resolve().parents[2]


def policy_hcl(mount: str, role: str) -> str:
    """The policy of docs/vault.md for one dynamic-credential connector."""
    return (f'path "{mount}/creds/{role}" {{ capabilities = ["read"] }}\n'
            f'path "{mount}/roles/{role}" {{ capabilities = ["read"] }}\n'
            'path "sys/leases/renew" { capabilities = ["update"] }\n'
            'path "sys/leases/revoke" { capabilities = ["update"] }\n')


@dataclass
class DynamicSource:
    tag: str
    tmp: Path
    su: dict[str, Any]
    vault: hvac.Client
    db: str = ""
    owner: str = ""
    vault_role: str = ""
    db_config: str = ""
    policy: str = ""
    approle: str = ""
    env: dict[str, str] = field(default_factory=dict)
    config_path: Path = Path()
    creds_dir: Path = Path()

    @property
    def connector(self) -> str:
        return f"vdyn-{self.tag}"

    @property
    def topic(self) -> str:
        return f"{self.connector}.public.items"

    def sql(self, statement: str, params: tuple[Any, ...] = (), db: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(**self.su, dbname=db or self.db, autocommit=True) as c:
            cur = c.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def write_config(self, mode: str = "provider", **conn: Any) -> None:
        creds: dict[str, Any] = {"mode": mode, "dir": str(self.creds_dir), "owner_role": self.owner}
        if "password" not in conn:
            creds["vault_role"] = self.vault_role
        cfg = {"connectors": [{
            "name": self.connector,
            "connection": {"kind": "postgres", "host": self.su["host"], "port": self.su["port"], "database": self.db,
                           "tls": {"mode": "disable"}, **conn},
            "partitions": 1, "heartbeat_interval_ms": 1000,
            "tables": [{"name": "public.items", "profile": "index_only"}],
            "credentials": creds,
        }]}
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args],
                              env={**os.environ, **self.env, **(env or {})}, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def lease(self) -> dict[str, Any]:
        return dict(json.loads((self.creds_dir / "lease.json").read_text()))

    def password(self) -> str:
        return (self.creds_dir / "password").read_text()

    def slot_user(self) -> str | None:
        rows = self.sql("SELECT a.usename FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid "
                        "WHERE s.slot_name = %s", (debezium.slot_name(load_config(self.config_path).connectors[0]),))
        return str(rows[0][0]) if rows else None

    def role_exists(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)))


@contextlib.contextmanager
def dynamic_source(tmp: Path, pg: dict[str, Any], vault_info: dict[str, Any], *, default_ttl: str = "10m",
                   max_ttl: str = "30m") -> Iterator[DynamicSource]:
    tag = uuid.uuid4().hex[:8]
    su = {"host": pg["host"], "port": pg["port"], "user": pg["user"], "password": pg["password"]}
    v = hvac.Client(url=vault_info["addr"], token=vault_info["token"])
    s = DynamicSource(tag, tmp, su, v, db=f"vdyn_{tag}", owner=f"cdc_owner_{tag}", vault_role=f"cdc-{tag}",
                      db_config=f"pg-{tag}", policy=f"cdcstream-dyn-{tag}", approle=f"cdcstream-dyn-{tag}")
    s.config_path = tmp / "cdcstream.yaml"
    s.creds_dir = tmp / "connect-credentials"
    try:
        with psycopg.connect(**su, dbname="postgres", autocommit=True) as c:
            c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(s.owner)))
            c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(s.db), sql.Identifier(s.owner)))
        s.sql(sql.SQL("SET ROLE {}; CREATE TABLE public.items (id INT PRIMARY KEY, v TEXT NOT NULL)").format(
            sql.Identifier(s.owner)).as_string())
        v.secrets.database.configure(
            name=s.db_config, plugin_name="postgresql-database-plugin", allowed_roles=[s.vault_role],
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{su['host']}:{su['port']}/{s.db}"
                           "?sslmode=disable",
            username=su["user"], password=su["password"], verify_connection=True)
        v.secrets.database.create_role(
            name=s.vault_role, db_name=s.db_config, default_ttl=default_ttl, max_ttl=max_ttl,
            creation_statements=[
                # Owns nothing: the group owns the tables and the publication, so DROP ROLE always works.
                f'CREATE ROLE "{{{{name}}}}" WITH LOGIN REPLICATION PASSWORD \'{{{{password}}}}\' '
                f'VALID UNTIL \'{{{{expiration}}}}\' IN ROLE "{s.owner}";'],
            revocation_statements=[
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
                'DROP ROLE IF EXISTS "{{name}}";'])
        v.sys.create_or_update_policy(name=s.policy, policy=policy_hcl("database", s.vault_role))
        v.auth.approle.create_or_update_approle(role_name=s.approle, token_policies=[s.policy], token_ttl="20m",
                                                token_max_ttl="2h")
        role_id = v.auth.approle.read_role_id(role_name=s.approle)["data"]["role_id"]
        sid = tmp / "vault-secret-id"
        sid.write_text(v.auth.approle.generate_secret_id(role_name=s.approle)["data"]["secret_id"])
        sid.chmod(0o600)
        s.env = {"CDCSTREAM_VAULT_ADDR": vault_info["addr"], "CDCSTREAM_VAULT_AUTH": "approle",
                 "CDCSTREAM_VAULT_ROLE_ID": role_id, "CDCSTREAM_VAULT_SECRET_ID_FILE": str(sid),
                 "CDCSTREAM_CONFIG": str(s.config_path)}
        s.write_config()
        yield s
    finally:
        _cleanup(s)


def _cleanup(s: DynamicSource) -> None:
    # Connector, slot, publication and topics (as the superuser: the dynamic users come and go).
    teardown_connector(removal_spec(s.connector, "postgres", s.db, host=s.su["host"], port=s.su["port"]),
                       Credentials(s.su["user"], s.su["password"]), also_topics=topics_starting(s.connector))
    with contextlib.suppress(Exception):
        s.vault.sys.revoke_prefix(f"database/creds/{s.vault_role}")
    removals: list[Callable[[], object]] = [
        lambda: s.vault.secrets.database.delete_role(s.vault_role),
        lambda: s.vault.secrets.database.delete_connection(s.db_config),
        lambda: s.vault.auth.approle.delete_role(role_name=s.approle),
        lambda: s.vault.sys.delete_policy(name=s.policy)]
    for call in removals:
        with contextlib.suppress(Exception):
            call()
    with contextlib.suppress(Exception), psycopg.connect(**s.su, dbname="postgres", autocommit=True) as c:
        for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                 (s.db,)).fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(s.db)))
        # Users Vault created and a failed test left behind (revoke-prefix drops them normally).
        for (name,) in c.execute("SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid "
                                 "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s", (s.owner,)).fetchall():
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(s.owner)))


# --- Kafka ----------------------------------------------------------------------------------
def read_topics(want: Any = None, bootstrap: str = "127.0.0.1:9092") -> dict[str, list[tuple[bytes, bytes]]]:
    """Every record (key, value) of the topics ``want(name)`` accepts (all topics when None), up to their end now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> dict[str, list[tuple[bytes, bytes]]]:
        # The consumer's own metadata knows no partitions of unsubscribed topics: ask the admin API.
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if want is None or want(t)]
            described = await admin.describe_topics(names) if names else []
        finally:
            await admin.close()
        tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
        await c.start()
        try:
            out: dict[str, list[tuple[bytes, bytes]]] = {t: [] for t in names}
            if not tps:
                return out
            c.assign(tps)
            end = await c.end_offsets(tps)
            await c.seek_to_beginning(*tps)
            begin = await c.beginning_offsets(tps)
            pending = {tp for tp in tps if end[tp] > begin[tp]}
            deadline = asyncio.get_running_loop().time() + 300
            seen: set[Any] = set()
            while pending:
                # Done with a partition when its last record before "end" arrived; position() may
                # answer before the lazy seek to the beginning has happened.
                batch = await c.getmany(*pending, timeout_ms=2000)
                for tp, recs in batch.items():
                    seen.update([tp] if recs else [])
                    out[tp.topic] += [(r.key or b"", r.value or b"") for r in recs if r.offset < end[tp]]
                    if recs and recs[-1].offset >= end[tp] - 1:
                        pending.discard(tp)
                if not batch and asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"reading {sorted({tp.topic for tp in pending})} did not finish")
                # A partition may end in offsets no record carries (transaction markers, compaction).
                for tp in list(pending & seen):
                    if await c.position(tp) >= end[tp]:
                        pending.discard(tp)
            return out
        finally:
            # aiokafka 0.12 may cancel its idle coordinator task into stop(); the records are read by then.
            with contextlib.suppress(asyncio.CancelledError):
                await c.stop()

    return asyncio.run(go())


def captured_ids(topic: str) -> set[int]:
    ids: set[int] = set()
    for _k, v in read_topics(lambda t: t == topic).get(topic, []):
        if v:
            after = (json.loads(v).get("payload") or {}).get("after")
            if after:
                ids.add(int(after["id"]))
    return ids
