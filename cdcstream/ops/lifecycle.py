"""Connector lifecycle: preflight checks, source setup, plan (desired vs actual) and apply.

``apply`` is idempotent: a connector whose config in Kafka Connect already equals the
desired one gets no write at all (no PUT, so no task restart).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdcstream.core.config import Config, ConnectorSpec
from cdcstream.core.resolver import Resolver
from cdcstream.core.secrets import SecretRef
from cdcstream.ops import debezium
from cdcstream.ops.credentials import Credentials, forget_credentials, resolve_credentials
from cdcstream.ops.kconnect import ConnectClient, mask_config
from cdcstream.ops.sourcedb import connect_mariadb, connect_postgres

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """A source database is not ready for CDC; each problem comes with its fix."""


@dataclass
class Finding:
    level: str  # error | warning
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level}: {self.problem}\n    fix: {self.fix}"


@dataclass
class ConnectorPlan:
    name: str
    action: str  # create | update | unchanged
    desired: dict[str, str]
    actual: dict[str, str] | None
    added_tables: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def diff(self) -> list[str]:
        """A readable diff with secrets masked."""
        d, a = mask_config(self.desired), mask_config(self.actual or {})
        lines = []
        for k in sorted(set(d) | set(a)):
            if k == "name":
                continue
            if k not in a:
                lines.append(f"  + {k} = {d[k]}")
            elif k not in d:
                lines.append(f"  - {k} = {a[k]}")
            elif a[k] != d[k]:
                lines.append(f"  ~ {k}: {a[k]} -> {d[k]}")
        return lines


TOASTABLE = {"text", "bytea", "jsonb", "json", "xml", "character varying", "tsvector"}


def preflight_postgres(spec: ConnectorSpec, creds: Credentials, *, existing_slot: bool) -> list[Finding]:
    out: list[Finding] = []
    with connect_postgres(spec, creds) as conn:
        level = conn.execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            out.append(Finding("error", f"wal_level is '{level}', Debezium needs 'logical'",
                               "ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL"))
        rep = conn.execute("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
                           ).fetchone()[0]
        if not rep:
            out.append(Finding("error", f"role {creds.user} lacks the REPLICATION privilege",
                               f"ALTER ROLE {creds.user} WITH REPLICATION"))
        if not existing_slot:
            used, total = conn.execute(
                "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int"
            ).fetchone()
            if used >= total:
                out.append(Finding("error", f"all {total} replication slots are in use",
                                   "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise "
                                   "max_replication_slots and restart"))
        for t in spec.tables:
            row = conn.execute(
                "SELECT c.oid, c.relreplident, i.indexrelid IS NOT NULL FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (t.schema_name, t.table_name)).fetchone()
            if row is None:
                out.append(Finding("error", f"table {t.name} does not exist in {spec.connection.database}",
                                   f"create it, or remove it from connector {spec.name}"))
                continue
            oid, ident, has_pk = row
            if not has_pk:
                if ident not in ("f", "i") or not t.id_columns:
                    out.append(Finding(
                        "error", f"table {t.name} has no primary key; publishing it would make its own UPDATE "
                                 f"and DELETE statements fail",
                        f"add a primary key, or ALTER TABLE {t.name} REPLICA IDENTITY FULL (or USING INDEX) "
                        f"and give id_columns for it in the config"))
            if ident != "f":
                cols = [r[0] for r in conn.execute(
                    "SELECT attname FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid WHERE attrelid = %s "
                    "AND attnum > 0 AND NOT attisdropped AND ty.typstorage <> 'p'", (oid,)).fetchall()]
                if cols:
                    out.append(Finding(
                        "warning", f"table {t.name}: TOAST-able column(s) {', '.join(cols)} without REPLICA "
                                   f"IDENTITY FULL; an UPDATE that leaves them unchanged sends a placeholder",
                        f"fine: the worker fills them from its state or the mirror; for exact values in every "
                        f"event: ALTER TABLE {t.name} REPLICA IDENTITY FULL"))
    return out


def setup_postgres(spec: ConnectorSpec, creds: Credentials) -> list[str]:
    """Create the signal and heartbeat tables and the publication (owned by the table owner)."""
    from psycopg import sql

    done = []
    pub = debezium.publication_name(spec)
    with connect_postgres(spec, creds) as conn:
        if spec.credentials.owner_role:
            # Objects created below then belong to the owner role: a revocable (dynamic) user owns nothing.
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(spec.credentials.owner_role)))
        for name, ddl in (
            (debezium.signal_table(spec),
             "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(64) PRIMARY KEY, type VARCHAR(32) NOT NULL, data TEXT)"),
            (debezium.heartbeat_table(spec), "CREATE TABLE IF NOT EXISTS {} (id INT PRIMARY KEY, ts TIMESTAMPTZ)"),
        ):
            schema, table = name.split(".")
            conn.execute(sql.SQL(ddl).format(sql.Identifier(schema, table)))
        wanted = set(debezium.captured_tables(spec))
        row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)).fetchone()
        idents = sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in sorted(wanted))
        if row is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), idents))
            done.append(f"created publication {pub}")
        else:
            have = {f"{r[0]}.{r[1]}" for r in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,)).fetchall()}
            if have != wanted:
                conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(pub), idents))
                done.append(f"publication {pub}: tables {sorted(have)} -> {sorted(wanted)}")
    return done


def pg_slot(spec: ConnectorSpec, creds: Credentials) -> dict[str, Any] | None:
    with connect_postgres(spec, creds) as conn:
        row = conn.execute(
            "SELECT slot_name, active, active_pid, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s", (debezium.slot_name(spec),)).fetchone()
    if row is None:
        return None
    return {"slot": row[0], "active": row[1], "pid": row[2], "lag_bytes": row[3]}


def drop_slot_and_publication(spec: ConnectorSpec, creds: Credentials, timeout: float = 60) -> list[str]:
    import time

    from psycopg import sql

    done: list[str] = []
    deadline = time.monotonic() + timeout
    with connect_postgres(spec, creds) as conn:
        while True:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                               (debezium.slot_name(spec),)).fetchone()
            if row is None or not row[0]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {debezium.slot_name(spec)} still active after {timeout:.0f}s")
            time.sleep(0.5)
        if row is not None:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (debezium.slot_name(spec),))
            done.append(f"dropped replication slot {debezium.slot_name(spec)}")
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(debezium.publication_name(spec))))
        done.append(f"dropped publication {debezium.publication_name(spec)}")
    return done


def _delete_topics(kafka_bootstrap: str, names: list[str]) -> list[str]:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
        await admin.start()
        try:
            present = [n for n in names if n in set(await admin.list_topics())]
            if present:
                await admin.delete_topics(present)
            return present
        finally:
            await admin.close()

    return asyncio.run(go())


def delete_connector(client: ConnectClient, spec: ConnectorSpec, creds: Credentials, kafka_bootstrap: str,
                     *, drop_slot: bool, log_fn: Callable[[str], None] = print) -> None:
    """Delete ``spec``'s connector; with ``drop_slot`` also everything that would make a re-created one resume.

    Kafka Connect keeps a connector's offsets after DELETE. A connector re-created under the
    same name would read them and resume streaming from a position in a slot that no longer
    exists, skipping the snapshot (rows written in between are lost). So ``drop_slot``
    resets the offsets first, even when the connector was already deleted without them
    being reset (it is re-created STOPPED for that: Connect answers for offsets only while
    the connector exists), then drops the PostgreSQL slot and publication, or the
    MariaDB/MySQL schema-history topic.
    """
    name = spec.name
    exists = client.get_config(name) is not None
    if not drop_slot:
        if exists:
            client.delete(name)
            log_fn(f"{name}: deleted (offsets and the replication slot stay; --drop-slot removes them)")
        else:
            log_fn(f"{name}: not in Kafka Connect; nothing deleted")
        return
    if exists:
        client.stop(name)
    else:
        from cdcstream.ops.credentials import config_credentials

        user, password = config_credentials(spec, creds)  # provider mode: placeholders, never the value
        client.create_stopped(name, debezium.build(spec, user=user, password=password,
                                                   kafka_bootstrap=kafka_bootstrap))
    client.wait_state(name, ("STOPPED",), tasks=False, timeout=60)
    client.reset_offsets(name)
    log_fn(f"{name}: stopped, offsets reset")
    client.delete(name)
    log_fn(f"{name}: deleted")
    if spec.connection.kind == "postgres":
        for line in drop_slot_and_publication(spec, creds):
            log_fn(line)
    else:
        _delete_binlog_topics(kafka_bootstrap, spec, log_fn)


def _delete_binlog_topics(kafka_bootstrap: str, spec: ConnectorSpec, log_fn: Callable[[str], None]) -> None:
    """MariaDB/MySQL: the schema history, and the Kafka signal topic (a re-created connector would
    otherwise replay old signals)."""
    history, signals = debezium.schema_history_topic(spec), debezium.signal_topic(spec)
    for topic in _delete_topics(kafka_bootstrap, [history, signals]):
        log_fn(f"deleted {'schema-history' if topic == history else 'signal'} topic {topic}")


def _connector_topics(kafka_bootstrap: str, spec: ConnectorSpec | str) -> list[str]:
    """The topics ``spec``'s connector (or the connector with topic prefix ``spec``) writes that
    exist now: ``<prefix>`` (MariaDB/MySQL schema changes), ``<prefix>.*`` (tables, signal and
    heartbeat tables) and Debezium's heartbeat topic."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    prefix = spec if isinstance(spec, str) else spec.prefix

    async def go() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
        await admin.start()
        try:
            return sorted(t for t in await admin.list_topics()
                          if t == prefix or t.startswith(prefix + ".") or t == f"__debezium-heartbeat.{prefix}")
        finally:
            await admin.close()

    return asyncio.run(go())


