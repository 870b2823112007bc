"""The README's main job, `make run` = `cdcstream stack up` + `cdcstream demo`, on the real stack:
the demo database seeded, its connector applied (provider-mode credentials: its password is an
`env:` reference), and the worker mirroring one table per profile.

Before this test nothing ran `cdcstream demo` beyond parsing it, and it was broken unnoticed: the
package layout of issue 15 moved the CLI one level down, so `cdcstream demo` looked for
`cdcstream/examples/demo.yaml` and the worker refused to start ("no such config file").
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from cdcstream.ops.demo import DEMO_DB, DEMO_PASSWORD
from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.harness import ROOT, stop_process
from tests.support import CONNECTION_ERRORS, free_port, removal_spec, teardown_connector, topics_starting, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CONNECTOR = "demo-pg"
ALIASES = [f"{CONNECTOR}-public-orders", f"{CONNECTOR}-public-articles", f"{CONNECTOR}-public-articles-chunks"]


def _count(es: str, alias: str) -> int:
    requests.post(f"{es}/{alias}/_refresh", timeout=10)
    r = requests.get(f"{es}/{alias}/_count", timeout=10)
    return int(r.json()["count"]) if r.status_code == 200 else 0


def _drop_indices(es: str) -> None:
    for alias in ALIASES:
        r = requests.get(f"{es}/_alias/{alias}", timeout=10)
        for index in (r.json() if r.status_code == 200 else {}):
            requests.delete(f"{es}/{index}", timeout=30)


def _new_objects(obj: dict[str, Any], since: datetime.datetime) -> list[str]:
    """Objects the demo's archive (``s3://<bucket>/demo``, as `cdcstream demo` sets it) got since ``since``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=obj["endpoint"], aws_access_key_id=obj["access_key"],
                      aws_secret_access_key=obj["secret_key"], region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=obj["bucket"], Prefix="demo/")
    return [o["Key"] for page in pages for o in page.get("Contents", []) if o["LastModified"] >= since]


def test_make_run_mirrors_the_demo_database(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect", "postgres", "embeddings"):
        require(svc)
    es, obj = require("elasticsearch")["url"], require("objectstore")
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)  # clock skew margin
    port = free_port()
    app_id = f"e2e-demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CDCSTREAM_WEB_PORT": str(port), "CDCSTREAM_APP_ID": app_id,
           "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "2"}
    _drop_indices(es)  # a user's earlier `make run` on this machine
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "demo"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def tables() -> dict[str, Any]:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            r = requests.get(f"http://127.0.0.1:{port}/api/tables", timeout=5)
            return {t["name"].rsplit(".", 1)[-1]: t for t in r.json()["tables"]}

        def exited() -> str | None:
            return None if proc.poll() is None else f"`cdcstream demo` exited ({proc.returncode})"

        wait_until(lambda: _count(es, ALIASES[0]) >= 3 and _count(es, ALIASES[2]) >= 3, timeout=300,
                   what="the demo's orders and article chunks in Elasticsearch", retry_on=CONNECTION_ERRORS,
                   abort=exited, detail=lambda: log.read_text(errors="replace")[-4000:])
        wait_until(lambda: any("audit_log" in k for k in _new_objects(obj, started)), timeout=120,
                   what="the demo's audit log archived in the object store", abort=exited,
                   detail=lambda: log.read_text(errors="replace")[-4000:])
        # Provider mode by default: Connect holds a placeholder, never the password.
        config = ConnectClient().get_config(CONNECTOR)
        assert config is not None and config["database.password"].startswith("${dir:"), config
        assert DEMO_PASSWORD not in str(config)
        status = tables()
        assert {n: status[n]["profile"] for n in ("articles", "orders", "audit_log")} == {
            "articles": "full", "orders": "index_only", "audit_log": "archive"}
        assert all(status[n]["dlq"] == 0 for n in status), status
        assert requests.get(f"http://127.0.0.1:{port}/status", timeout=10).status_code == 200
    finally:
        stop_process(proc)  # the supervisor and its worker: one process group
        teardown_connector(removal_spec(CONNECTOR, "postgres", DEMO_DB, port=5432),
                           also_topics=topics_starting(app_id))
        _drop_indices(es)
