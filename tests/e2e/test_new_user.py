"""Issue 20 part 5, "things a new user hit", on the real stack: `cdcstream worker --config`, a
finished snapshot shown as done once the table grew, a connector deleted and re-created under
the same name counting its tables afresh (a new generation), `connectors plan` naming a
partition count the worker would refuse, and `connectors delete --topics`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import Pipeline, pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def cli(p: Pipeline, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=env or p.env, cwd=p.tmp,
                          capture_output=True, text=True, timeout=300, check=False)


def topic_partitions(prefix: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
            return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)} if names else {}
        finally:
            await admin.close()

    return asyncio.run(go())


@pytest.fixture
def stack(require: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    for svc in ("kafka", "connect", "postgres", "elasticsearch"):
        require(svc)
    return require


def orders_view(p: Pipeline) -> dict[str, Any]:
    return dict(next(t for t in p.api("/api/tables")["tables"] if t["name"].endswith("public.orders")))


def test_worker_config_option_done_snapshot_and_a_recreated_connector_counts_afresh(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    tables = [{"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        # The config under a name the default would never find, given by --config only.
        conf = tmp_path / "conf" / "mine.yaml"
        conf.parent.mkdir()
        p.config_path.rename(conf)
        p.config_path = conf
        p.env["CDCSTREAM_CONFIG"] = str(conf)  # for the connectors commands below
        p.sql("INSERT INTO orders (id, customer, amount) SELECT g, 'c' || g, g FROM generate_series(1, 9) g")
        r = cli(p, "connectors", "apply")
        assert r.returncode == 0 and f"created connector {p.connector}" in r.stdout, r.stdout + r.stderr

        worker_env = {k: v for k, v in p.env.items() if k != "CDCSTREAM_CONFIG"}
        log = (tmp_path / "worker.log").open("ab")
        p.worker = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "worker", "--config",
                                     str(conf.relative_to(tmp_path))], env=worker_env, cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        p.wait("the snapshot done", lambda: orders_view(p)["snapshot"]["done"], timeout=180)
        snap = orders_view(p)["snapshot"]
        assert snap["rows_read"] == 9 and snap["duration_s"] is not None, snap

        # The table grows after its snapshot: the page still says done, with the snapshot's rows.
        p.sql("INSERT INTO orders (id, customer, amount) SELECT g, 'c' || g, g FROM generate_series(10, 12) g")
        p.wait("3 inserts", lambda: orders_view(p)["events"]["c"] == 3)
        page = requests.get(f"http://127.0.0.1:{p.web_port}/status", timeout=10).text
        row = re.search(r'<tr data-table="[^"]*public\.orders">(.*?)</tr>', page, re.S)
        assert row and "done" in row.group(1) and "(9 rows, " in row.group(1) and "%" not in row.group(1), page

        # Deleted (slot dropped, offsets reset) and created again: a second life snapshots 12 rows.
        r = cli(p, "connectors", "delete", p.connector, "--drop-slot")
        assert r.returncode == 0, r.stdout + r.stderr
        r = cli(p, "connectors", "apply")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"generation 2 of connector {p.connector}" in r.stdout and f"created connector {p.connector}" in r.stdout
        p.wait("the second snapshot", lambda: (lambda v: v["snapshot"]["done"] and v["stats"].get("generation") == 2
                                               and v["snapshot"]["rows_read"] == 12)(orders_view(p)), timeout=180)
        v = orders_view(p)
        # Counted from this life: 12 snapshot reads, not 9 + 12; the 3 inserts belong to the first life.
        assert v["events"]["r"] == 12 and v["events"]["c"] == 0, v
        assert v["stats"]["snapshot_rows_initial"] == 12, v["stats"]


def test_plan_warns_of_a_partition_count_the_worker_refuses_and_delete_removes_the_topics(
        tmp_path: Path, stack: Callable[[str], dict[str, Any]]) -> None:
    tables = [{"name": "public.orders", "profile": "index_only"}]
    with pipeline(tmp_path, stack("postgres"), stack("elasticsearch"), stack("embeddings"), tables) as p:
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'a', 1)")
        env = {**p.env, "CDCSTREAM_PARTITIONS": "4"}  # the connector says 2 (the harness's config)
        r = cli(p, "connectors", "plan", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (f"warning: connector {p.connector} declares partitions: 2, the worker expects 4" in r.stdout
                and f"cdcstream connectors delete {p.connector} --drop-slot --topics" in r.stdout), r.stdout
        r = cli(p, "connectors", "plan")  # the same numbers: nothing said
        assert "declares partitions" not in r.stdout, r.stdout
        r = cli(p, "connectors", "apply", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        p.wait("its topic", lambda: topic_partitions(p.connector).get(p.topic("orders")) == 2, timeout=120)

        # What the user does first: delete the connector (its slot, not its topics), correct the YAML.
        r = cli(p, "connectors", "delete", p.connector, "--drop-slot", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        # The topics stay when only the connector goes: plan names them, with the fix.
        p.config_path.write_text(p.config_path.read_text().replace('"partitions": 2', '"partitions": 4'))
        r = cli(p, "connectors", "apply", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        p.wait("its topic, again", lambda: topic_partitions(p.connector).get(p.topic("orders")) == 2, timeout=120)
        r = cli(p, "connectors", "plan", env=env)
        assert (f"warning: topic {p.topic('orders')} has 2 partitions, the worker expects 4" in r.stdout
                and "declares partitions" not in r.stdout), r.stdout
        r = cli(p, "connectors", "delete", p.connector, "--drop-slot", "--topics", env=env)
        assert r.returncode == 0 and f"deleted topic {p.topic('orders')}" in r.stdout, r.stdout + r.stderr
        r = cli(p, "connectors", "plan", env=env)
        assert "has 2 partitions" not in r.stdout and "declares partitions" not in r.stdout, r.stdout
        r = cli(p, "connectors", "apply", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        p.wait("its topic, 4 partitions", lambda: topic_partitions(p.connector).get(p.topic("orders")) == 4,
               timeout=120)
        # Without --drop-slot, and for a connector no longer in Connect: the topics alone.
        r = cli(p, "connectors", "delete", p.connector, "--topics", env=env)
        assert r.returncode == 0 and f"{p.connector}: deleted" in r.stdout, r.stdout + r.stderr
        assert topic_partitions(p.connector) == {}
        r = cli(p, "connectors", "delete", p.connector, "--topics", env=env)
        assert r.returncode == 0 and "not in Kafka Connect; deleting its topics only" in r.stdout, r.stdout