def remove_connector(client: ConnectClient, spec: ConnectorSpec, creds: Credentials, kafka_bootstrap: str,
                     *, topics: bool = True, resolver: Resolver | None = None,
                     log_fn: Callable[[str], None] = print) -> None:
    """Remove ``spec``'s connector and what it leaves behind, so that nothing of it stays.

    A connector that exists in Kafka Connect goes through ``delete_connector(drop_slot=True)``
    (stopped, offsets reset, deleted; then the PostgreSQL slot and publication, or the
    MariaDB/MySQL schema-history topic). One that does not exist only loses its slot and
    publication or its schema-history topic: nothing is created in Connect to reach offsets
    (``delete_connector`` does that). With ``topics``, its topics go last (``<prefix>``,
    ``<prefix>.*`` and ``__debezium-heartbeat.<prefix>``); a task still running would
    re-create them, so they follow the connector. ``creds`` only need to reach the source
    database (a superuser does). Its credential files go last, and with a ``resolver`` its Vault
    leases are revoked first (``forget_credentials``). A failing step raises: the later ones would
    fail or be undone.
    """
    if client.get_config(spec.name) is not None:
        delete_connector(client, spec, creds, kafka_bootstrap, drop_slot=True, log_fn=log_fn)
    elif spec.connection.kind == "postgres":
        for line in drop_slot_and_publication(spec, creds):
            log_fn(line)
    else:
        _delete_binlog_topics(kafka_bootstrap, spec, log_fn)
    if topics:
        for topic in _delete_topics(kafka_bootstrap, _connector_topics(kafka_bootstrap, spec)):
            log_fn(f"deleted topic {topic}")
    for line in forget_credentials(spec, resolver):
        log_fn(f"{spec.name}: {line}")


