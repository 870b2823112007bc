"""Vault: authentication, KV reads and dynamic database credentials (hvac, blocking).

Every call here blocks: the worker calls it through ``run_in_executor``; the CLI directly.
Errors name the reference and the Vault path, never a value.

Auth methods (``VaultAuth.method``): ``token`` (or ``token_file``), ``approle`` (role id +
secret id read from a file), ``jwt`` (a JWT from a file, for OIDC/JWT roles) and
``kubernetes`` (the service-account JWT; same code path as ``jwt``, different mount and
default file). The token is renewed when a third of its TTL is left; a token that cannot be
renewed is replaced by logging in again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import hvac
import requests
from hvac import exceptions as hv
from pydantic import BaseModel, ConfigDict, SecretStr

from cdcstream.core.secrets import SecretError

log = logging.getLogger(__name__)

K8S_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class VaultAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["token", "approle", "jwt", "kubernetes"] = "token"
    token: SecretStr | None = None
    token_file: Path | None = None
    role_id: str | None = None
    secret_id_file: Path | None = None
    role: str | None = None
    jwt_file: Path | None = None
    mount: str | None = None  # auth mount path; default: the method's name


class VaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    addr: str = "http://127.0.0.1:8200"
    auth: VaultAuth = VaultAuth()
    ca_bundle: Path | None = None
    verify: bool = True
    namespace: str | None = None
    timeout_s: float = 10.0


@dataclass
class Lease:
    lease_id: str
    duration_s: int
    renewable: bool
    obtained_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.obtained_at


@dataclass
class DynamicCredentials:
    username: str
    password: SecretStr
    lease: Lease
    max_ttl_s: int

    def __repr__(self) -> str:
        return f"DynamicCredentials(username={self.username!r}, password='***', lease={self.lease.lease_id!r})"


class VaultClient:
    """Thread-safe: the worker's executor threads share one client."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        verify: bool | str = str(settings.ca_bundle) if settings.ca_bundle else settings.verify
        self.client = hvac.Client(url=settings.addr, verify=verify, timeout=settings.timeout_s,
                                  namespace=settings.namespace)
        # hvac adopts $VAULT_TOKEN or ~/.vault-token on its own; that token would silently win over the
        # configured method (AppRole, JWT...). Only login() decides which token is used.
        self.client.token = None
        self._lock = threading.RLock()
        self._token_expires: float | None = None
        self._token_ttl: float | None = None
        self._kv_versions: dict[str, int] = {}
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    # --- auth --------------------------------------------------------------------------
    def login(self) -> None:
        a = self.settings.auth
        try:
            if a.method == "token":
                tok = a.token.get_secret_value() if a.token else (
                    a.token_file.read_text().strip() if a.token_file else None)
                if not tok:
                    raise SecretError("vault auth 'token' needs token or token_file")
                self.client.token = tok
                info = self.client.auth.token.lookup_self()["data"]
            elif a.method == "approle":
                if not a.role_id or not a.secret_id_file:
                    raise SecretError("vault auth 'approle' needs role_id and secret_id_file")
                info = self.client.auth.approle.login(a.role_id, a.secret_id_file.read_text().strip(),
                                                      mount_point=a.mount or "approle")["auth"]
            else:
                jwt_file = a.jwt_file or (K8S_JWT if a.method == "kubernetes" else None)
                if not a.role or jwt_file is None:
                    raise SecretError(f"vault auth '{a.method}' needs role and jwt_file")
                jwt = jwt_file.read_text().strip()
                if a.method == "kubernetes":
                    info = self.client.auth.kubernetes.login(a.role, jwt, mount_point=a.mount or "kubernetes")["auth"]
                else:
                    info = self.client.auth.jwt.jwt_login(a.role, jwt, path=a.mount or "jwt")["auth"]
        # requests' errors are OSErrors too: they must be caught first, or an unreachable Vault
        # reads as a missing credential file.
        except (hv.VaultError, requests.RequestException) as e:
            raise SecretError(f"vault auth '{a.method}' at {self.settings.addr} failed: {_why(e)}") from None
        except OSError as e:
            raise SecretError(f"vault auth '{a.method}': cannot read a credential file ({e.strerror}: "
                              f"{e.filename})") from None
        ttl = float(info.get("ttl") or info.get("lease_duration") or 0)
        self._token_ttl = ttl or None
        self._token_expires = time.monotonic() + ttl if ttl else None

    def _ensure_token(self) -> None:
        with self._lock:
            if not self.client.token:
                self.login()
                return
            if self._token_expires is None or self._token_ttl is None:
                return
            left = self._token_expires - time.monotonic()
            if left > self._token_ttl / 3:
                return
            try:
                info = self.client.auth.token.renew_self()["auth"]
                ttl = float(info.get("lease_duration") or 0)
                self._token_expires = time.monotonic() + ttl
                if ttl < self._token_ttl / 3:
                    raise hv.InvalidRequest("token near its max TTL")
            except (hv.VaultError, requests.RequestException) as e:
                log.info("vault: token renewal failed (%s); logging in again", _why(e))
                self.login()

    def keepalive(self) -> None:
        """Renew the token if due (a long-running loop calls this on every pass, so it never lapses)."""
        self._ensure_token()

    # --- KV ----------------------------------------------------------------------------
    def kv_version(self, mount: str) -> int:
        if mount not in self._kv_versions:
            try:
                resp = self.client.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}")
                opts = (resp.get("data") or {}).get("options") or {}
                self._kv_versions[mount] = int(opts.get("version", 1))
            except (hv.VaultError, requests.RequestException) as e:
                raise SecretError(f"vault: cannot inspect mount {mount!r}: {_why(e)}") from None
        return self._kv_versions[mount]

    def read(self, mount: str, path: str, key: str, max_age_s: float = 60.0) -> str:
        ref = f"vault:{mount}/{path}#{key}"
        now = time.monotonic()
        hit = self._cache.get((mount, path))
        if hit is None or now - hit[0] > max_age_s:
            try:
                self._ensure_token()
            except SecretError as e:
                raise SecretError(f"{ref}: {e}") from None
            try:
                version = self.kv_version(mount)
            except SecretError as e:
                raise SecretError(f"{ref}: {e}") from None
            try:
                if version == 2:
                    data = self.client.secrets.kv.v2.read_secret_version(
                        path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
                else:
                    data = self.client.secrets.kv.v1.read_secret(path, mount_point=mount)["data"]
            except hv.InvalidPath:
                raise SecretError(f"{ref}: no secret at {mount}/{path}") from None
            except hv.Forbidden:
                raise SecretError(f"{ref}: permission denied (check the token's policy)") from None
            except (hv.VaultError, requests.RequestException) as e:
                raise SecretError(f"{ref}: {_why(e)}") from None
            hit = (now, dict(data or {}))
            self._cache[(mount, path)] = hit
        if key not in hit[1]:
            raise SecretError(f"{ref}: the secret has no key {key!r} (keys: {', '.join(sorted(hit[1]))})")
        return str(hit[1][key])

    # --- dynamic database credentials ----------------------------------------------------
    def database_credentials(self, role: str, mount: str = "database") -> DynamicCredentials:
        self._ensure_token()
        try:
            resp = self.client.secrets.database.generate_credentials(role, mount_point=mount)
        except hv.Forbidden:
            raise SecretError(f"vault:{mount}/creds/{role}: permission denied") from None
        except hv.InvalidPath:
            raise SecretError(f"vault:{mount}/creds/{role}: no such role (or no database engine at {mount}/)"
                              ) from None
        except (hv.VaultError, requests.RequestException) as e:
            raise SecretError(f"vault:{mount}/creds/{role}: {_why(e)}") from None
        lease = Lease(resp["lease_id"], int(resp["lease_duration"]), bool(resp["renewable"]))
        try:
            # The role's max_ttl decides when to rotate; a policy without read on the role falls back
            # to the lease's own duration (rotation then happens earlier, never later).
            role_cfg = self.client.secrets.database.read_role(role, mount_point=mount)["data"]
        except (hv.VaultError, requests.RequestException) as e:
            log.info("vault:%s/roles/%s unreadable (%s); rotating by the lease duration", mount, role, _why(e))
            role_cfg = {}
        max_ttl = int(role_cfg.get("max_ttl") or 0) or lease.duration_s
        return DynamicCredentials(resp["data"]["username"], SecretStr(resp["data"]["password"]), lease, max_ttl)

    def renew(self, lease: Lease, increment_s: int | None = None) -> Lease:
        self._ensure_token()
        try:
            resp = self.client.sys.renew_lease(lease.lease_id, increment=increment_s)
        except (hv.VaultError, requests.RequestException) as e:
            raise SecretError(f"vault lease {lease.lease_id}: renewal failed: {_why(e)}") from None
        return Lease(resp["lease_id"], int(resp["lease_duration"]), bool(resp["renewable"]))

    def revoke(self, lease: Lease) -> None:
        self._ensure_token()
        try:
            self.client.sys.revoke_lease(lease.lease_id)
        except (hv.VaultError, requests.RequestException) as e:
            raise SecretError(f"vault lease {lease.lease_id}: revoke failed: {_why(e)}") from None


def _why(e: Exception) -> str:
    # hvac errors carry Vault's message (never a secret value); keep the first line.
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]
