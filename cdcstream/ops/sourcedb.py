"""Connections to the source databases, with the connector's credentials (blocking drivers:
call from the CLI or in an executor)."""

from __future__ import annotations

from typing import Any

from cdcstream.core.config import ConnectorSpec
from cdcstream.ops.credentials import Credentials


# --- PostgreSQL ---------------------------------------------------------------------
def connect_postgres(spec: ConnectorSpec, creds: Credentials) -> Any:
    import psycopg

    c = spec.connection
    return psycopg.connect(host=c.host, port=c.effective_port, dbname=c.database, user=creds.user,
                           password=creds.password, autocommit=True, connect_timeout=10,
                           sslmode=c.tls.mode, sslrootcert=str(c.tls.ca_file) if c.tls.ca_file else None)


# --- MariaDB / MySQL ----------------------------------------------------------------
def connect_mariadb(spec: ConnectorSpec, creds: Credentials) -> Any:
    import pymysql

    c = spec.connection
    return pymysql.connect(host=c.host, port=c.effective_port, user=creds.user, password=creds.password,
                           database=c.database, autocommit=True, connect_timeout=10)

