"""Credential injection modes and the credential store (no servers needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cdcstream.core.config import ConfigError, load_config
from cdcstream.core.secrets import SecretRef
from cdcstream.ops import debezium
from cdcstream.ops.credentials import Credentials, CredentialStore, config_credentials, credentials_dir, placeholders
from cdcstream.ops.kconnect import mask_config
from cdcstream.ops.lifecycle import inline_credentials_finding

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


def test_a_secret_reference_defaults_to_provider_mode(tmp_path: Path) -> None:
    """Issue 18: an ``env:`` password with no ``mode`` went inline, i.e. in plaintext into Connect's config topic."""
    spec = _load(tmp_path).connectors[0]  # type: ignore[attr-defined]
    assert spec.credentials.mode is None and spec.credentials.vault_role is None
    assert spec.credential_mode == "provider"
    d = Path.home() / ".local/state/cdcstream/credentials/orders"
    assert config_credentials(spec, Credentials("cdc", "pw")) == (f"${{dir:{d}:user}}", f"${{dir:{d}:password}}")
    assert inline_credentials_finding(spec) is None


def test_regression_the_default_credentials_dir_does_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the default was `.stack/credentials` made absolute from where a command ran; `connectors
    delete --drop-slot` run from another directory re-created the connector (to reset its offsets)
    with placeholders naming a directory that did not exist, and Kafka Connect answered HTTP 500."""
    spec = _load(tmp_path).connectors[0]  # type: ignore[attr-defined]
    here = config_credentials(spec, Credentials("cdc", "pw"))
    monkeypatch.chdir(tmp_path)
    assert config_credentials(spec, Credentials("cdc", "pw")) == here
    assert credentials_dir(spec).is_absolute() and str(tmp_path) not in str(credentials_dir(spec))


@pytest.mark.parametrize(("conn", "creds", "mode"), [
    ("      user: cdc\n      password: file:/run/secrets/pw", "", "provider"),
    ("      user: cdc\n      password: vault:secret/cdc/orders#password", "", "provider"),
    ("      user: cdc\n      password: {vault: {mount: kv, path: cdc, key: pw}}", "", "provider"),
    ("      user: env:PG_USER\n      password: plain-pw", "", "provider"),  # a referenced user is enough
    ("      port: 5432", "    credentials: {vault_role: r1}", "provider"),
    ("      user: cdc\n      password: plain-pw", "", "inline"),  # a literal: plaintext in the YAML already
    ("      user: cdc\n      password: env:PW", "    credentials: {mode: inline}", "inline"),  # explicit opt-in
    ("      user: cdc\n      password: plain-pw", "    credentials: {mode: provider}", "provider"),
])
def test_default_mode_follows_where_the_credentials_come_from(tmp_path: Path, conn: str, creds: str,
                                                              mode: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("allow_literal_secrets: true\n" + BASE.format(conn=conn, creds=creds))
    spec = load_config(p).connectors[0]
    assert spec.credential_mode == mode
    pw = config_credentials(spec, Credentials("cdc", "the-password"))[1]
    assert (pw == "the-password") is (mode == "inline")


def test_plan_warns_for_every_inline_connector_and_says_why(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    conn = "{kind: postgres, host: 127.0.0.1, database: shop, user: cdc, password: %s}"
    p.write_text("allow_literal_secrets: true\nconnectors:\n" + "".join(
        f"  - {{name: {name}, connection: {conn % pw}, tables: [{{name: public.t{i}}}]{creds}}}\n"
        for i, (name, pw, creds) in enumerate([("literal", "plain-pw", ""),
                                               ("explicit", "env:PW", ", credentials: {mode: inline}"),
                                               ("provider", "env:PW", "")])))
    literal, explicit, provider = load_config(p).connectors
    assert inline_credentials_finding(provider) is None
    for spec, why, fix in ((literal, "a literal password in the YAML", "use a secret reference"),
                           (explicit, "credentials.mode: inline", "remove `credentials.mode: inline`")):
        f = inline_credentials_finding(spec)
        assert f is not None and f.level == "warning"
        assert f.problem == (f"connector {spec.name}: inline credentials ({why}): the database password will be "
                             f"stored in plaintext in Kafka Connect's config topic (config.storage.topic, "
                             f"cdcstream-connect-configs on the local stack) and returned by "
                             f"GET /connectors/{spec.name}/config")
        assert f.fix.startswith(fix) and "plain-pw" not in str(f)


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