def delete_connector_topics(kafka_bootstrap: str, prefix: str) -> list[str]:
    """Delete the topics of the connector whose topic prefix is ``prefix`` (``connectors delete
    --topics``): what a re-created connector with another partition count needs gone, since Kafka
    keeps a topic's partition count. The connector must be stopped or deleted first (a running
    task re-creates them). Returns the topics deleted."""
    return _delete_topics(kafka_bootstrap, _connector_topics(kafka_bootstrap, prefix))


def inline_credentials_finding(spec: ConnectorSpec) -> Finding | None:
    """A connector whose password Kafka Connect would store in plaintext (``inline`` mode): its
    config topic keeps every config it was ever given, so anyone who reads that topic reads it."""
    if spec.credential_mode != "inline":
        return None
    literal = isinstance(spec.connection.password, SecretRef) and spec.connection.password.scheme == "literal"
    why = "a literal password in the YAML" if literal else "credentials.mode: inline"
    fix = ("use a secret reference for connection.password (env:NAME, file:/path or vault:mount/path#key), "
           "which selects provider mode" if literal else
           "remove `credentials.mode: inline` (a secret reference defaults to provider mode)")
    return Finding(
        "warning",
        f"connector {spec.name}: inline credentials ({why}): the database password will be stored in plaintext "
        f"in Kafka Connect's config topic (config.storage.topic, cdcstream-connect-configs on the local stack) "
        f"and returned by GET /connectors/{spec.name}/config",
        f"{fix}; the Connect worker then reads it from a 0600 file (docs/vault.md, \"Injection modes\")")


