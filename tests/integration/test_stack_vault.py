"""The local Vault dev server: KV v2, AppRole login with a narrow policy, database and jwt mounts."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest
from hvac.exceptions import Forbidden

pytestmark = pytest.mark.integration


@pytest.fixture
def vault(require: Callable[[str], dict[str, Any]]) -> hvac.Client:
    info = require("vault")
    client = hvac.Client(url=info["addr"], token=info["token"])
    assert client.is_authenticated()
    return client


@pytest.fixture
def names(vault: hvac.Client) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:12]
    n = {"path": f"cdcstream-test/{tag}/db", "policy": f"cdcstream-test-{tag}", "role": f"cdcstream-test-{tag}"}
    yield n
    vault.secrets.kv.v2.delete_metadata_and_all_versions(path=n["path"], mount_point="secret")
    vault.auth.approle.delete_role(role_name=n["role"])
    vault.sys.delete_policy(name=n["policy"])


def test_kv_v2_roundtrip(vault: hvac.Client, names: dict[str, str]) -> None:
    vault.secrets.kv.v2.create_or_update_secret(path=names["path"], secret={"username": "u", "password": "p1"},
                                                mount_point="secret")
    vault.secrets.kv.v2.create_or_update_secret(path=names["path"], secret={"username": "u", "password": "p2"},
                                                mount_point="secret")
    got = vault.secrets.kv.v2.read_secret_version(path=names["path"], mount_point="secret",
                                                  raise_on_deleted_version=True)
    assert got["data"]["data"] == {"username": "u", "password": "p2"}
    assert got["data"]["metadata"]["version"] == 2


def test_approle_login_reads_only_its_path(vault: hvac.Client, names: dict[str, str]) -> None:
    vault.secrets.kv.v2.create_or_update_secret(path=names["path"], secret={"password": "s3cret"},
                                                mount_point="secret")
    vault.sys.create_or_update_policy(
        name=names["policy"], policy=f'path "secret/data/{names["path"]}" {{ capabilities = ["read"] }}\n')
    vault.auth.approle.create_or_update_approle(role_name=names["role"], token_policies=[names["policy"]],
                                                token_ttl="5m", secret_id_ttl="5m")
    role_id = vault.auth.approle.read_role_id(role_name=names["role"])["data"]["role_id"]
    secret_id = vault.auth.approle.generate_secret_id(role_name=names["role"])["data"]["secret_id"]

    app = hvac.Client(url=vault.url)
    login = app.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert names["policy"] in login["auth"]["policies"]
    assert app.token and app.token != vault.token
    got = app.secrets.kv.v2.read_secret_version(path=names["path"], mount_point="secret",
                                                raise_on_deleted_version=True)
    assert got["data"]["data"] == {"password": "s3cret"}
    # The policy grants read on that one path, nothing more.
    with pytest.raises(Forbidden):
        app.secrets.kv.v2.create_or_update_secret(path=names["path"], secret={"password": "x"}, mount_point="secret")


def test_engines_and_auth_methods_are_mounted(vault: hvac.Client) -> None:
    mounts = vault.sys.list_mounted_secrets_engines()["data"]
    assert mounts["secret/"]["type"] == "kv"
    assert mounts["secret/"]["options"]["version"] == "2"
    assert mounts["database/"]["type"] == "database"
    auths = vault.sys.list_auth_methods()["data"]
    assert auths["approle/"]["type"] == "approle"
    assert auths["jwt/"]["type"] == "jwt"
