"""Smoke test of the stack's MariaDB: reachable over TCP with the status' credentials, binlog ready for Debezium."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from cdcstream.stack.manager import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mariadb_info() -> dict[str, Any]:
    (state,) = Stack(only=["mariadb"]).status()
    if state.state != "running":
        pytest.fail(f"mariadb is {state.state}; start it with `cdcstream stack up`")
    return state.as_dict()


@pytest.fixture
def conn(mariadb_info: dict[str, Any]) -> Iterator[pymysql.connections.Connection[Any]]:
    c = pymysql.connect(host=mariadb_info["host"], port=mariadb_info["port"], user=mariadb_info["user"],
                        password=mariadb_info["password"], autocommit=True, connect_timeout=5)
    try:
        yield c
    finally:
        c.close()


def test_binlog_is_row_based_and_full(conn: pymysql.connections.Connection[Any]) -> None:
    with conn.cursor() as cur:
        cur.execute("SHOW VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image')")
        variables = dict(cur.fetchall())
    assert variables == {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL"}


def test_create_insert_select(conn: pymysql.connections.Connection[Any]) -> None:
    db = f"smoke_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        try:
            cur.execute(f"CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
            cur.execute(f"INSERT INTO `{db}`.items VALUES (%s, %s), (%s, %s)", (1, "één", 2, "two"))
            cur.execute(f"SELECT id, name FROM `{db}`.items ORDER BY id")
            assert cur.fetchall() == ((1, "één"), (2, "two"))
        finally:
            cur.execute(f"DROP DATABASE `{db}`")