def partitions_finding(spec: ConnectorSpec, worker_partitions: int) -> Finding | None:
    """A connector whose topics get a partition count the worker refuses (it checks every captured
    topic against its ``partitions`` setting at start)."""
    if spec.partitions == worker_partitions:
        return None
    return Finding(
        "warning",
        f"connector {spec.name} declares partitions: {spec.partitions}, the worker expects "
        f"{worker_partitions} (CDCSTREAM_PARTITIONS): its topics would be created with {spec.partitions} "
        f"partitions and the worker would refuse to start",
        f"set partitions: {worker_partitions} on {spec.name} (or CDCSTREAM_PARTITIONS={spec.partitions} for "
        f"every worker); topics already created with another count stay until "
        f"`cdcstream connectors delete {spec.name} --drop-slot --topics`")


def topic_partitions(kafka_bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
        await admin.start()
        try:
            present = [n for n in names if n in set(await admin.list_topics())]
            if not present:
                return {}
            return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(present)}
        finally:
            await admin.close()

    return asyncio.run(go())


def topic_partition_findings(spec: ConnectorSpec, kafka_bootstrap: str, worker_partitions: int) -> list[Finding]:
    """Captured topics that already exist with a partition count the worker refuses: correcting
    the YAML does not change them (Kafka keeps a topic's count), deleting them does."""
    names = [f"{spec.prefix}.{t.name}" for t in spec.tables]
    try:
        counts = topic_partitions(kafka_bootstrap, names)
    except Exception as e:  # noqa: BLE001 - a plan reports what it could not check, it does not crash
        return [Finding("warning", f"could not check the partitions of {spec.name}'s topics "
                                   f"({type(e).__name__})", "is Kafka reachable at " + kafka_bootstrap + "?")]
    return [Finding("warning", f"topic {name} has {n} partitions, the worker expects {worker_partitions}: "
                               f"the worker refuses to start while it exists",
                    f"`cdcstream connectors delete {spec.name} --drop-slot --topics`, then `cdcstream connectors "
                    f"apply` (a fresh snapshot into topics with partitions: {spec.partitions})")
            for name, n in sorted(counts.items()) if n != worker_partitions]


# MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR and may show REPLICATION SLAVE as
# REPLICATION REPLICA: either spelling grants it.
_MARIADB_ALIASES = {"BINLOG MONITOR": "REPLICATION CLIENT", "REPLICATION REPLICA": "REPLICATION SLAVE"}
#: Debezium's tutorial grants, which the fixes name.
MARIADB_GRANTS = "SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT"


