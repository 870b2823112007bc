"""Connector credentials: where cdcstream puts them for Kafka Connect, and Vault dynamic ones rotated.

Two injection modes per connector (``ConnectorSpec.credential_mode``, docs/vault.md):

* ``provider``: the connector config carries ``${dir:<dir>:user}`` and ``${dir:<dir>:password}``;
  the values live in files (0600) in ``<dir>``, read by the Connect worker's
  DirectoryConfigProvider whenever the connector or a task starts. New values take effect on
  a restart of the connector *and* its tasks; the config in Connect never changes.
* ``inline``: the values themselves go into the config (Connect stores them in its config
  topic); a new value takes effect through a PUT of the config.

Dynamic credentials (``credentials.vault_role``) come from Vault's database engine. The
current lease lives in ``<dir>/lease.json`` (no secret in it), so ``apply``, ``rotate`` and
``rotate-loop`` in different processes agree on it. Rotation order, so that no change is
lost and no connector is left without valid credentials:

1. issue new credentials (the old ones stay valid);
2. write them (provider: files; inline: PUT config) and restart connector and tasks;
3. wait until the task streams as the new user (PostgreSQL: the slot's active backend;
   MariaDB/MySQL: a ``Binlog Dump`` thread of the new user in the process list);
4. only then revoke the old lease. On a failure in 2–3 the old values are put back and the
   new lease is revoked, so the connector keeps what worked.

Debezium resumes from its committed offset after the restart, and the replication slot (the
binary log on MariaDB/MySQL) keeps every change since then: a restart loses nothing (at most
a few events are sent twice, which the worker's version rules absorb).

Every call here blocks (Vault, Connect, the database): never call it on Faust's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdcstream.core.config import ConnectorSpec
from cdcstream.core.resolver import Resolver
from cdcstream.core.secrets import SecretError
from cdcstream.ops import debezium
from cdcstream.ops.credentials import RENEW_BELOW, Credentials, CredentialStore, _issue, credentials_dir, vault_client
from cdcstream.ops.kconnect import ConnectClient

log = logging.getLogger(__name__)

# --- rotation ----------------------------------------------------------------------------
@dataclass
class RotationResult:
    connector: str
    old_user: str | None
    new_user: str
    revoked: str | None
    seconds: float

    def __str__(self) -> str:
        old = f"{self.old_user} -> " if self.old_user else ""
        rev = f"; revoked lease {self.revoked}" if self.revoked else ""
        return f"{self.connector}: credentials rotated ({old}{self.new_user}) in {self.seconds:.1f}s{rev}"


def _push(spec: ConnectorSpec, client: ConnectClient, creds: Credentials, kafka_bootstrap: str) -> None:
    # Both modes keep the store current: it is what `plan`, preflight and the worker's status read.
    CredentialStore(credentials_dir(spec)).write(creds)
    if spec.credential_mode == "provider":
        # The connector alone would keep its tasks on the old values: tasks resolve ${dir:...} when they start.
        client.restart(spec.name, include_tasks=True)
    else:
        client.put_config(spec.name, debezium.build(spec, user=creds.user, password=creds.password,
                                                    kafka_bootstrap=kafka_bootstrap))


def _slot_user(spec: ConnectorSpec, creds: Credentials) -> str | None:
    from cdcstream.ops.sourcedb import connect_postgres

    with connect_postgres(spec, creds) as conn:
        row = conn.execute("SELECT a.usename FROM pg_replication_slots s JOIN pg_stat_activity a "
                           "ON a.pid = s.active_pid WHERE s.slot_name = %s", (debezium.slot_name(spec),)).fetchone()
    return str(row[0]) if row else None


def _binlog_readers(spec: ConnectorSpec, creds: Credentials) -> int:
    """MariaDB/MySQL: the binlog dump threads of ``creds.user`` (a user sees its own threads
    without the PROCESS privilege, so Debezium's tutorial grants are enough)."""
    from cdcstream.ops.sourcedb import connect_mariadb

    with connect_mariadb(spec, creds) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%%' "
                    "AND user = %s", (creds.user,))
        return int(cur.fetchone()[0])


