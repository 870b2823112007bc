"""The worker API's authorization pieces without a worker: exposure, roles, the route table
against the OpenAPI document, tokens and their rotation, sessions, rate limits, the DLQ budget.
The same rules on a real worker: tests/e2e/test_api_auth.py."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cdcstream.core.secrets import SecretRef
from cdcstream.core.settings import Settings, is_loopback
from cdcstream.runtime.worker import exposure_refusal
from cdcstream.web.auth import (
    ROLES,
    ROUTES,
    Access,
    Principal,
    RateLimiter,
    Sessions,
    TokenBook,
    TokenEntry,
    Unresolvable,
    configured_tokens,
    cookie_value,
)
from cdcstream.web.openapi import document
from cdcstream.web.views import dlq_page


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.53", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("worker.internal", False), ("", False),
])
def test_loopback_or_exposed(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_worker_without_token_is_refused() -> None:
    why = exposure_refusal(Settings(web_host="0.0.0.0"))
    assert why and "not a loopback address" in why and "CDCSTREAM_API_TOKEN" in why
    assert exposure_refusal(Settings(web_host="0.0.0.0", api_read_token="env:X")) is None
    assert exposure_refusal(Settings(web_host="127.0.0.1")) is None
    assert Settings(web_host="0.0.0.0", api_token="env:X").reads_open is False
    assert Settings(protect_reads=True).reads_open is False
    assert Settings().reads_open is True


def test_token_settings() -> None:
    s = Settings(api_token="env:A", api_read_token="file:/run/r",
                 api_tokens=json.dumps([{"name": "shop", "role": "read", "token": "vault:secret/api#shop",
                                         "tables": ["pg.public.orders"]}]))
    entries = {e.name: e for e in configured_tokens(s)}
    assert set(entries) == {"admin", "read", "shop"}
    assert entries["admin"].role == "admin" and entries["read"].role == "read"
    assert entries["shop"].tables == frozenset({"pg.public.orders"}) and str(entries["shop"].ref).startswith("vault:")
    with pytest.raises(ValueError, match="only a read token"):
        Settings(api_tokens=[{"name": "x", "role": "admin", "token": "env:X", "tables": ["a.b.c"]}])
    with pytest.raises(ValueError, match="unique"):
        Settings(api_tokens=[{"name": "admin", "role": "read", "token": "env:X"}])


def test_roles_pass_levels() -> None:
    admin, read = Principal("a", "admin"), Principal("r", "read")
    scoped = Principal("s", "read", frozenset({"t"}))
    assert [admin.passes(a) for a in Access] == [True, True, True, True]
    assert [read.passes(a) for a in Access] == [True, True, True, False]
    assert [scoped.passes(a) for a in Access] == [True, True, False, False]
    assert ROLES[Access.ADMIN] == ("admin",) and "table-scoped" in ROLES[Access.SEARCH]


def test_openapi_document_covers_every_route_with_its_roles() -> None:
    for reads_open in (True, False):
        doc = document(reads_open, "pg.public.orders")
        ops = {(p, m.upper()): o for p, methods in doc["paths"].items() for m, o in methods.items()}
        assert set(ops) == {(p, m) for p, ms in ROUTES.items() for m in ms}
        for (path, method), o in ops.items():
            need = ROUTES[path][method]
            assert o["x-roles"] == list(ROLES[need])
            token_needed = need is Access.ADMIN or (need is not Access.PUBLIC and not reads_open)
            assert o["security"] == ([{"bearer": []}] if token_needed else []), (path, method)
    assert ROUTES["/healthz"] == {"GET": Access.PUBLIC}
    assert all(ROUTES[p][m] is Access.ADMIN for p, m in (("/api/tables/{table}/profile", "PUT"),
                                                          ("/api/dlq/replay", "POST"), ("/api/dlq/skip", "POST")))


def test_token_book_identifies_and_follows_rotation() -> None:
    values = {"env:A": "admin-value", "env:R": "read-value"}

    def resolve(ref: SecretRef) -> str | None:
        return values.get(str(ref))

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    book = TokenBook([TokenEntry("admin", "admin", SecretRef.parse("env:A"), None),
                      TokenEntry("read", "read", SecretRef.parse("env:R"), None)], resolve, run, ttl=0.05)

    async def go() -> None:
        who = await book.identify("admin-value")
        assert who is not None and who.name == "admin" and who.role == "admin"
        assert await book.identify("read-value") == Principal("read", "read")
        assert await book.identify("nope") is None
        fp = await book.fingerprint("admin")
        values["env:A"] = "rotated"
        await asyncio.sleep(0.06)
        assert await book.identify("admin-value") is None
        assert (await book.identify("rotated")) is not None and await book.fingerprint("admin") != fp
        values.clear()
        await asyncio.sleep(0.06)
        with pytest.raises(Unresolvable):
            await book.identify("rotated")

    asyncio.run(go())


def test_sessions_and_cookies() -> None:
    s = Sessions()
    sid = s.open(Principal("read", "read"), "fp")
    assert len(sid) >= 40 and s.get(sid) == (Principal("read", "read"), "fp")
    s.close(sid)
    assert s.get(sid) is None
    assert cookie_value("a=1; cdcstream_session=abc; b=2") == "abc"
    assert cookie_value("cdcstream_session=") is None and cookie_value(None) is None


def test_rate_limiter_refills() -> None:
    lim = RateLimiter(per_minute=2)
    assert lim.take("a", now=0.0) == 0 and lim.take("a", now=0.0) == 0
    wait = lim.take("a", now=0.0)
    assert wait == pytest.approx(30.0)
    assert lim.take("b", now=0.0) == 0  # per token
    assert lim.take("a", now=31.0) == 0


def test_dlq_page_keeps_to_the_byte_budget() -> None:
    recs = [{"dlq_offset": i, "reason": "bad", "value": "x" * 1000} for i in range(5)]
    shown, nxt, truncated = dlq_page(recs, end=5, budget=2500)
    assert [r["dlq_offset"] for r in shown] == [0, 1] and nxt == 2 and truncated
    shown, nxt, truncated = dlq_page(recs[:1], end=5, budget=10)  # one record always, however big
    assert len(shown) == 1 and nxt == 1 and not truncated
    assert dlq_page([], end=7) == ([], 7, False)


def test_docs_endpoint_table_states_the_enforced_roles() -> None:
    """docs/api.md's endpoint table: every route, with the role ROUTES enforces."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "api.md").read_text()
    words = {"none, ever": Access.PUBLIC, "none": Access.PUBLIC, "read": Access.READ,
             "read or table-scoped": Access.SEARCH, "admin": Access.ADMIN}
    seen = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[2] not in words or not cells[0].startswith("`"):
            continue
        for span in re.findall(r"`([^`]+)`", cells[0]):
            method, _, path = span.rpartition(" ")
            # A bare path stands for each of its methods.
            for m in [method] if method else list(ROUTES[path]):
                assert ROUTES[path][m] is words[cells[2]], (span, cells[2])
                seen.add((path, m))
    assert seen == {(p, m) for p, ms in ROUTES.items() for m in ms}
