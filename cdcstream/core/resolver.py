"""Resolving secret references: ``env:`` and ``file:`` here, ``vault:`` through a Vault client.

The one module that knows both the references (``secrets``) and the process settings that
describe the Vault (``settings``), so neither of those imports the other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cdcstream.core.secrets import SecretError, SecretRef, VaultReader
from cdcstream.core.settings import Settings

# What a vault: reference without a Vault is told: both the variables every Vault tool reads and ours.
NO_VAULT_HINT = ("set VAULT_ADDR (or CDCSTREAM_VAULT_ADDR) and VAULT_TOKEN, or CDCSTREAM_VAULT_AUTH with its "
                 "settings (docs/vault.md)")


def vault_address(settings: Settings) -> str | None:
    """CDCSTREAM_VAULT_ADDR, else VAULT_ADDR (the variable every Vault tool reads): the explicit setting wins."""
    return settings.vault_addr or os.environ.get("VAULT_ADDR") or None


class Resolver:
    """Resolves references. Vault lookups go through ``vault`` (cdcstream.core.vault.VaultClient)."""

    def __init__(self, vault: VaultReader | None = None) -> None:
        self.vault = vault

    def resolve(self, ref: SecretRef) -> SecretStr:
        if ref.scheme == "literal":
            assert ref._literal is not None
            return ref._literal
        if ref.scheme == "env":
            value = os.environ.get(ref.path)
            if value is None:
                raise SecretError(f"{ref}: environment variable {ref.path} is not set")
            return SecretStr(value)
        if ref.scheme == "file":
            try:
                return SecretStr(Path(ref.path).read_text().rstrip("\n"))
            except OSError as e:
                raise SecretError(f"{ref}: cannot read the file ({e.strerror})") from None
        if self.vault is None:
            self.vault = default_vault()
        if self.vault is None:
            raise SecretError(f"{ref}: no Vault is configured: {NO_VAULT_HINT}")
        return SecretStr(self.vault.read(ref.mount, ref.path, ref.key))


def default_vault() -> VaultReader | None:
    """The Vault client the process settings describe (CDCSTREAM_VAULT_*, else VAULT_ADDR/VAULT_TOKEN), or None."""
    from cdcstream.core.settings import Settings

    r = make_resolver(Settings())
    return r.vault  # type: ignore[no-any-return]


def make_resolver(settings: Settings) -> Any:
    """The secret resolver for these settings (Vault only when vault_addr, or else $VAULT_ADDR, is set).

    With auth ``token`` and no CDCSTREAM_VAULT_TOKEN_FILE the token is $VAULT_TOKEN, as for the
    Vault CLI; any explicit CDCSTREAM_VAULT_* setting wins over the plain variables."""
    from cdcstream.core.vault import VaultAuth, VaultClient, VaultSettings

    addr = vault_address(settings)
    if not addr:
        return Resolver()
    token = os.environ.get("VAULT_TOKEN")
    auth = VaultAuth(method=settings.vault_auth,  # type: ignore[arg-type]
                     token=token if settings.vault_auth == "token" and token and not settings.vault_token_file
                     else None,
                     token_file=settings.vault_token_file, role_id=settings.vault_role_id,
                     secret_id_file=settings.vault_secret_id_file, role=settings.vault_role,
                     jwt_file=settings.vault_jwt_file, mount=settings.vault_auth_mount)
    return Resolver(VaultClient(VaultSettings(addr=addr, auth=auth, ca_bundle=settings.vault_ca_bundle,
                                              verify=settings.vault_verify)))

