"""Source-database credentials: static references, Vault dynamic credentials (issued, renewed,
kept in a 0600 store) and the files provider mode writes for the Connect worker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cdcstream.core.config import ConnectorSpec
from cdcstream.core.resolver import Resolver
from cdcstream.core.secrets import SecretError, SecretRef
from cdcstream.core.vault import Lease, VaultClient

log = logging.getLogger(__name__)


@dataclass
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"


def resolve_credentials(spec: ConnectorSpec, resolver: Resolver, *, issue: bool = False) -> Credentials:
    """The connector's credentials; Vault dynamic ones are issued only when ``issue`` (apply, rotation)."""
    if spec.credentials.vault_role is not None:
        return dynamic_credentials(spec, resolver, issue=issue)
    conn = spec.connection
    user = conn.user if isinstance(conn.user, str) else resolver.resolve(conn.user).get_secret_value()
    assert isinstance(conn.password, SecretRef)
    return Credentials(user, resolver.resolve(conn.password).get_secret_value())


USER_FILE = "user"


PASSWORD_FILE = "password"


LEASE_FILE = "lease.json"


#: Rotate when this share of the credentials' max TTL has passed (Vault drops the user at max TTL).
ROTATE_AT = 2 / 3


#: Renew a lease when less than this share of its duration is left.
RENEW_BELOW = 1 / 2


def credentials_dir(spec: ConnectorSpec, base: Path | None = None) -> Path:
    """Where ``spec``'s credential files and lease state live (absolute: the Connect worker reads it)."""
    if spec.credentials.dir is not None:
        return spec.credentials.dir
    if base is None:
        from cdcstream.core.settings import Settings

        base = Settings().credentials_dir
    return (base / spec.name).resolve()


def placeholders(spec: ConnectorSpec) -> tuple[str, str]:
    d = credentials_dir(spec)
    # Kafka's placeholder grammar is ${provider:path:key}; a ':' or '}' in the path would end it early.
    if any(c in str(d) for c in ":}{"):
        raise SecretError(f"connector {spec.name}: credentials dir {d} contains ':', '{{' or '}}', which "
                          f"Kafka Connect placeholders cannot carry")
    return f"${{dir:{d}:{USER_FILE}}}", f"${{dir:{d}:{PASSWORD_FILE}}}"


def config_credentials(spec: ConnectorSpec, creds: Credentials) -> tuple[str, str]:
    """What goes into the connector config: placeholders (provider) or the values (inline)."""
    if spec.credential_mode == "provider":
        return placeholders(spec)
    return creds.user, creds.password


class IssuedCredentials(Credentials):
    """Credentials Vault issued just now: a running connector must restart to use them."""


@dataclass
class LeaseState:
    """The current dynamic credentials of one connector, without the password."""

    connector: str
    vault_mount: str
    vault_role: str
    username: str
    lease_id: str
    renewable: bool
    duration_s: int
    max_ttl_s: int
    issued_at: float  # wall clock: the state outlives the process that wrote it
    expires_at: float
    previous_lease_id: str | None = None  # set while a rotation is in flight, revoked when it succeeds

    @property
    def rotate_at(self) -> float:
        return self.issued_at + self.max_ttl_s * ROTATE_AT

    def lease(self) -> Lease:
        return Lease(self.lease_id, self.duration_s, self.renewable)


