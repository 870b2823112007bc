"""The configured auth method decides the token, not whatever $VAULT_TOKEN holds."""

from __future__ import annotations

import pytest

from cdcstream.core.vault import VaultAuth, VaultClient, VaultSettings


def test_vault_token_env_does_not_override_the_configured_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "root")
    vc = VaultClient(VaultSettings(auth=VaultAuth(method="approle", role_id="r")))
    assert not vc.client.token  # login() (AppRole here) will set it
