"""cdcstream.core.vault.VaultClient against the stack's Vault: every auth method we can run here, KV v1/v2
references in both forms, token renewal, and errors that name the reference but never the value.

Each test makes its own policy, roles and mounts under a random tag and removes them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from cdcstream.core.config import DatabaseConnection
from cdcstream.core.resolver import Resolver, make_resolver
from cdcstream.core.secrets import SecretError, SecretRef
from cdcstream.core.settings import Settings
from cdcstream.core.vault import VaultAuth, VaultClient, VaultSettings
from tests.support import free_port

pytestmark = pytest.mark.integration

SECRET = "pw-" + uuid.uuid4().hex  # a value that would be found if it leaked into a message


@pytest.fixture
def root(require: Callable[[str], dict[str, Any]]) -> hvac.Client:
    info = require("vault")
    client = hvac.Client(url=info["addr"], token=info["token"])
    assert client.is_authenticated()
    return client


@pytest.fixture
def env(root: hvac.Client) -> Iterator[dict[str, str]]:
    """A KV v2 secret, a policy reading only it, and the names to clean up."""
    tag = uuid.uuid4().hex[:10]
    n = {"tag": tag, "path": f"cdcstream-test/{tag}/db", "policy": f"cdcstream-test-{tag}",
         "role": f"cdcstream-test-{tag}", "kv1": f"kv1-{tag}", "jwt": f"jwt-{tag}"}
    root.secrets.kv.v2.create_or_update_secret(path=n["path"], secret={"username": "cdc", "password": SECRET},
                                               mount_point="secret")
    root.sys.create_or_update_policy(name=n["policy"], policy=(
        f'path "secret/data/{n["path"]}" {{ capabilities = ["read"] }}\n'))
    yield n
    root.secrets.kv.v2.delete_metadata_and_all_versions(path=n["path"], mount_point="secret")
    removals: list[Callable[[], object]] = [
        lambda: root.auth.approle.delete_role(role_name=n["role"]),
        lambda: root.sys.delete_policy(name=n["policy"]),
        lambda: root.sys.disable_secrets_engine(path=n["kv1"]),
        lambda: root.sys.disable_auth_method(path=n["jwt"])]
    for call in removals:
        try:
            call()
        except hvac.exceptions.VaultError:
            pass


def client(root: hvac.Client, **auth: Any) -> VaultClient:
    return VaultClient(VaultSettings(addr=root.url, auth=VaultAuth(**auth)))


def policy_token(root: hvac.Client, policy: str, **kw: Any) -> str:
    return str(root.auth.token.create(policies=[policy], no_default_policy=False, **kw)["auth"]["client_token"])


# --- KV references -----------------------------------------------------------------------
def test_kv_v2_string_and_mapping_forms(root: hvac.Client, env: dict[str, str]) -> None:
    r = Resolver(client(root, method="token", token=SecretStr(policy_token(root, env["policy"]))))
    as_string = SecretRef.parse(f"vault:secret/{env['path']}#password")
    as_mapping = SecretRef.parse({"vault": {"mount": "secret", "path": env["path"], "key": "password"}})
    assert r.resolve(as_string).get_secret_value() == SECRET
    assert r.resolve(as_mapping).get_secret_value() == SECRET
    # As a connection field, the way the YAML gives it.
    conn = DatabaseConnection.model_validate({"kind": "postgres", "host": "h", "database": "d",
                                              "user": f"vault:secret/{env['path']}#username",
                                              "password": {"vault": {"path": env["path"], "key": "password"}}})
    assert r.resolve(conn.user).get_secret_value() == "cdc"
    assert r.resolve(conn.password).get_secret_value() == SECRET


def test_kv_v1_mount(root: hvac.Client, env: dict[str, str]) -> None:
    root.sys.enable_secrets_engine("kv", path=env["kv1"], options={"version": "1"})
    root.secrets.kv.v1.create_or_update_secret(path="db/orders", secret={"password": SECRET}, mount_point=env["kv1"])
    root.sys.create_or_update_policy(name=env["policy"], policy=f'path "{env["kv1"]}/db/orders" '
                                                                 f'{{ capabilities = ["read"] }}\n')
    r = Resolver(client(root, method="token", token=SecretStr(policy_token(root, env["policy"]))))
    assert r.resolve(SecretRef.parse(f"vault:{env['kv1']}/db/orders#password")).get_secret_value() == SECRET
    assert r.resolve(SecretRef.parse({"vault": {"mount": env["kv1"], "path": "db/orders", "key": "password"}})
                     ).get_secret_value() == SECRET


# --- errors: the reference, never the value --------------------------------------------
def test_errors_name_the_reference_never_the_value(root: hvac.Client, env: dict[str, str]) -> None:
    r = Resolver(client(root, method="token", token=SecretStr(policy_token(root, env["policy"]))))
    cases = {
        f"vault:secret/{env['path']}#nokey": "has no key 'nokey'",
        f"vault:secret/{env['path']}-missing#password": "permission denied",  # outside the policy
        "vault:secret/cdcstream-test/none/at/all#password": "permission denied",
    }
    for ref, why in cases.items():
        with pytest.raises(SecretError) as e:
            r.resolve(SecretRef.parse(ref))
        assert ref in str(e.value) and why in str(e.value) and SECRET not in str(e.value)
    # Missing path with a token that may read anything: "no secret", not "permission denied".
    rr = Resolver(client(root, method="token", token=SecretStr(root.token)))
    with pytest.raises(SecretError, match=f"vault:secret/{env['path']}-missing#password: no secret at"):
        rr.resolve(SecretRef.parse(f"vault:secret/{env['path']}-missing#password"))
    # Unreachable Vault.
    dead = VaultClient(VaultSettings(addr=f"http://127.0.0.1:{free_port()}", timeout_s=2,
                                     auth=VaultAuth(method="token", token=SecretStr("x"))))
    with pytest.raises(SecretError,
                       match=r"vault:secret/.*#password: vault auth .token. at http://127.0.0.1:.* failed: "
                             r"ConnectionError"):
        Resolver(dead).resolve(SecretRef.parse(f"vault:secret/{env['path']}#password"))


# --- auth methods ------------------------------------------------------------------------
def test_approle_secret_id_from_a_file(root: hvac.Client, env: dict[str, str], tmp_path: Path) -> None:
    root.auth.approle.create_or_update_approle(role_name=env["role"], token_policies=[env["policy"]],
                                               token_ttl="5m", secret_id_ttl="5m")
    role_id = root.auth.approle.read_role_id(role_name=env["role"])["data"]["role_id"]
    sid = tmp_path / "secret-id"
    sid.write_text(root.auth.approle.generate_secret_id(role_name=env["role"])["data"]["secret_id"] + "\n")
    vc = client(root, method="approle", role_id=role_id, secret_id_file=sid)
    assert vc.read("secret", env["path"], "password") == SECRET
    # A wrong secret id: the auth error names the method, not the secret id.
    sid.write_text("00000000-0000-0000-0000-000000000000")
    with pytest.raises(SecretError, match="vault auth 'approle' .* failed") as e:
        client(root, method="approle", role_id=role_id, secret_id_file=sid).read("secret", env["path"], "password")
    assert "00000000" not in str(e.value)


def test_settings_build_an_approle_resolver(root: hvac.Client, env: dict[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root.auth.approle.create_or_update_approle(role_name=env["role"], token_policies=[env["policy"]], token_ttl="5m")
    role_id = root.auth.approle.read_role_id(role_name=env["role"])["data"]["role_id"]
    sid = tmp_path / "secret-id"
    sid.write_text(root.auth.approle.generate_secret_id(role_name=env["role"])["data"]["secret_id"])
    for k, v in {"VAULT_ADDR": root.url, "VAULT_AUTH": "approle", "VAULT_ROLE_ID": role_id,
                 "VAULT_SECRET_ID_FILE": str(sid)}.items():
        monkeypatch.setenv(f"CDCSTREAM_{k}", v)
    # The path every component takes: a Resolver() with no client builds one from the settings.
    assert Resolver().resolve(SecretRef.parse(f"vault:secret/{env['path']}#password")).get_secret_value() == SECRET
    assert make_resolver(Settings()).resolve(SecretRef.parse(f"vault:secret/{env['path']}#username")
                                             ).get_secret_value() == "cdc"


def test_jwt_login_with_a_local_rsa_key(root: hvac.Client, env: dict[str, str], tmp_path: Path) -> None:
    # A JWT issuer of our own: Vault validates the signature with the public key it is given.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    # A mount of our own (same method as the stack's jwt/): tests never rewrite shared auth config.
    root.sys.enable_auth_method("jwt", path=env["jwt"])
    root.auth.jwt.configure(jwt_validation_pubkeys=[pub], bound_issuer="cdcstream-test", path=env["jwt"])
    root.auth.jwt.create_role(name="cdc", role_type="jwt", user_claim="sub", allowed_redirect_uris=[],
                              bound_audiences=["cdcstream"], token_policies=[env["policy"]], token_ttl="5m",
                              path=env["jwt"])
    now = int(time.time())
    token = jwt.encode({"iss": "cdcstream-test", "sub": "cdc-worker", "aud": "cdcstream", "iat": now,
                        "nbf": now - 5, "exp": now + 300}, key, algorithm="RS256")
    jf = tmp_path / "jwt"
    jf.write_text(token)
    vc = client(root, method="jwt", role="cdc", jwt_file=jf, mount=env["jwt"])
    assert vc.read("secret", env["path"], "password") == SECRET
    # Signed by another key: refused, and the JWT itself is not in the message.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jf.write_text(jwt.encode({"iss": "cdcstream-test", "sub": "x", "aud": "cdcstream", "exp": now + 300}, other,
                             algorithm="RS256"))
    with pytest.raises(SecretError, match="vault auth 'jwt' .* failed") as e:
        client(root, method="jwt", role="cdc", jwt_file=jf, mount=env["jwt"]).read("secret", env["path"], "password")
    assert token not in str(e.value) and jf.read_text() not in str(e.value)


def test_short_ttl_token_is_renewed_before_expiry(root: hvac.Client, env: dict[str, str]) -> None:
    tok = policy_token(root, env["policy"], ttl="6s", explicit_max_ttl="5m", renewable=True)
    vc = client(root, method="token", token=SecretStr(tok))
    assert vc.read("secret", env["path"], "password", max_age_s=0) == SECRET
    # Past two thirds of the TTL the next call renews; without renewal the token would be dead at 6 s.
    for _ in range(8):
        time.sleep(1.5)
        assert vc.read("secret", env["path"], "password", max_age_s=0) == SECRET
    assert vc.client.token == tok  # the same token, renewed (12 s > its 6 s TTL)
    assert root.auth.token.lookup(tok)["data"]["ttl"] > 0


def test_approle_token_past_its_max_ttl_logs_in_again(root: hvac.Client, env: dict[str, str],
                                                      tmp_path: Path) -> None:
    root.auth.approle.create_or_update_approle(role_name=env["role"], token_policies=[env["policy"]],
                                               token_ttl="3s", token_max_ttl="5s")
    role_id = root.auth.approle.read_role_id(role_name=env["role"])["data"]["role_id"]
    sid = tmp_path / "secret-id"
    sid.write_text(root.auth.approle.generate_secret_id(role_name=env["role"])["data"]["secret_id"])
    vc = client(root, method="approle", role_id=role_id, secret_id_file=sid)
    assert vc.read("secret", env["path"], "password", max_age_s=0) == SECRET
    first = vc.client.token
    seen = {first}
    for _ in range(6):
        time.sleep(1.5)
        assert vc.read("secret", env["path"], "password", max_age_s=0) == SECRET
        seen.add(vc.client.token)
    assert len(seen) > 1  # renewal capped by token_max_ttl, then a fresh login


def test_tls_verify_settings_reach_the_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a TLS connection is made\n")
    assert VaultClient(VaultSettings(ca_bundle=ca)).client.adapter._kwargs["verify"] == str(ca)
    assert VaultClient(VaultSettings(verify=False)).client.adapter._kwargs["verify"] is False