def _split_privileges(text: str) -> list[str]:
    """``SELECT (a, b), INSERT`` -> ``["SELECT", "INSERT"]``: commas inside column lists don't split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [re.sub(r"\s*\(.*\)\s*$", "", p).strip().upper() for p in out if p.strip()]


def mariadb_privileges(grant_lines: list[str]) -> dict[str, set[str]]:
    """What ``SHOW GRANTS`` grants, by target: ``*.*``, ``db.*`` or ``db.table`` (quotes removed)
    -> privilege names (``ALL`` for ALL PRIVILEGES; aliases spelled as in MySQL). Role lines
    (``GRANT role TO user``) carry no target and are skipped: the active role's own grants are
    listed by SHOW GRANTS as lines of their own."""
    out: dict[str, set[str]] = {}
    for line in grant_lines:
        m = re.match(r"^GRANT\s+(.+?)\s+ON\s+(?:TABLE\s+)?(\S+)\s+TO\s", line, re.IGNORECASE)
        if not m:
            continue
        target = m.group(2).replace("`", "")
        privs = {_MARIADB_ALIASES.get(p, p) for p in _split_privileges(m.group(1))}
        privs = {"ALL" if p in ("ALL", "ALL PRIVILEGES") else p for p in privs}
        out.setdefault(target, set()).update(privs)
    return out


def mariadb_has(privileges: dict[str, set[str]], priv: str, db: str | None = None, table: str | None = None) -> bool:
    """Whether ``priv`` is granted on ``db.table`` (or on the database, or globally)."""
    targets = ["*.*"] + ([f"{db}.*"] if db else []) + ([f"{db}.{table}"] if db and table else [])
    return any(priv in privileges.get(t, ()) or "ALL" in privileges.get(t, ()) for t in targets)


def _mariadb_grant_findings(spec: ConnectorSpec, user: str, privs: dict[str, set[str]],
                            existing: set[str]) -> list[Finding]:
    """Missing grants named as grants (not as the symptom Debezium would show later)."""
    out: list[Finding] = []
    db = spec.connection.database
    to = f"'{user}'@'%'"
    missing = [p for p in ("REPLICATION SLAVE", "REPLICATION CLIENT") if not mariadb_has(privs, p)]
    if missing:
        out.append(Finding("error", f"user {user} lacks {' and '.join(missing)} (ON *.*): Debezium reads the "
                                    f"binary log as a replica",
                           f"GRANT {MARIADB_GRANTS} ON *.* TO {to}"))
    no_select = [t.name for t in spec.tables if not mariadb_has(privs, "SELECT", t.schema_name, t.table_name)]
    if no_select:
        out.append(Finding("error", f"user {user} lacks SELECT on {', '.join(no_select)}: the snapshot reads them",
                           f"GRANT {MARIADB_GRANTS} ON *.* TO {to} (or GRANT SELECT ON `{db}`.* TO {to})"))
    if spec.snapshot_mode not in ("no_data", "never") and not mariadb_has(privs, "RELOAD"):
        out.append(Finding("warning", f"user {user} lacks RELOAD: the initial snapshot cannot take the global read "
                                      f"lock (FLUSH TABLES WITH READ LOCK) and locks each table instead",
                           f"GRANT RELOAD ON *.* TO {to} (part of {MARIADB_GRANTS})"))
    if spec.read_only:
        return out
    # The signal and heartbeat tables are created (unless they exist) and written in the source.
    own = [debezium.signal_table(spec), debezium.heartbeat_table(spec)]
    need: list[str] = []
    for name in own:
        sdb, table = name.split(".")
        wanted = (["CREATE"] if name not in existing else []) + ["INSERT", "UPDATE"]
        need += [p for p in wanted if not mariadb_has(privs, p, sdb, table) and p not in need]
    if need:
        out.append(Finding(
            "error", f"user {user} lacks {', '.join(need)} on `{db}`: the signal table {own[0]} and the heartbeat "
                     f"table {own[1]} are created and written there",
            f"GRANT CREATE, INSERT, UPDATE ON `{db}`.* TO {to}; or set read_only: true on connector {spec.name} "  # noqa: S608 - a message
            f"to write nothing to the source (incremental snapshots are then signalled through Kafka)"))
    return out


def preflight_mariadb(spec: ConnectorSpec, creds: Credentials) -> list[Finding]:
    """Server settings, grants, tables and their keys, read the way that works for a user with
    Debezium's tutorial grants only (global SELECT etc.): MariaDB hides
    ``information_schema.table_constraints`` rows from such a user, while ``STATISTICS`` (what
    SHOW KEYS reads) answers for every table it may SELECT from."""
    out: list[Finding] = []
    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                    "('log_bin', 'binlog_format', 'binlog_row_image', 'server_id')")
        v = {k.lower(): str(val) for k, val in cur.fetchall()}
        if v.get("log_bin", "OFF").upper() != "ON":
            out.append(Finding("error", "the binary log is off", "start the server with --log-bin"))
        if v.get("binlog_format", "").upper() != "ROW":
            out.append(Finding("error", f"binlog_format is {v.get('binlog_format')}, Debezium needs ROW",
                               "SET GLOBAL binlog_format = 'ROW' (and in the server config)"))
        if v.get("binlog_row_image", "").upper() != "FULL":
            out.append(Finding("error", f"binlog_row_image is {v.get('binlog_row_image')}, needs FULL",
                               "SET GLOBAL binlog_row_image = 'FULL' (and in the server config)"))
        if v.get("server_id") in (None, "0"):
            out.append(Finding("error", "server_id is 0", "set server_id to a unique non-zero value"))
        cur.execute("SHOW GRANTS")
        privs = mariadb_privileges([r[0] for r in cur.fetchall()])
        cur.execute("SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables "
                    "WHERE table_schema IN %s", (sorted({t.schema_name for t in spec.tables}
                                                        | {spec.connection.database}),))
        existing = {r[0] for r in cur.fetchall()}
        out += _mariadb_grant_findings(spec, creds.user, privs, existing)
        unreadable = {t.name for t in spec.tables if not mariadb_has(privs, "SELECT", t.schema_name, t.table_name)}
        for t in spec.tables:
            if t.name in unreadable:
                continue  # invisible without SELECT: the grant is the finding, not "does not exist"
            if t.name not in existing:
                out.append(Finding("error", f"table {t.name} does not exist", f"create it or remove it from "
                                                                              f"connector {spec.name}"))
                continue
            cur.execute("SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = %s "
                        "AND table_name = %s AND index_name = 'PRIMARY'", (t.schema_name, t.table_name))
            if cur.fetchone()[0] == 0 and not t.id_columns:
                out.append(Finding("error", f"table {t.name} has no primary key",
                                   "add one, or give id_columns for it in the config"))
    return out


def setup_mariadb(spec: ConnectorSpec, creds: Credentials, kafka_bootstrap: str) -> list[str]:
    """The signal and heartbeat tables; for a ``read_only`` connector nothing in the source, only
    its signal topic in Kafka (one partition, as Debezium's Kafka signal channel requires)."""
    if spec.read_only:
        topic = debezium.signal_topic(spec)
        return [f"created signal topic {topic}"] if _create_topic(kafka_bootstrap, topic) else []
    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        for name, ddl in (
            (debezium.signal_table(spec),
             "CREATE TABLE IF NOT EXISTS `{}`.`{}` (id VARCHAR(64) PRIMARY KEY, type VARCHAR(32) NOT NULL, "
             "data TEXT)"),
            (debezium.heartbeat_table(spec), "CREATE TABLE IF NOT EXISTS `{}`.`{}` (id INT PRIMARY KEY, "
                                             "ts DATETIME(6))"),
        ):
            db, table = name.split(".")
            cur.execute(ddl.format(db, table))
    return []


def _create_topic(kafka_bootstrap: str, name: str) -> bool:
    """Create ``name`` with one partition unless it exists; True when created."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
        await admin.start()
        try:
            if name in set(await admin.list_topics()):
                return False
            await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
            return True
        finally:
            await admin.close()

    return asyncio.run(go())


def _send_kafka_signal(kafka_bootstrap: str, topic: str, key: str, value: dict[str, Any]) -> int:
    """Produce one Debezium signal (key: the connector's topic prefix); returns its offset."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def go() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", request_timeout_ms=15000)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, json.dumps(value).encode(), key=key.encode())
            return int(meta.offset)
        finally:
            await producer.stop()

    return asyncio.run(go())


# --- plan / apply -------------------------------------------------------------------
def plan_connector(spec: ConnectorSpec, client: ConnectClient, creds: Credentials, kafka_bootstrap: str,
                   *, check: bool = True, worker_partitions: int | None = None) -> ConnectorPlan:
    """Desired vs actual config and the preflight findings; with ``worker_partitions`` (the
    worker's ``partitions`` setting) also a warning when the connector's differs."""
    from cdcstream.ops.credentials import config_credentials

    actual = client.get_config(spec.name)
    user, password = config_credentials(spec, creds)  # provider mode: ${dir:...} placeholders
    desired = debezium.build(spec, user=user, password=password, kafka_bootstrap=kafka_bootstrap)
    inline = inline_credentials_finding(spec)
    findings: list[Finding] = [inline] if inline is not None else []
    if check:
        if spec.connection.kind == "postgres":
            findings = preflight_postgres(spec, creds, existing_slot=actual is not None)
        elif spec.connection.kind == "mariadb":
            findings = preflight_mariadb(spec, creds)
    if worker_partitions is not None:
        pf = partitions_finding(spec, worker_partitions)
        if pf is not None:
            findings.append(pf)
        findings += topic_partition_findings(spec, kafka_bootstrap, worker_partitions)
    if actual is None:
        action = "create"
    else:
        a = {k: v for k, v in actual.items() if k != "name"}
        action = "unchanged" if a == desired else "update"
    added: list[str] = []
    if actual is not None:
        before = set(actual.get("table.include.list", "").split(","))
        added = [t.name for t in spec.tables if debezium.include_pattern(t.name) not in before]
    return ConnectorPlan(spec.name, action, desired, actual, added, findings)


def signal_snapshot(spec: ConnectorSpec, creds: Credentials, tables: list[str],
                    filters: dict[str, str] | None = None, kafka_bootstrap: str | None = None) -> str:
    """Ask Debezium for an incremental snapshot of ``tables``: through the signal table, or for a
    ``read_only`` connector through its Kafka signal topic (``kafka_bootstrap``, default: the
    settings'). Returns the signal's id (``<topic>@<offset>`` for a Kafka signal)."""
    import uuid

    # schema.table (PostgreSQL) or database.table (MariaDB), as written in the config.
    data: dict[str, Any] = {"data-collections": tables, "type": "incremental"}
    if filters:
        data["additional-conditions"] = [{"data-collection": t, "filter": f} for t, f in filters.items()]
    if spec.read_only:
        if kafka_bootstrap is None:
            from cdcstream.core.settings import Settings

            kafka_bootstrap = Settings().kafka_bootstrap
        topic = debezium.signal_topic(spec)
        offset = _send_kafka_signal(kafka_bootstrap, topic, spec.prefix, {"type": "execute-snapshot", "data": data})
        return f"{topic}@{offset}"
    sid = f"cdcstream-{uuid.uuid4().hex[:12]}"
    sig_schema, sig_table = debezium.signal_table(spec).split(".")
    if spec.connection.kind == "postgres":
        from psycopg import sql

        with connect_postgres(spec, creds) as conn:
            conn.execute(sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)").format(
                sql.Identifier(sig_schema, sig_table)), (sid, json.dumps(data)))
    else:
        with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO `{sig_schema}`.`{sig_table}` (id, type, data) "  # noqa: S608 - validated names
                        "VALUES (%s, 'execute-snapshot', %s)", (sid, json.dumps(data)))
    return sid