class CredentialStore:
    """The files of one connector: ``user``, ``password`` (0600) and ``lease.json``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _write(self, name: str, text: str) -> bool:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / name
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return False
        # mkstemp creates the file 0600 before anything is written; os.replace makes the swap atomic,
        # so the Connect worker never reads half a password.
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True

    def write(self, creds: Credentials) -> bool:
        """Write user and password; True when either changed."""
        a = self._write(USER_FILE, creds.user)
        b = self._write(PASSWORD_FILE, creds.password)
        return a or b

    def read(self) -> Credentials | None:
        try:
            return Credentials((self.dir / USER_FILE).read_text(), (self.dir / PASSWORD_FILE).read_text())
        except FileNotFoundError:
            return None

    def load_lease(self) -> LeaseState | None:
        try:
            return LeaseState(**json.loads((self.dir / LEASE_FILE).read_text()))
        except FileNotFoundError:
            return None

    def save_lease(self, state: LeaseState) -> None:
        self._write(LEASE_FILE, json.dumps(asdict(state), indent=2))

    def remove(self) -> bool:
        """Delete the files (and the directory when nothing else is in it); True if any existed."""
        found = False
        for path in [*(self.dir / n for n in (USER_FILE, PASSWORD_FILE, LEASE_FILE)), *self.dir.glob(".*.*")]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                found = True
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only if empty: a directory the user shares with other files stays
        return found


def forget_credentials(spec: ConnectorSpec, resolver: Resolver | None) -> list[str]:
    """After a connector is removed for good (``delete --drop-slot``): revoke its Vault leases (the
    current one and one a rotation left in flight), so the dynamic user is dropped now rather than
    at its TTL, then delete its credential files, which hold a password nothing needs any more.
    Returns what was done, one line each. A Vault that cannot be reached raises, and the files stay
    so that the lease can still be revoked later."""
    store = CredentialStore(credentials_dir(spec))
    done: list[str] = []
    state = store.load_lease()
    if state is not None and resolver is not None:
        vault = vault_client(resolver)
        for lease_id in filter(None, (state.lease_id, state.previous_lease_id)):
            vault.revoke(Lease(lease_id, 0, False))  # Vault answers 204 for a lease it no longer knows
            done.append(f"revoked lease {lease_id} (user {state.username})")
    if store.remove():
        done.append(f"removed credential files in {store.dir}")
    return done


def vault_client(resolver: Resolver) -> VaultClient:
    """The resolver's Vault client (built from CDCSTREAM_VAULT_* when it has none yet)."""
    if resolver.vault is None:
        from cdcstream.core.resolver import default_vault

        resolver.vault = default_vault()
    if not isinstance(resolver.vault, VaultClient):
        from cdcstream.core.resolver import NO_VAULT_HINT

        raise SecretError(f"dynamic credentials need Vault: {NO_VAULT_HINT}")
    return resolver.vault


def _issue(spec: ConnectorSpec, vault: VaultClient, previous: LeaseState | None) -> tuple[Credentials, LeaseState]:
    c = spec.credentials
    assert c.vault_role is not None
    dc = vault.database_credentials(c.vault_role, c.vault_mount)
    now = time.time()
    state = LeaseState(spec.name, c.vault_mount, c.vault_role, dc.username, dc.lease.lease_id, dc.lease.renewable,
                       dc.lease.duration_s, dc.max_ttl_s, now, now + dc.lease.duration_s,
                       previous.lease_id if previous else None)
    log.info("%s: issued dynamic credentials for user %s (lease %s, ttl %ss, max %ss)", spec.name, dc.username,
             dc.lease.lease_id, dc.lease.duration_s, dc.max_ttl_s)
    return Credentials(dc.username, dc.password.get_secret_value()), state


def dynamic_credentials(spec: ConnectorSpec, resolver: Resolver, *, issue: bool) -> Credentials:
    """The connector's current dynamic credentials; new ones only when ``issue`` and none are current.

    Only ``apply`` and the rotation commands issue: a reader (plan, the worker's status page)
    issuing would leave the lease the connector runs on untracked.
    """
    c = spec.credentials
    store = CredentialStore(credentials_dir(spec))
    state, creds = store.load_lease(), store.read()
    current = (state is not None and creds is not None and state.vault_role == c.vault_role
               and state.username == creds.user
               # Expiring within a quarter of its duration: a new one is cheaper than a failed start.
               and state.expires_at - time.time() > min(30.0, state.duration_s / 4))
    if current:
        assert creds is not None
        return creds
    ref = f"vault:{c.vault_mount}/creds/{c.vault_role}"
    if not issue:
        raise SecretError(f"{ref}: connector {spec.name} has no current dynamic credentials in "
                          f"{store.dir}; `cdcstream connectors apply` issues them")
    creds, new_state = _issue(spec, vault_client(resolver), None)
    store.write(creds)
    store.save_lease(new_state)
    return IssuedCredentials(creds.user, creds.password)


def deliver(spec: ConnectorSpec, creds: Credentials) -> bool:
    """Provider mode: write the files the Connect worker reads. True when their content changed."""
    if spec.credential_mode != "provider":
        return False
    changed = CredentialStore(credentials_dir(spec)).write(creds)
    return changed or isinstance(creds, IssuedCredentials)

