"""Issue 18: a connector whose password is a secret reference, with no `credentials.mode`, must
not put the password into Kafka Connect's config topic.

Before the fix the default was `inline`: checked on the real stack, 50 of 582 records of
`cdcstream-connect-configs` held a database password in plaintext, every one from a connector
declared with an `env:` or `vault:` reference. Now such a connector runs in provider mode with
the default directory (`$CDCSTREAM_CREDENTIALS_DIR/<connector>`), which the stack's Connect
worker reads as it is.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from cdcstream.core.config import load_config
from cdcstream.core.settings import Settings
from cdcstream.ops.credentials import credentials_dir
from cdcstream.ops.kconnect import ConnectClient
from tests.e2e.harness import pipeline
from tests.e2e.vault_env import captured_ids, read_topics
from tests.support import CONNECTION_ERRORS, wait_until

pytestmark = pytest.mark.e2e

CONFIG_TOPIC = "cdcstream-connect-configs"


def test_env_password_without_mode_never_reaches_the_config_topic(
        tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("kafka", "connect"):
        require(svc)
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"),
                  [{"name": "public.orders", "profile": "index_only"}]) as p:
        spec = load_config(p.config_path).connectors[0]
        # The harness declares `password: env:E2E_PG_PASSWORD_<tag>` and no credentials at all.
        assert spec.credentials.mode is None and str(spec.connection.password).startswith("env:")
        creds = credentials_dir(spec)
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (1, 'ada', 10.50)")
        p.apply()
        client = ConnectClient()
        client.wait_state(p.connector, timeout=120)

        # Streaming, not only the snapshot: a row inserted after the task is up reaches Kafka.
        wait_until(lambda: 1 in captured_ids(p.topic("orders")), timeout=120, what="the snapshot in Kafka",
                   retry_on=(*CONNECTION_ERRORS, KafkaError))
        p.sql("INSERT INTO orders (id, customer, amount) VALUES (2, 'bob', 20.00)")
        wait_until(lambda: 2 in captured_ids(p.topic("orders")), timeout=120, what="the streamed insert",
                   retry_on=(*CONNECTION_ERRORS, KafkaError))

        # The password lives in the default provider directory only, 0600, where Connect read it.
        assert creds == (Settings().credentials_dir / p.connector).resolve()
        assert (creds / "password").read_text() == p.password
        assert stat.S_IMODE((creds / "password").stat().st_mode) == 0o600
        assert client.get_config(p.connector)["database.password"] == f"${{dir:{creds}:password}}"  # type: ignore[index]

        records = read_topics(lambda t: t == CONFIG_TOPIC)[CONFIG_TOPIC]
        mine = [v for k, v in records if p.connector.encode() in k]
        assert mine and any(f"${{dir:{creds}:password}}".encode() in v for v in mine)
        leaked = [k for k, v in records if p.password.encode() in k + v]
        assert not leaked, f"{len(leaked)} of {len(records)} config records hold the password: {leaked[:5]}"