def wait_streaming_as(spec: ConnectorSpec, client: ConnectClient, creds: Credentials, timeout: float) -> None:
    """Until the connector's task runs on ``creds`` (PostgreSQL: the slot's reader logged in as
    that user; MariaDB/MySQL: a binlog dump thread of that user)."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    while time.monotonic() < deadline:
        client.wait_state(spec.name, timeout=max(1.0, deadline - time.monotonic()))
        if spec.connection.kind == "postgres":
            last = _slot_user(spec, creds)
            if last == creds.user:
                return
        elif _binlog_readers(spec, creds) > 0:
            return
        time.sleep(0.5)
    seen = f"slot reader: {last or 'none'}" if spec.connection.kind == "postgres" else "no binlog reader of that user"
    raise RuntimeError(f"{spec.name}: the task did not stream as {creds.user} within {timeout:.0f}s ({seen})")


def rotate(spec: ConnectorSpec, client: ConnectClient, resolver: Resolver, kafka_bootstrap: str,
           *, timeout: float = 180.0) -> RotationResult:
    """New credentials for a running connector (dynamic: a new Vault user; static: re-resolved refs)."""
    from cdcstream.ops.credentials import resolve_credentials

    t0 = time.monotonic()
    store = CredentialStore(credentials_dir(spec))
    if spec.credentials.vault_role is None:
        # Static references (KV, env, file): deliver the current value, e.g. after a KV update.
        creds = resolve_credentials(spec, resolver)
        _push(spec, client, creds, kafka_bootstrap)
        wait_streaming_as(spec, client, creds, timeout)
        return RotationResult(spec.name, None, creds.user, None, time.monotonic() - t0)
    vault = vault_client(resolver)
    old_state, old_creds = store.load_lease(), store.read()
    new_creds, new_state = _issue(spec, vault, old_state)
    # Saved before Connect sees the new values: a crash from here on leaves both leases tracked.
    store.save_lease(new_state)
    try:
        _push(spec, client, new_creds, kafka_bootstrap)
        wait_streaming_as(spec, client, new_creds, timeout)
    except Exception as e:
        log.error("%s: rotation to %s failed (%s); restoring the previous credentials", spec.name,
                  new_creds.user, type(e).__name__)
        if old_creds is not None and old_state is not None:
            store.save_lease(old_state)
            with contextlib.suppress(Exception):
                _push(spec, client, old_creds, kafka_bootstrap)
        with contextlib.suppress(SecretError):
            vault.revoke(new_state.lease())
        raise
    revoked = None
    if old_state is not None:
        try:
            vault.revoke(old_state.lease())
            revoked = old_state.lease_id
        except SecretError as e:
            # Already gone (expired, or revoked with its token): nothing to clean up.
            log.warning("%s: %s", spec.name, e)
    new_state.previous_lease_id = None
    store.save_lease(new_state)
    return RotationResult(spec.name, old_state.username if old_state else None, new_creds.user, revoked,
                          time.monotonic() - t0)


def tick(spec: ConnectorSpec, client: ConnectClient, resolver: Resolver, kafka_bootstrap: str,
         *, timeout: float = 180.0) -> str | None:
    """One pass of the loop for a dynamic-credential connector: rotate when due, else renew when due."""
    if spec.credentials.vault_role is None:
        return None
    store = CredentialStore(credentials_dir(spec))
    state = store.load_lease()
    if state is None:
        return f"{spec.name}: no dynamic credentials yet (run `cdcstream connectors apply`)"
    if client.get_config(spec.name) is None:
        return f"{spec.name}: not in Kafka Connect; nothing to rotate"
    now = time.time()
    if now >= state.rotate_at:
        return str(rotate(spec, client, resolver, kafka_bootstrap, timeout=timeout))
    if state.expires_at - now < state.duration_s * RENEW_BELOW:
        vault = vault_client(resolver)
        try:
            lease = vault.renew(state.lease(), increment_s=state.duration_s)
        except SecretError as e:
            # A lease Vault no longer knows (revoked with its token, or expired): the user is gone.
            log.warning("%s: %s; rotating now", spec.name, e)
            return str(rotate(spec, client, resolver, kafka_bootstrap, timeout=timeout))
        state.expires_at = time.time() + lease.duration_s
        store.save_lease(state)
        return f"{spec.name}: renewed lease of {state.username} for {lease.duration_s}s"
    return None


def loop(specs: list[ConnectorSpec], client: ConnectClient, resolver: Resolver, kafka_bootstrap: str, *,
         interval_s: float = 5.0, log_fn: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False,
         timeout: float = 180.0) -> None:
    """Renew and rotate until ``stop()``; one connector's failure never stops the others."""
    while not stop():
        try:
            # The token outlives its TTL only if someone renews it; between rotations nobody else calls Vault.
            vault_client(resolver).keepalive()
        except SecretError as e:
            log_fn(f"vault: {e}")
        for spec in specs:
            try:
                msg = tick(spec, client, resolver, kafka_bootstrap, timeout=timeout)
            except Exception as e:  # noqa: BLE001 - logged by type and message (which never carry values)
                msg = f"{spec.name}: {type(e).__name__}: {e}"
            if msg:
                log_fn(msg)
        time.sleep(interval_s)


def status(spec: ConnectorSpec, *, check_login: bool = False) -> dict[str, Any]:
    """What an operator needs to see (no secret): mode, user, lease and when it renews/rotates.

    ``check_login`` also logs in to the source database with the current dynamic credentials:
    the lease file only says what cdcstream last saw, while a lease revoked in Vault (or
    expired) has already dropped the user.
    """
    d = credentials_dir(spec)
    out: dict[str, Any] = {"connector": spec.name, "mode": spec.credential_mode,
                           "source": "vault-dynamic" if spec.credentials.vault_role else "reference",
                           "dir": str(d) if spec.credential_mode == "provider" or spec.credentials.vault_role
                           else None}
    store = CredentialStore(d)
    state = store.load_lease()
    if state is not None:
        now = time.time()
        out.update({"user": state.username, "lease_id": state.lease_id,
                    "expires_in_s": round(state.expires_at - now), "rotates_in_s": round(state.rotate_at - now)})
        if check_login:
            out["login"] = login_check(spec, store.read())
    return out


def login_check(spec: ConnectorSpec, creds: Credentials | None) -> str:
    """``ok``, or ``failed: <the database's reason>`` (never a value) for ``creds`` on ``spec``'s source."""
    from cdcstream.ops.sourcedb import connect_mariadb, connect_postgres

    if creds is None:
        return "failed: no credential files"
    try:
        conn = connect_postgres(spec, creds) if spec.connection.kind == "postgres" else connect_mariadb(spec, creds)
        conn.close()
    except Exception as e:  # noqa: BLE001 - any refusal is the answer, reported by its message
        text = " ".join(str(e).split()) or type(e).__name__
        # psycopg: "connection failed: connection to server at ... failed: FATAL: <the reason>"
        return f"failed: {text.rsplit('FATAL: ', 1)[-1]}"
    return "ok"
