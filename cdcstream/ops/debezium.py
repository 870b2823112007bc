"""Debezium connector configs built from a ``ConnectorSpec``.

Choices made here, for every connector (docs/connectors.md explains them to operators):

* JsonConverter with ``schemas.enable=true`` for keys and values: the Faust side decodes
  logical types (Decimal, MicroTimestamp, ...) exactly from the schema in each record.
* Decimals travel exactly, never as ``double`` (loses digits). MariaDB/MySQL:
  ``decimal.handling.mode=precise`` (unscaled bytes and a scale). PostgreSQL:
  ``decimal.handling.mode=string`` with ``datatype.propagate.source.type`` for NUMERIC,
  DECIMAL and MONEY: the exact text, and the schema still says it is a decimal (the
  decoder and the mapping read ``__debezium.source.column.type``). Precise mode cannot carry
  NUMERIC's ``NaN``/``Infinity``/``-Infinity`` (it sends null); string mode sends ``NAN``,
  ``POSITIVE_INFINITY``, ``NEGATIVE_INFINITY`` (seen on the real stack, Debezium 3.6).
* ``time.precision.mode=adaptive_time_microseconds``: timestamps keep the column's own
  precision (ms or us), TIME is always microseconds.
* Tombstones on: a delete is followed by a null-valued record, so compacted topics forget
  deleted rows.
* ``topic.creation.default.partitions`` = the spec's ``partitions`` for every captured
  topic: per-row state in Faust is co-partitioned with the topics by construction.
* PostgreSQL: pgoutput; slot and publication names derived from the connector name;
  ``publication.autocreate.mode=disabled`` because ``cdcstream connectors apply`` creates
  the publication itself (owned by the table owner, so a revocable dynamic user never owns it).
* Truncate: PostgreSQL and MariaDB/MySQL emit op ``t`` (``skipped.operations=none``; the binlog
  connectors turn a ``TRUNCATE TABLE`` statement into one); the mirror drops the table's
  documents. DDL: PostgreSQL emits none (new columns simply appear); MariaDB writes DDL to the
  schema-change topic ``<prefix>``, which the worker logs and otherwise ignores.
* ``read_only`` (MariaDB/MySQL): no signal or heartbeat table in the source; ``read.only=true``
  (incremental-snapshot windows bounded by GTIDs) and signals through the Kafka topic
  ``_cdcstream.signals.<name>`` (``signal_topic``), which ``connectors apply`` creates.
"""

from __future__ import annotations

import re
import zlib

from cdcstream.core.config import ConnectorSpec, ConnectorTableConfig

PG_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
# The PostgreSQL types whose source type travels with the schema (decimals sent as text).
PG_DECIMAL_TYPES = ".+\\.NUMERIC,.+\\.DECIMAL,.+\\.MONEY"
MARIADB_CLASS = "io.debezium.connector.mariadb.MariaDbConnector"
MYSQL_CLASS = "io.debezium.connector.mysql.MySqlConnector"
CONNECTOR_CLASSES = {"postgres": PG_CLASS, "mariadb": MARIADB_CLASS, "mysql": MYSQL_CLASS}

SIGNAL_TABLE = "cdcstream_signal"
HEARTBEAT_TABLE = "cdcstream_heartbeat"


# database.ssl.mode per TLS mode of the config (``prefer`` leaves the connector's default).
MYSQL_SSL_MODES = {"disable": "disabled", "require": "required", "verify-ca": "verify_ca",
                   "verify-full": "verify_identity"}
MARIADB_SSL_MODES = {"disable": "disable", "require": "trust", "verify-ca": "verify-ca",
                     "verify-full": "verify-full"}


class OwnedPropertyError(ValueError):
    """``extra`` tries to override a property the builder owns."""


def _ident(name: str, limit: int = 63) -> str:
    s = re.sub(r"[^a-z0-9_]", "_", name.lower())
    return s[:limit]


def slot_name(spec: ConnectorSpec) -> str:
    return _ident(f"cdcstream_{spec.name}")


def publication_name(spec: ConnectorSpec) -> str:
    return _ident(f"cdcstream_{spec.name}")


def schema_history_topic(spec: ConnectorSpec) -> str:
    """MariaDB/MySQL only: where Debezium keeps the DDL it has seen."""
    return f"_cdcstream.schema-history.{spec.name}"


def signal_topic(spec: ConnectorSpec) -> str:
    """``read_only`` connectors: the Kafka topic Debezium reads signals from (one partition, keyed
    by the topic prefix); deleted with the connector by ``delete --drop-slot``."""
    return f"_cdcstream.signals.{spec.name}"


def signal_table(spec: ConnectorSpec) -> str:
    """schema.table (PostgreSQL) or database.table (MariaDB) of the signal table."""
    if spec.signal_table:
        return spec.signal_table
    ns = "public" if spec.connection.kind == "postgres" else spec.connection.database
    return f"{ns}.{SIGNAL_TABLE}"


def heartbeat_table(spec: ConnectorSpec) -> str:
    ns = "public" if spec.connection.kind == "postgres" else spec.connection.database
    return f"{ns}.{HEARTBEAT_TABLE}"


def server_id(spec: ConnectorSpec) -> int:
    """A stable replica id per connector (MariaDB/MySQL need one unique in the replication topology)."""
    return spec.server_id or 5400 + zlib.crc32(spec.name.encode()) % 100_000


def _re(name: str) -> str:
    return re.escape(name)


def include_pattern(table: str) -> str:
    """How ``table`` appears in ``table.include.list``."""
    return _re(table)


