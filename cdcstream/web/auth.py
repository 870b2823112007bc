"""Who may call what on the worker API: roles, the route table, tokens, sessions, rate limits.

``ROUTES`` is the one declaration of every route, its methods and the access each needs. The
views take their access from it and the OpenAPI document (``x-roles``) is generated from it,
so the authorization matrix test, which reads the document, covers every route the worker
serves.

Access levels, weakest first:

* ``public`` – anyone, no token looked at (``/healthz``, the login form);
* ``search`` – any valid token, a table-scoped one included (search, the OpenAPI document);
* ``read`` – a ``read`` or ``admin`` token not limited to tables;
* ``admin`` – an ``admin`` token.

``search`` and ``read`` need no token while reads are open: a loopback bind address without
``protect_reads``. ``admin`` always needs one.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdcstream.core.secrets import SecretRef
from cdcstream.core.settings import Settings

log = logging.getLogger("cdcstream.web.auth")

#: How long a resolved token value is trusted: a rotated token takes effect within this.
TOKEN_CACHE_S = 3.0
SESSION_TTL_S = 8 * 3600.0
SESSION_COOKIE = "cdcstream_session"
MAX_SESSIONS = 1000


class Access(enum.IntEnum):
    PUBLIC = 0
    SEARCH = 1
    READ = 2
    ADMIN = 3


#: Roles that pass each level once a token is required (documented in docs/api.md, tested by
#: tests/e2e/test_api_matrix.py through the OpenAPI document's ``x-roles``).
ROLES: dict[Access, tuple[str, ...]] = {
    Access.PUBLIC: ("anyone",),
    Access.SEARCH: ("read", "admin", "table-scoped"),
    Access.READ: ("read", "admin"),
    Access.ADMIN: ("admin",),
}

#: path -> method -> access. HEAD follows GET; OPTIONS and undeclared methods need the
#: weakest access of the path (then 204 with ``Allow``, or 405).
ROUTES: dict[str, dict[str, Access]] = {
    "/healthz": {"GET": Access.PUBLIC},
    "/login": {"GET": Access.PUBLIC, "POST": Access.PUBLIC},
    "/logout": {"POST": Access.PUBLIC},
    "/status": {"GET": Access.READ},
    "/metrics": {"GET": Access.READ},
    "/api/openapi.json": {"GET": Access.SEARCH},
    "/api/connectors": {"GET": Access.READ},
    "/api/tables": {"GET": Access.READ},
    "/api/tables/{table}": {"GET": Access.READ},
    # A search hit's row: a table-scoped token reads rows of its own tables (checked in the view).
    "/api/tables/{table}/rows/{id}": {"GET": Access.SEARCH},
    "/api/tables/{table}/profile": {"PUT": Access.ADMIN},
    "/api/tables/{table}/reembed": {"POST": Access.ADMIN},
    "/api/workers": {"GET": Access.READ},
    # values=true (whole records, up to 16 MiB each) needs admin: checked in the view.
    "/api/dlq": {"GET": Access.READ},
    "/api/dlq/replay": {"POST": Access.ADMIN},
    "/api/dlq/skip": {"POST": Access.ADMIN},
    "/api/search": {"GET": Access.SEARCH},
    "/search": {"GET": Access.SEARCH},
}


@dataclass(frozen=True)
class Principal:
    """The caller: a token's name and role, never its value."""

    name: str
    role: str  # "read" | "admin"
    tables: frozenset[str] | None = None  # None: every table
    via_cookie: bool = False

    @property
    def scoped(self) -> bool:
        return self.tables is not None

    def passes(self, need: Access) -> bool:
        if need is Access.PUBLIC:
            return True
        if need is Access.ADMIN:
            return self.role == "admin"
        if need is Access.READ:
            return not self.scoped
        return True


ANONYMOUS = Principal("anonymous", "read")


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: str
    ref: SecretRef
    tables: frozenset[str] | None


def configured_tokens(s: Settings) -> list[TokenEntry]:
    out = []
    if isinstance(s.api_token, SecretRef):
        out.append(TokenEntry("admin", "admin", s.api_token, None))
    if isinstance(s.api_read_token, SecretRef):
        out.append(TokenEntry("read", "read", s.api_read_token, None))
    out += [TokenEntry(t.name, t.role, t.token, frozenset(t.tables) if t.tables else None) for t in s.api_tokens]
    return out


class Unresolvable(RuntimeError):
    """No configured token could be resolved (Vault down, file missing): a 503, not a 401."""


@dataclass
class TokenBook:
    """The configured tokens' current values, each re-resolved at most every ``ttl`` seconds.

    ``resolve`` is blocking (Vault, files): it runs in the executor through ``run``.
    """

    entries: list[TokenEntry]
    resolve: Callable[[SecretRef], str | None]
    run: Callable[..., Any]
    ttl: float = TOKEN_CACHE_S
    _values: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def has_admin(self) -> bool:
        return any(e.role == "admin" for e in self.entries)

    async def _current(self) -> dict[str, str | None]:
        now = time.monotonic()
        if all(e.name in self._values and now - self._values[e.name][0] < self.ttl for e in self.entries):
            return {k: v for k, (_, v) in self._values.items()}
        async with self._lock:
            now = time.monotonic()
            for e in self.entries:
                hit = self._values.get(e.name)
                if hit and now - hit[0] < self.ttl:
                    continue
                try:
                    value = await self.run(self.resolve, e.ref)
                except Exception as ex:  # noqa: BLE001 - the reference's details may name paths; type only
                    log.warning("api token %r cannot be resolved: %s", e.name, type(ex).__name__)
                    value = None
                self._values[e.name] = (time.monotonic(), value or None)
            return {k: v for k, (_, v) in self._values.items()}

    async def identify(self, given: str) -> Principal | None:
        """The principal ``given`` belongs to, or None. Every entry is compared (constant time
        each), so the answer's timing does not tell which token was close."""
        values = await self._current()
        if not any(values.values()):
            raise Unresolvable("no api token can be resolved right now")
        found = None
        for e in self.entries:
            v = values.get(e.name)
            if v and hmac.compare_digest(given.encode(), v.encode()) and found is None:
                found = Principal(e.name, e.role, e.tables)
        return found

    async def fingerprint(self, name: str) -> str | None:
        """A digest of the token ``name``'s current value: a session stays valid while it matches."""
        v = (await self._current()).get(name)
        return hashlib.sha256(v.encode()).hexdigest() if v else None


@dataclass
class Sessions:
    """Browser sessions of the login form: an opaque id in an HttpOnly cookie, never the token.

    A session remembers the token's name and a digest of its value at login, so a rotated
    token ends its sessions.
    """

    _by_id: dict[str, tuple[float, Principal, str]] = field(default_factory=dict)

    def open(self, who: Principal, fingerprint: str) -> str:
        now = time.monotonic()
        for sid in [k for k, (exp, _, _) in self._by_id.items() if exp < now]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = (now + SESSION_TTL_S, who, fingerprint)
        return sid

    def get(self, sid: str) -> tuple[Principal, str] | None:
        hit = self._by_id.get(sid)
        if hit is None or hit[0] < time.monotonic():
            self._by_id.pop(sid, None)
            return None
        return hit[1], hit[2]

    def close(self, sid: str) -> None:
        self._by_id.pop(sid, None)


@dataclass
class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests, refilled continuously."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed (one taken), else the seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        level, at = self._buckets.get(key, (float(self.per_minute), now))
        level = min(float(self.per_minute), level + (now - at) * rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / rate


def cookie_value(header: str | None, name: str = SESSION_COOKIE) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None
