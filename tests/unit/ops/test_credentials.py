"""Credential injection modes and the credential store (no servers needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cdcstream.core.config import ConfigError, load_config
from cdcstream.core.secrets import SecretRef
from cdcstream.ops import debezium
from cdcstream.ops.credentials import Credentials, CredentialStore, config_credentials, placeholders
from cdcstream.ops.kconnect import mask_config

BASE = """connectors:
  - name: orders
    connection:
      kind: postgres
      host: 127.0.0.1
      database: shop
{conn}
    tables:
      - name: public.orders
{creds}
"""


def _load(tmp_path: Path, conn: str = "      user: cdc\n      password: env:PW", creds: str = "") -> object:
    p = tmp_path / "c.yaml"
    p.write_text(BASE.format(conn=conn, creds=creds))
    return load_config(p)


def test_default_is_inline_and_backward_compatible(tmp_path: Path) -> None:
    spec = _load(tmp_path).connectors[0]  # type: ignore[attr-defined]
    assert spec.credentials.mode == "inline" and spec.credentials.vault_role is None
    assert config_credentials(spec, Credentials("cdc", "pw")) == ("cdc", "pw")


def test_provider_mode_puts_placeholders_in_the_config(tmp_path: Path) -> None:
    d = tmp_path / "creds"
    spec = _load(tmp_path, creds=f"    credentials: {{mode: provider, dir: {d}}}").connectors[0]  # type: ignore[attr-defined]
    user, pw = config_credentials(spec, Credentials("cdc", "s3cret-value"))
    assert (user, pw) == (f"${{dir:{d}:user}}", f"${{dir:{d}:password}}")
    cfg = debezium.build(spec, user=user, password=pw)
    assert "s3cret-value" not in str(cfg)
    # A placeholder is shown as is (it names a file, not the secret).
    assert mask_config(cfg)["database.password"] == pw


def test_vault_role_replaces_user_and_password(tmp_path: Path) -> None:
    conn = "      port: 5432"
    spec = _load(tmp_path, conn=conn, creds="    credentials:\n      mode: provider\n      dir: /run/cdc/orders\n"
                                            "      vault_role: cdc-orders\n      owner_role: cdc_owner"
                 ).connectors[0]  # type: ignore[attr-defined]
    assert spec.connection.password == SecretRef("vault", "creds/cdc-orders", "password", "database")
    assert str(spec.connection.user) == "vault:database/creds/cdc-orders#username"


def test_vault_role_with_a_password_names_file_line_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:2: connectors\[0\] \(orders\): connection.password must be omitted"):
        _load(tmp_path, conn="      password: env:PW", creds="    credentials: {vault_role: r1}")


@pytest.mark.parametrize(("creds", "msg"), [
    ("    credentials: {mode: provider, dir: relative/dir}", r"credentials.dir: .*absolute"),
    ("    credentials: {mode: sidecar}", r"credentials.mode: Input should be 'inline' or 'provider'"),
    ("    credentials: {vault_role: r1, colour: red}", r"credentials.colour: Extra inputs"),
])
def test_bad_credentials_name_the_line_and_field(tmp_path: Path, creds: str, msg: str) -> None:
    conn = "      user: cdc\n      password: env:PW" if "vault_role" not in creds else "      port: 5432"
    with pytest.raises(ConfigError, match=r"c.yaml:1[0-9]: connectors\[0\] \(orders\)\." + msg):
        _load(tmp_path, conn=conn, creds=creds)


def test_missing_password_still_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connection.password: Field required"):
        _load(tmp_path, conn="      user: cdc")


def test_store_writes_0600_files_atomically(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "c")
    assert store.write(Credentials("u1", "p1")) is True
    assert store.write(Credentials("u1", "p1")) is False  # unchanged: no rewrite, no restart
    for name in ("user", "password"):
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert store.read() == Credentials("u1", "p1")
    assert "p1" not in repr(store.read())
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []


def test_placeholder_path_must_not_break_the_grammar(tmp_path: Path) -> None:
    spec = _load(tmp_path, creds="    credentials: {mode: provider, dir: '/a:b'}").connectors[0]  # type: ignore[attr-defined]
    with pytest.raises(LookupError, match="placeholders cannot carry"):
        placeholders(spec)