def captured_tables(spec: ConnectorSpec) -> list[str]:
    """Every table Debezium captures: the configured ones, the signal table and the heartbeat table
    (a ``read_only`` connector has neither)."""
    own = [] if spec.read_only else [signal_table(spec), heartbeat_table(spec)]
    return [t.name for t in spec.tables] + own


def build(spec: ConnectorSpec, *, user: str, password: str, kafka_bootstrap: str = "127.0.0.1:9092",
          replication_factor: int = 1) -> dict[str, str]:
    """The Kafka Connect config for ``spec``.

    ``user``/``password`` are what goes into the config: a ``${provider:path:key}`` placeholder
    (provider mode) or the resolved value (inline mode).
    """
    kind = spec.connection.kind
    cfg: dict[str, str] = {
        "connector.class": CONNECTOR_CLASSES[kind],
        "tasks.max": "1",
        "database.hostname": spec.connection.host,
        "database.port": str(spec.connection.effective_port),
        "database.user": user,
        "database.password": password,
        "topic.prefix": spec.prefix,
        "table.include.list": ",".join(_re(t) for t in captured_tables(spec)),
        "snapshot.mode": spec.snapshot_mode,
        "heartbeat.interval.ms": str(spec.heartbeat_interval_ms),
        "signal.enabled.channels": "source",
        "incremental.snapshot.chunk.size": "1024",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "decimal.handling.mode": "precise",  # PostgreSQL: string, below
        "time.precision.mode": "adaptive_time_microseconds",
        "tombstones.on.delete": "true",
        "topic.creation.default.partitions": str(spec.partitions),
        "topic.creation.default.replication.factor": str(replication_factor),
        # 5 MB text values must fit (Kafka's broker limit is raised to match by the stack).
        "producer.override.max.request.size": "16777216",
    }
    if kind == "postgres":
        cfg.update({
            "database.dbname": spec.connection.database,
            "database.sslmode": spec.connection.tls.mode,
            "plugin.name": "pgoutput",
            "slot.name": slot_name(spec),
            "publication.name": publication_name(spec),
            "publication.autocreate.mode": "disabled",
            "signal.data.collection": signal_table(spec),  # <schema>.<table> for PostgreSQL
            "heartbeat.action.query": (
                # Identifiers were validated by the config model (letters, digits, _ and $).
                f"INSERT INTO {heartbeat_table(spec)} (id, ts) VALUES (1, now()) "  # noqa: S608
                f"ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts"),
            "skipped.operations": "none",
            "decimal.handling.mode": "string",
            "datatype.propagate.source.type": PG_DECIMAL_TYPES,
        })
    else:
        cfg.update({
            "database.server.id": str(server_id(spec)),
            "database.include.list": _re(spec.connection.database),
            "schema.history.internal.kafka.bootstrap.servers": kafka_bootstrap,
            "schema.history.internal.kafka.topic": schema_history_topic(spec),
            "include.schema.changes": "true",
            # TRUNCATE TABLE in the binlog becomes a truncate event (op t), as on PostgreSQL (the
            # connector's default skips them, leaving the truncated rows in the mirror).
            "skipped.operations": "none",
        })
        if spec.read_only:
            # Nothing is written to the source: signals come through Kafka, and the incremental
            # snapshot's chunk windows are bounded by GTIDs instead of signal-table inserts.
            cfg.update({
                "read.only": "true",
                "signal.enabled.channels": "kafka",
                "signal.kafka.topic": signal_topic(spec),
                "signal.kafka.bootstrap.servers": kafka_bootstrap,
                "signal.kafka.groupId": signal_topic(spec),
            })
        else:
            cfg.update({
                "signal.data.collection": signal_table(spec),
                "heartbeat.action.query": (
                    f"INSERT INTO {heartbeat_table(spec)} (id, ts) VALUES (1, NOW(6)) "  # noqa: S608
                    f"ON DUPLICATE KEY UPDATE ts = VALUES(ts)"),
            })
        if spec.connection.tls.mode != "prefer":
            # The two connectors spell the modes differently (MariaDB's has no "preferred").
            modes = MARIADB_SSL_MODES if kind == "mariadb" else MYSQL_SSL_MODES
            cfg["database.ssl.mode"] = modes[spec.connection.tls.mode]
    key_cols = [_key_columns(spec, t) for t in spec.tables if t.id_columns]
    if key_cols:
        cfg["message.key.columns"] = ";".join(key_cols)
    inc = [f"{_re(t.name)}\\.{_re(c)}" for t in spec.tables for c in t.include_columns]
    exc = [f"{_re(t.name)}\\.{_re(c)}" for t in spec.tables for c in t.exclude_columns]
    if inc:
        # Tables without an include list keep all their columns.
        inc += [f"{_re(t.name)}\\..*" for t in spec.tables if not t.include_columns]
        inc += [f"{_re(n)}\\..*" for n in captured_tables(spec)[len(spec.tables):]]
        cfg["column.include.list"] = ",".join(inc)
    if exc:
        cfg["column.exclude.list"] = ",".join(exc)
    owned = set(cfg)
    clash = sorted(owned & set(spec.extra))
    if clash and not spec.override_owned:
        raise OwnedPropertyError(
            f"connector {spec.name}: extra sets {', '.join(clash)}, which the builder owns; "
            f"set override_owned: true to force it")
    cfg.update(spec.extra)
    return cfg


def _key_columns(spec: ConnectorSpec, t: ConnectorTableConfig) -> str:
    return f"{_re(t.name)}:{','.join(t.id_columns)}"
