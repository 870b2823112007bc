"""VAULT_ADDR / VAULT_TOKEN, the variables every Vault tool reads, against the stack's Vault
(issue 20 part 5): honoured when no CDCSTREAM_VAULT_* setting is given, the explicit setting
wins, and a vault: reference without any Vault names both variables."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import pytest

from cdcstream.core.resolver import make_resolver
from cdcstream.core.secrets import SecretError, SecretRef
from cdcstream.core.settings import Settings

pytestmark = pytest.mark.integration


def test_vault_addr_and_token_resolve_a_reference(require: Callable[[str], dict[str, Any]],
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = require("vault")
    root = hvac.Client(url=info["addr"], token=info["token"])
    path, value = f"cdcstream-test/{uuid.uuid4().hex[:10]}/db", uuid.uuid4().hex
    root.secrets.kv.v2.create_or_update_secret(path=path, secret={"password": value}, mount_point="secret")
    ref = SecretRef.parse(f"vault:secret/{path}#password", where="test")
    try:
        for k in [k for k in os.environ if k.startswith("CDCSTREAM_VAULT_")]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("VAULT_ADDR", info["addr"])
        monkeypatch.setenv("VAULT_TOKEN", info["token"])
        assert make_resolver(Settings()).resolve(ref).get_secret_value() == value
        # An explicit setting keeps precedence: a Vault where nothing listens (the discard port) is tried.
        monkeypatch.setenv("CDCSTREAM_VAULT_ADDR", "http://127.0.0.1:9")
        with pytest.raises(SecretError):
            make_resolver(Settings()).resolve(ref)

        # Neither variable: the CLI's error names both (connectors plan resolves the password first).
        config = tmp_path / "cdcstream.yaml"
        config.write_text(
            "connectors:\n  - name: vault-env\n"
            "    connection: {kind: postgres, host: 127.0.0.1, database: shop, user: cdc,\n"
            f"                 password: 'vault:secret/{path}#password', tls: {{mode: disable}}}}\n"
            "    tables:\n      - name: public.orders\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDCSTREAM_", "VAULT_"))}
        r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "connectors", "plan", "--config", str(config)],
                           env=env, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "VAULT_ADDR (or CDCSTREAM_VAULT_ADDR)" in r.stderr and "VAULT_TOKEN" in r.stderr, r.stderr
        assert value not in r.stdout + r.stderr
    finally:
        root.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