def _row_count(spec: ConnectorSpec, creds: Credentials, table: str) -> int:
    schema, name = table.split(".")
    if spec.connection.kind == "postgres":
        from psycopg import sql

        with connect_postgres(spec, creds) as conn:
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
                                    ).fetchone()[0])
    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{schema}`.`{name}`")  # noqa: S608 - validated names
        return int(cur.fetchone()[0])


def snapshot_added_tables(client: ConnectClient, spec: ConnectorSpec, creds: Credentials, tables: list[str],
                          settle_s: float = 6.0, confirm_s: float = 45.0, attempts: int = 3,
                          kafka_bootstrap: str | None = None) -> str:
    """Snapshot tables just added to a running connector, and make sure it really started.

    A PUT of the config restarts the task; a signal read by the old task just before it stops
    is lost with it (the new task then ignores the orphaned snapshot windows). So: wait for
    the restarted task to settle, signal, and confirm by the table's topic appearing; resend
    if it does not. Empty tables need no snapshot.
    """
    import time

    pending = [t for t in tables if _row_count(spec, creds, t) > 0]
    if not pending:
        return "none (tables empty)"
    sid = ""
    for _ in range(attempts):
        client.wait_state(spec.name, timeout=120)
        time.sleep(settle_s)
        sid = signal_snapshot(spec, creds, pending, kafka_bootstrap=kafka_bootstrap)
        deadline = time.monotonic() + confirm_s
        while time.monotonic() < deadline:
            produced = set(client.topics(spec.name))
            if all(f"{spec.prefix}.{t}" in produced for t in pending):
                return sid
            time.sleep(1.0)
        log.warning("incremental snapshot %s of %s not started yet; signalling again", sid, pending)
    raise RuntimeError(f"incremental snapshot of {', '.join(pending)} did not start after {attempts} signals; "
                       f"check `cdcstream connectors status {spec.name}` and the Connect log")


@dataclass
class ApplyResult:
    plans: list[ConnectorPlan]
    actions: list[str]


def apply(config: Config, client: ConnectClient, resolver: Resolver, kafka_bootstrap: str,
          log_fn: Callable[[str], None] = print, app_id: str | None = None) -> ApplyResult:
    """Create or update every connector. With ``app_id`` (the worker's), a connector created
    (again) starts a new generation in that worker's stats (``cdcstream/ops/generations.py``), so
    the status page counts this life of its tables only."""
    plans: list[ConnectorPlan] = []
    actions: list[str] = []
    for spec in config.connectors:
        creds = resolve_credentials(spec, resolver, issue=True)
        p = plan_connector(spec, client, creds, kafka_bootstrap)
        plans.append(p)
        errors = [f for f in p.findings if f.level == "error"]
        if errors:
            raise PreflightError(f"connector {spec.name}: preflight failed; nothing applied:\n"
                                 + "\n".join(f"  {f}" for f in errors))
        if spec.connection.kind == "postgres":
            actions += setup_postgres(spec, creds)
        elif spec.connection.kind == "mariadb":
            actions += setup_mariadb(spec, creds, kafka_bootstrap)
        from cdcstream.ops.credentials import deliver

        # Provider mode: the files the Connect worker reads; a running connector only sees new values
        # after a restart of it and its tasks (its config, all placeholders, is unchanged).
        if deliver(spec, creds) and p.action == "unchanged":
            client.restart(spec.name, include_tasks=True)
            actions.append(f"restarted connector {spec.name}: its credential files changed")
        if p.action == "unchanged":
            continue
        if spec.connection.kind == "mysql":
            # "name" is part of what Connect validates: without it every config has one error.
            v = client.validate(p.desired["connector.class"], {**p.desired, "name": spec.name})
            if not v.ok:
                raise PreflightError(f"connector {spec.name}: Kafka Connect refused the config: {v.errors}")
        if p.action == "create" and app_id is not None:
            from cdcstream.ops.generations import record_generation

            # Before the connector exists: its first event then belongs to the new generation.
            gen = record_generation(kafka_bootstrap, app_id, spec)
            if gen is not None and gen.number > 1:
                actions.append(f"generation {gen.number} of connector {spec.name}: stats of its tables start again")
        client.put_config(spec.name, p.desired)
        actions.append(f"{p.action}d connector {spec.name}")
        if p.added_tables:
            sid = snapshot_added_tables(client, spec, creds, p.added_tables, kafka_bootstrap=kafka_bootstrap)
            actions.append(f"incremental snapshot {sid} of {', '.join(p.added_tables)} (existing rows)")
    for a in actions:
        log_fn(a)
    return ApplyResult(plans, actions)
