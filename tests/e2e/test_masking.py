"""No secret value anywhere the project writes or shows: the standing leak check.

The whole flow runs in provider mode with the database password and the API token held in
Vault: apply, connector, worker, mirror. Then every place a value could leak is searched for
the real values: every log under .stack/logs and the test's tmp dir, the worker's pages and
API answers, `cdcstream connectors plan` (which must show ***), and every record of every
Kafka topic (Connect's config/offset/status topics and the app's own included). The one
place the password may be is the provider-mode file Connect reads, and it must be 0600.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import pytest

from tests.e2e.harness import ROOT, pipeline
from tests.e2e.vault_env import read_topics
from tests.support import CONNECTION_ERRORS, WorkerApi

pytestmark = pytest.mark.e2e

# No `full` table: the shared embeddings server's load must not decide whether this check runs.
TABLES = [{"name": "public.orders", "profile": "index_only"}, {"name": "public.audit_log", "profile": "archive"}]


def hits(blob: bytes, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value.encode() in blob]


def test_no_secret_value_leaks_anywhere(tmp_path: Path, require: Callable[[str], dict[str, Any]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    vinfo = require("vault")
    vault = hvac.Client(url=vinfo["addr"], token=vinfo["token"])
    kv_path = f"cdcstream-test/masking-{uuid.uuid4().hex[:8]}"
    api_token = "tok-" + uuid.uuid4().hex
    vault_env = {"CDCSTREAM_VAULT_ADDR": vinfo["addr"], "VAULT_TOKEN": vinfo["token"]}
    for k, v in vault_env.items():
        monkeypatch.setenv(k, v)
    creds_dir = tmp_path / "connect-credentials"
    # Secret-looking connector properties the plan must mask by name (or, in a URL, by position).
    jaas_pw, api_key, url_pw = ("jaas-" + uuid.uuid4().hex, "key-" + uuid.uuid4().hex, "url-" + uuid.uuid4().hex)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        secrets = {"database password": p.password, "api token": api_token, "sasl.jaas.config password": jaas_pw,
                   "*.api.key value": api_key, "URL user-info password": url_pw}
        vault.secrets.kv.v2.create_or_update_secret(path=kv_path, mount_point="secret",
                                                    secret={"password": p.password, "api_token": api_token})
        try:
            cfg = json.loads(p.config_path.read_text())
            conn = cfg["connectors"][0]
            conn["connection"]["password"] = f"vault:secret/{kv_path}#password"
            conn["credentials"] = {"mode": "provider", "dir": str(creds_dir)}
            p.config_path.write_text(json.dumps(cfg, indent=2))
            p.env.update(vault_env)
            p.env["CDCSTREAM_API_TOKEN"] = f"vault:secret/{kv_path}#api_token"
            p.env.pop(f"E2E_PG_PASSWORD_{p.tag}", None)  # the worker reads the password from Vault only

            p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'ada', 10.50), (2, 'bob', 20.00)")
            p.sql("INSERT INTO audit_log VALUES (1, 'ada', 'login')")
            p.apply()
            p.start_worker()
            p.wait("orders mirrored", lambda: len(p.docs("orders")) == 2, timeout=180)
            p.sql("UPDATE orders SET status = 'paid' WHERE id = 1")
            p.wait("update mirrored", lambda: p.docs("orders")["1"]["status"] == "paid", timeout=120,
                   retry_on=(*CONNECTION_ERRORS, KeyError))

            # The one place the password is: the file Connect reads, private to its owner.
            pw_file = creds_dir / "password"
            assert pw_file.read_text() == p.password
            assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600

            # --- the worker's pages and API ------------------------------------------------------
            api = WorkerApi(p.web_port)
            answers: dict[str, bytes] = {}
            table_key = next(iter(p.api("/api/tables")["tables"]))["table"]
            for path in ("/status", "/metrics", "/api/openapi.json", "/api/connectors", "/api/tables",
                         f"/api/tables/{table_key}", "/api/workers", "/api/dlq", "/api/search?q=paid&table="
                         f"{table_key}"):
                r = api.get(path)
                answers[path] = r.content
            # A write with a wrong token: refused without echoing the expected one.
            r = api.post("/api/dlq/replay", headers={"Authorization": "Bearer wrong"}, json={})
            assert r.status_code in (401, 403)
            answers["POST /api/dlq/replay (wrong token)"] = r.content
            assert b"RUNNING" in answers["/api/connectors"]  # the pages did render the connector
            for what, body in answers.items():
                assert not hits(body, secrets), f"{what} shows {hits(body, secrets)}"

            # --- the CLI: plan masks, in both modes -----------------------------------------------
            env = {**os.environ, **p.env}
            plan = subprocess.run([sys.executable, "-m", "cdcstream.cli", "connectors", "plan"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert f"connector {p.connector}: unchanged" in plan.stdout, plan.stdout + plan.stderr
            inline = json.loads(p.config_path.read_text())
            inline["connectors"][0].update(name=f"{p.connector}-inline", credentials={"mode": "inline"}, extra={
                "schema.history.internal.producer.sasl.jaas.config":
                    f'org.apache.kafka.common.security.plain.PlainLoginModule required username="cdc" '
                    f'password="{jaas_pw}";',
                "notification.sink.api.key": api_key,
                "errors.deadletterqueue.context.url": f"https://cdc:{url_pw}@hooks.example/dlq",
            })
            inline_path = tmp_path / "inline.yaml"
            inline_path.write_text(json.dumps(inline))
            plan2 = subprocess.run([sys.executable, "-m", "cdcstream.cli", "connectors", "plan", "--config",
                                    str(inline_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                   check=False)
            assert "+ database.password = ***" in plan2.stdout, plan2.stdout + plan2.stderr
            assert "+ schema.history.internal.producer.sasl.jaas.config = ***" in plan2.stdout, plan2.stdout
            assert "+ notification.sink.api.key = ***" in plan2.stdout, plan2.stdout
            assert "https://cdc:***@hooks.example/dlq" in plan2.stdout, plan2.stdout
            assert "+ key.converter = " in plan2.stdout and "***" not in plan2.stdout.split("+ key.converter = ")[1][:5]
            for out in (plan, plan2):
                assert not hits((out.stdout + out.stderr).encode(), secrets)

            # --- every record of every topic ----------------------------------------------------
            topics = read_topics()
            assert "cdcstream-connect-configs" in topics and p.topic("orders") in topics
            assert any(p.connector.encode() in k + v for k, v in topics["cdcstream-connect-configs"])
            leaks = {t: hits(b"".join(k + v for k, v in recs), secrets) for t, recs in topics.items()}
            assert not {t: h for t, h in leaks.items() if h}, leaks

            # --- every log file ------------------------------------------------------------------
            p.kill_worker()
            logs = [f for f in (ROOT / ".stack" / "logs").rglob("*") if f.is_file()]
            assert any(f.name.startswith("connect") for f in logs)
            # Besides the provider file, the test's own inline config holds the extra properties' values.
            files = logs + [f for f in tmp_path.rglob("*") if f.is_file() and f not in (pw_file, inline_path)]
            assert (tmp_path / "worker.log").exists()
            leaked = {str(f): hits(f.read_bytes(), secrets) for f in files}
            assert not {f: h for f, h in leaked.items() if h}, leaked
        finally:
            vault.secrets.kv.v2.delete_metadata_and_all_versions(path=kv_path, mount_point="secret")


def test_settings_never_show_a_url_password(tmp_path: Path) -> None:
    """`cdcstream settings` and a settings validation error: user-info passwords masked."""
    pw = "es-" + uuid.uuid4().hex
    env = {**os.environ, "CDCSTREAM_ELASTICSEARCH_URL": f"es://elastic:{pw}@127.0.0.1:9200",
           "CDCSTREAM_ARCHIVE_URL": f"s3://bucket/prefix?endpoint=http://minio:{pw}@127.0.0.1:9000"}
    shown = subprocess.run([sys.executable, "-m", "cdcstream.cli", "settings"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "elasticsearch_url = es://elastic:***@127.0.0.1:9200" in shown.stdout
    assert pw not in shown.stdout + shown.stderr
    # A rejected URL: the error names the setting, never the password.
    env["CDCSTREAM_ELASTICSEARCH_URL"] = f"ftp://elastic:{pw}@127.0.0.1:9200"
    bad = subprocess.run([sys.executable, "-m", "cdcstream.cli", "settings"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "elasticsearch_url" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert pw not in bad.stdout + bad.stderr


def test_elasticsearch_error_reasons_lose_their_values(require: Callable[[str], dict[str, Any]]) -> None:
    """Real refusals of the real Elasticsearch: what would reach a DLQ reason or a log line keeps
    the field, its type and the document id, and replaces the value by its type and length."""
    import requests

    from cdcstream.core.masking import mask_text
    from cdcstream.web.views import dlq_page

    es = require("elasticsearch")["url"].rstrip("/")
    index = f"cdcstream-test-mask-{uuid.uuid4().hex[:8]}"
    value = "card-" + uuid.uuid4().hex
    requests.put(f"{es}/{index}", json={"mappings": {"properties": {
        "amount": {"type": "float"}, "at": {"type": "date"}, "n": {"type": "long"}}}}, timeout=30).raise_for_status()
    try:
        docs = [{"amount": value}, {"at": value + "-2024"}, {"n": "9" * 30}]
        body = "".join(json.dumps({"index": {"_id": str(i)}}) + "\n" + json.dumps(d) + "\n" for i, d in enumerate(docs))
        r = requests.post(f"{es}/{index}/_bulk", data=body, headers={"Content-Type": "application/x-ndjson"},
                          timeout=30).json()
        # The sink's own form of a refusal: "<type>: <reason>" (cdcstream/sinks/elasticsearch.py).
        reasons = [f"{it['index']['error']['type']}: {it['index']['error']['reason']}" for it in r["items"]]
        assert value in reasons[0] and "9" * 30 in reasons[2]  # Elasticsearch does quote the values
        masked = [mask_text(x) for x in reasons]
        for raw, m in zip(reasons, masked, strict=True):
            assert value not in m and "9" * 30 not in m, m
            assert re.search(r"<(text|number|date-like), \d+ chars>", m), m
            assert re.search(r"failed to parse field \[\w+\] of type \[\w+\] in document with id '\d'", m), (raw, m)
        assert "<text, 37 chars>" in masked[0]
        # The DLQ listing masks reasons on the way out as well (records written before the masking).
        shown, _, _ = dlq_page([{"dlq_offset": 0, "reason": f"Elasticsearch refused index of x/0: {reasons[0]}"}], 1)
        assert value not in json.dumps(shown)
    finally:
        requests.delete(f"{es}/{index}", timeout=30)


def test_dlq_listing_shows_no_value_from_an_elasticsearch_refusal(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    """A real refusal by Elasticsearch through the pipeline: the row's new value must not come
    back through GET /api/dlq's reason (field, type and row id do)."""
    for svc in ("kafka", "connect"):
        require(svc)
    value = "v-" + uuid.uuid4().hex
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"),
                  [{"name": "public.orders", "profile": "index_only"}]) as p:
        p.sql("ALTER TABLE orders ADD COLUMN qty INT")
        p.sql("INSERT INTO orders (id, customer, amount, qty) VALUES (1, 'acme', 1, 1), (2, 'globex', 2, 2)")
        p.apply()
        p.start_worker()
        p.wait("rows indexed", lambda: set(p.docs("orders")) == {"1", "2"}, timeout=180)
        # A type change is migrated now (issue 17 item 1). Elasticsearch still refuses the
        # document of an event whose schema is older than the index's (a late event of another
        # partition after a rebuild): the index is stamped as built for a newer schema, so
        # the restarted worker takes the TEXT schema for an older one and writes it as it is.
        p.kill_worker()
        p.es("PUT", f"/{p.alias('orders')}/_mapping", {"_meta": {"cdcstream": {"schema_version": 2**62}}})
        p.start_worker()
        p.sql("ALTER TABLE orders ALTER COLUMN qty TYPE TEXT")
        p.sql("UPDATE orders SET qty = %s WHERE id = 2", (value,))
        api = WorkerApi(p.web_port)
        p.wait("the update dead-lettered", lambda: len(api.json("/api/dlq")["records"]) == 1,
               retry_on=(*CONNECTION_ERRORS, KeyError))
        reason = api.json("/api/dlq")["records"][0]["reason"]
        assert "failed to parse field [qty] of type [long] in document with id '2'" in reason, reason
        assert value not in reason and f"<text, {len(value)} chars>" in reason, reason
        # The reason is masked where it is written, not only where it is shown: the DLQ
        # record's stored reason and the worker log do not carry the value either.
        raw = api.json("/api/dlq?values=false")["records"][0]["reason"]
        assert value not in raw
        assert value not in p.worker_log()
