"""Vault dynamic credentials on the real stack: rotation mid-stream without losing a change,
the rotate-loop renewing and rotating on time, and failures that leave a running connector alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.vault_env import DynamicSource, captured_ids, dynamic_source, read_topics
from tests.support import CONNECTION_ERRORS, wait_until

pytestmark = pytest.mark.e2e

CONFIG_TOPIC = "cdcstream-connect-configs"


@pytest.fixture
def src(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> Iterator[DynamicSource]:
    for svc in ("kafka", "connect"):
        require(svc)
    with dynamic_source(tmp_path, require("postgres"), require("vault")) as s:
        yield s


#: Reading a topic: a Kafka error (the topic being created, a leader moving) means "not yet".
KAFKA_NOT_YET = (*CONNECTION_ERRORS, KafkaError)


def applied(s: DynamicSource) -> None:
    r = s.cli("connectors", "apply")
    assert r.returncode == 0, r.stderr + r.stdout
    ConnectClient().wait_state(s.connector, timeout=120)
    wait_until(lambda: s.slot_user() == s.lease()["username"], timeout=120, what="the connector streaming")


class Writer(threading.Thread):
    """Inserts rows one after another until stopped: the changes a rotation must not lose."""

    def __init__(self, s: DynamicSource, start_id: int) -> None:
        super().__init__(daemon=True)
        self.s, self.next_id, self.stop_flag = s, start_id, threading.Event()
        self.written: list[int] = []

    def run(self) -> None:
        import psycopg

        with psycopg.connect(**self.s.su, dbname=self.s.db, autocommit=True) as c:
            while not self.stop_flag.is_set():
                c.execute("INSERT INTO public.items VALUES (%s, %s)", (self.next_id, f"row {self.next_id}"))
                self.written.append(self.next_id)
                self.next_id += 1
                time.sleep(0.02)


def test_credentials_rotated_mid_stream_with_the_connector_still_capturing_every_change(src: DynamicSource) -> None:
    src.sql("INSERT INTO public.items SELECT g, 'snap ' || g FROM generate_series(1, 50) g")
    applied(src)
    first = src.lease()
    passwords = [src.password()]
    writer = Writer(src, 1000)
    writer.start()
    try:
        users = [first["username"]]
        for _ in range(2):
            time.sleep(2)
            r = src.cli("credentials", "rotate", src.connector)
            assert r.returncode == 0, r.stderr + r.stdout
            assert "credentials rotated" in r.stdout
            lease = src.lease()
            users.append(lease["username"])
            passwords.append(src.password())
            assert lease["previous_lease_id"] is None
            assert src.slot_user() == lease["username"]  # the task streams as the new user...
            assert not src.role_exists(users[-2])  # ...and the old one is gone (its lease revoked)
            for p in passwords:
                assert p not in r.stdout + r.stderr
        time.sleep(2)
    finally:
        writer.stop_flag.set()
        writer.join(30)
    assert len(set(users)) == 3 and len(writer.written) > 100
    want = set(range(1, 51)) | set(writer.written)
    try:
        wait_until(lambda: want <= captured_ids(src.topic), timeout=120, what=f"all {len(want)} rows in Kafka",
                   retry_on=KAFKA_NOT_YET)
    except AssertionError:
        missing = sorted(want - captured_ids(src.topic))
        raise AssertionError(f"{len(missing)} rows never reached Kafka: {missing[:20]}...; "
                             f"connector: {ConnectClient().status(src.connector)}") from None
    assert ConnectClient().status(src.connector).state == "RUNNING"
    # Provider mode: no password ever entered Connect's config topic.
    config_topic = b"".join(k + v for k, v in read_topics(lambda t: t == CONFIG_TOPIC)[CONFIG_TOPIC])
    assert src.connector.encode() in config_topic
    for p in passwords:
        assert p.encode() not in config_topic
    status = src.cli("credentials", "status")
    assert f"user={users[-1]}" in status.stdout and "mode=provider" in status.stdout


def test_rotate_loop_renews_then_rotates_at_two_thirds_of_the_max_ttl(tmp_path: Path,
                                                                      require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    # Lease 12 s (renewed at < 6 s left), max TTL 36 s: rotation due 24 s after issue.
    with dynamic_source(tmp_path, require("postgres"), require("vault"), default_ttl="12s", max_ttl="36s") as s:
        applied(s)
        first = s.lease()
        import subprocess
        import sys

        from tests.e2e.vault_env import ROOT

        log = tmp_path / "rotate-loop.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "credentials", "rotate-loop",
                                     "--interval", "1"], env={**__import__("os").environ, **s.env}, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: s.lease()["username"] != first["username"], timeout=120, what="a rotation by the loop")
        finally:
            proc.terminate()
            proc.wait(30)
        text = log.read_text()
        assert f"renewed lease of {first['username']}" in text, text
        assert "credentials rotated" in text, text
        lease = s.lease()
        # Rotated no earlier than 2/3 of the max TTL, and before the old user's lease ran out.
        assert lease["issued_at"] - first["issued_at"] >= 24 - 1
        wait_until(lambda: s.slot_user() == lease["username"], timeout=60, what="the task streaming as the new user")
        assert not s.role_exists(first["username"])
        assert s.password() not in text


def test_failures_leave_the_running_connector_on_its_credentials(src: DynamicSource) -> None:
    applied(src)
    before = src.lease()
    dead = {"CDCSTREAM_VAULT_ADDR": "http://127.0.0.1:9"}  # discard port: nothing listens
    # Rotation with Vault unreachable: refused before Connect is touched.
    r = src.cli("credentials", "rotate", src.connector, env=dead)
    assert r.returncode == 1 and "rotation failed, previous credentials kept" in r.stderr
    assert f"vault:database/creds/{src.vault_role}" in r.stderr or "vault auth" in r.stderr
    # Permission denied: a role the policy does not cover.
    other = src.config_path.read_text().replace(f'"{src.vault_role}"', '"not-my-role"')
    bad_cfg = src.tmp / "other.yaml"
    bad_cfg.write_text(other.replace(str(src.creds_dir), str(src.tmp / "other-creds")))
    r = src.cli("connectors", "apply", "--config", str(bad_cfg))
    assert r.returncode == 1 and "vault:database/creds/not-my-role: permission denied" in r.stderr, r.stderr
    # A static KV reference that does not resolve: apply fails naming it, the connector is untouched.
    src.write_config(user=before["username"], password="vault:secret/cdcstream-test/missing/path#password")
    r = src.cli("connectors", "apply")
    assert r.returncode == 1 and "vault:secret/cdcstream-test/missing/path#password" in r.stderr, r.stderr
    assert src.password() not in r.stderr + r.stdout
    # Still running, still on the same credentials, still capturing.
    st = ConnectClient().status(src.connector)
    assert st.state == "RUNNING" and all(t["state"] == "RUNNING" for t in st.tasks)
    assert src.lease()["lease_id"] == before["lease_id"] and src.slot_user() == before["username"]
    src.sql("INSERT INTO public.items VALUES (424242, 'after the failures')")
    wait_until(lambda: 424242 in captured_ids(src.topic), timeout=120, what="the row after the failures",
               retry_on=KAFKA_NOT_YET)


def test_inline_mode_rotates_by_put_and_connect_stores_the_value(src: DynamicSource) -> None:
    src.write_config(mode="inline")
    applied(src)
    first_pw = src.password()
    cfg = ConnectClient().get_config(src.connector) or {}
    assert (cfg["database.password"] == first_pw) is True  # inline: the value itself, as docs/vault.md warns
    r = src.cli("credentials", "rotate", src.connector)
    assert r.returncode == 0, r.stderr + r.stdout
    lease = src.lease()
    assert src.slot_user() == lease["username"]
    now_in_connect = (ConnectClient().get_config(src.connector) or {})["database.password"]
    # Compared, never printed: a failing assert would show the values.
    assert (now_in_connect == src.password()) and (now_in_connect != first_pw)
    config_topic = b"".join(k + v for k, v in read_topics(lambda t: t == CONFIG_TOPIC)[CONFIG_TOPIC])
    assert src.password().encode() in config_topic  # what provider mode exists to avoid
    src.sql("INSERT INTO public.items VALUES (7, 'after an inline rotation')")
    wait_until(lambda: 7 in captured_ids(src.topic), timeout=120, what="the row after the rotation",
               retry_on=KAFKA_NOT_YET)


def test_delete_drop_slot_revokes_the_lease_and_removes_the_files(src: DynamicSource) -> None:
    # Before, `delete --drop-slot` left the lease (the dynamic user lived on until its TTL) and the
    # 0600 password file of a connector that no longer existed.
    applied(src)
    lease = src.lease()
    user = lease["username"]
    assert src.role_exists(user)
    r = src.cli("connectors", "delete", src.connector, "--drop-slot")
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"revoked lease {lease['lease_id']} (user {user})" in r.stdout, r.stdout
    assert f"removed credential files in {src.creds_dir}" in r.stdout and not src.creds_dir.exists(), r.stdout
    # Vault's revocation statements dropped the user.
    assert not src.role_exists(user)
