"""Smoke test of MariaDB -> Debezium MariaDbConnector -> Kafka on the running stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import requests
from aiokafka import AIOKafkaConsumer

from cdcstream.stack.manager import Stack
from tests.support import WaitTimeout, delete_topics, topics_under, wait_until

pytestmark = pytest.mark.integration

MARIADB_CONNECTOR = "io.debezium.connector.mariadb.MariaDbConnector"


@pytest.fixture(scope="module")
def stack() -> dict[str, dict[str, Any]]:
    states = {s.name: s for s in Stack(only=["mariadb", "kafka", "connect"]).status()}
    down = [f"{n} is {s.state}" for n, s in states.items() if s.state != "running"]
    if down:
        pytest.fail(f"{', '.join(down)}; start them with `cdcstream stack up`")
    return {n: s.as_dict() for n, s in states.items()}


def _connect(info: dict[str, Any]) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host=info["host"], port=info["port"], user=info["user"], password=info["password"],
                           autocommit=True, connect_timeout=5)


@pytest.fixture
def database(stack: dict[str, dict[str, Any]]) -> Iterator[str]:
    db = f"dbz_{uuid.uuid4().hex[:12]}"
    conn = _connect(stack["mariadb"])
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"CREATE TABLE `{db}`.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
                    "price DECIMAL(10,2) NOT NULL)")
        cur.execute(f"INSERT INTO `{db}`.items VALUES (1, 'before snapshot', 1.50)")
    try:
        yield db
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()


def _wait_running(rest: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def running() -> dict[str, Any] | None:
        r = requests.get(f"{rest}/connectors/{name}/status", timeout=5)
        if r.status_code != 200:
            return None
        status: dict[str, Any] = r.json()
        last.update(status)
        tasks = status.get("tasks", [])
        if any(t.get("state") == "FAILED" for t in tasks) or status["connector"]["state"] == "FAILED":
            pytest.fail(f"connector failed: {json.dumps(status)[:4000]}")
        if status["connector"]["state"] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
            return status
        return None

    # Any exception (Connect unreachable included) fails at once, as it always did here.
    status = wait_until(running, timeout, what=f"connector {name} RUNNING", retry_on=(), detail=lambda: str(last))
    assert status is not None  # wait_until returns a truthy result
    return status


def _stop_and_delete(rest: str, name: str, timeout: float = 30.0) -> None:
    requests.put(f"{rest}/connectors/{name}/stop", timeout=30)

    def stopped_or_gone() -> bool:
        r = requests.get(f"{rest}/connectors/{name}/status", timeout=5)
        if r.status_code != 200:
            return True
        status = r.json()
        return bool(status["connector"]["state"] == "STOPPED" and not status.get("tasks"))

    with contextlib.suppress(WaitTimeout):  # deleted anyway after the timeout
        wait_until(stopped_or_gone, timeout, 0.3, what=f"connector {name} stopped", retry_on=())
    requests.delete(f"{rest}/connectors/{name}", timeout=30)


async def test_insert_reaches_kafka(stack: dict[str, dict[str, Any]], database: str) -> None:
    rest = stack["connect"]["rest"]
    bootstrap = stack["kafka"]["bootstrap_servers"]
    maria = stack["mariadb"]
    prefix = f"smoke_{database}"
    name = f"smoke-mariadb-{database}"
    history_topic = f"{prefix}.schema-history"
    topic = f"{prefix}.{database}.items"
    config = {
        "connector.class": MARIADB_CONNECTOR,
        "tasks.max": "1",
        "database.hostname": maria["host"],
        "database.port": str(maria["port"]),
        "database.user": maria["user"],
        "database.password": maria["password"],
        # Must differ from the server's own server-id and from any other binlog client.
        "database.server.id": str(random.randint(10_000, 2**31 - 1)),
        "topic.prefix": prefix,
        "database.include.list": database,
        "schema.history.internal.kafka.bootstrap.servers": bootstrap,
        "schema.history.internal.kafka.topic": history_topic,
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
    }
    r = requests.post(f"{rest}/connectors", json={"name": name, "config": config}, timeout=30)
    assert r.status_code == 201, r.text
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, metadata_max_age_ms=1000)
    try:
        await asyncio.to_thread(_wait_running, rest, name)
        await consumer.start()
        events: list[dict[str, Any]] = []
        inserted = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for rec in records:
                    if rec.value is not None:
                        value = json.loads(rec.value)
                        events.append(value.get("payload", value))
            ops = [(e["op"], e["after"]["id"]) for e in events if e.get("after")]
            if ("r", 1) in ops and not inserted:
                # Snapshot done: this insert can only arrive through the binlog.
                conn = _connect(maria)
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO `{database}`.items VALUES (2, 'streamed', 9.99)")
                conn.close()
                inserted = True
            if ("c", 2) in ops:
                break
        created = [e for e in events if e.get("op") == "c"]
        assert created, f"no insert event on {topic}; saw {[(e.get('op'), e.get('after')) for e in events]}"
        event = created[0]
        assert event["after"]["name"] == "streamed"
        assert event["source"]["connector"] == "mariadb"
        assert event["source"]["db"] == database
        assert event["source"]["table"] == "items"
        assert event["source"]["file"].startswith("mariadb-bin.")
    finally:
        await consumer.stop()
        # DELETE alone returns before the task stops; a still-running task would capture the
        # fixture's DROP DATABASE and re-create the topics deleted below.
        await asyncio.to_thread(_stop_and_delete, rest, name)
        await asyncio.to_thread(delete_topics, topics_under(prefix), bootstrap=bootstrap)
