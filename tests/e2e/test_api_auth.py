"""Who may call what on the worker API, on a real worker (issue 18).

The authorization matrix is generated from the worker's own OpenAPI document (whose routes and
``x-roles`` come from ``cdcstream.web.auth.ROUTES``, the table the views enforce): every route ×
GET, HEAD, OPTIONS, PUT, POST, DELETE × {no token, wrong token, read, admin, table-scoped}.
Exactly the documented cells get past authorization (not 401/403); an undocumented method
answers 405 (OPTIONS 204) to whoever may call the path at all, 401/403 to anyone else.

The worker has ``protect_reads`` on: on loopback that is the check a worker bound beyond
loopback always makes (tests bind nothing but 127.0.0.1; the non-loopback start is tested by its
refusal, which happens before anything binds).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import ROOT, Pipeline, pipeline
from tests.support import CONNECTION_ERRORS, WorkerApi, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADMIN = "e2e-admin-token-5b1f0c2e9d"
READ = "e2e-read-token-8e2a7d41c3"
SCOPED = "e2e-scoped-token-0f9c3b6a17"
WRONG = "e2e-wrong-token-000000000"
METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE")
#: caller -> (Authorization header or None, the role name x-roles uses)
CALLERS: dict[str, tuple[str | None, str]] = {
    "no token": (None, "anyone"),
    "wrong token": (WRONG, "anyone"),
    "read": (READ, "read"),
    "admin": (ADMIN, "admin"),
    "table-scoped": (SCOPED, "table-scoped"),
}
SEMANTIC_PER_MINUTE = 2
API_NOT_YET = (*CONNECTION_ERRORS, KeyError)
TABLES: list[dict[str, Any]] = [
    {"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]},
    {"name": "public.orders", "profile": "index_only"},
    {"name": "public.audit_log", "profile": "archive"},
]


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory, require: Callable[[str], dict[str, Any]]) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    tmp = tmp_path_factory.mktemp("api-auth")
    with pipeline(tmp, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as pipe:
        pipe.sql("INSERT INTO articles VALUES (1, 'Replication slots', %s, 'ops')",
                 (f"Run {pipe.tag}. A slot retains WAL for a logical decoding consumer.",))
        pipe.sql("INSERT INTO orders VALUES (1, 'acme', 19.99, 'new'), (2, 'globex', 12.50, 'paid')")
        admin_file = tmp / "admin.token"
        admin_file.write_text(ADMIN)
        admin_file.chmod(0o600)
        scoped = [{"name": "orders-only", "role": "read", "token": "env:E2E_SCOPED_TOKEN",
                   "tables": [f"{pipe.connector}.public.orders"]}]
        pipe.env.update({"CDCSTREAM_API_TOKEN": f"file:{admin_file}",
                         "CDCSTREAM_API_READ_TOKEN": "env:E2E_READ_TOKEN", "E2E_READ_TOKEN": READ,
                         "CDCSTREAM_API_TOKENS": json.dumps(scoped), "E2E_SCOPED_TOKEN": SCOPED,
                         "CDCSTREAM_PROTECT_READS": "true",
                         "CDCSTREAM_API_SEMANTIC_PER_MINUTE": str(SEMANTIC_PER_MINUTE)})
        pipe.apply()
        pipe.start_worker()
        api = WorkerApi(pipe.web_port, READ)
        # Both indices of the article: the read-token search below expects its row, and the row
        # document can land (and refresh) after its chunks (CI failure of 2026-12-05).
        pipe.wait("snapshot indexed", lambda: len(pipe.docs("orders")) == 2 and len(pipe.docs("articles")) == 1
                  and len(pipe.docs("articles", chunks=True)) >= 1, timeout=180)
        pipe.wait("API up", lambda: api.get("/api/tables", auth=True).status_code == 200, retry_on=API_NOT_YET)
        yield pipe


def call(p: Pipeline, method: str, path: str, token: str | None, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"http://127.0.0.1:{p.web_port}{path}", headers=headers, timeout=60,
                            allow_redirects=False, **kw)


def concrete(path: str, op: dict[str, Any] | None, p: Pipeline) -> str:
    """A callable URL for a documented path: path parameters from the document's examples,
    required query parameters filled in."""
    url = path.replace("{table}", f"{p.connector}.public.orders").replace("{id}", "1")
    required = [x["name"] for x in (op or {}).get("parameters", []) if x.get("in") == "query" and x.get("required")]
    return url + ("?" + "&".join(f"{n}=x" for n in required) if required else "")


def test_authorization_matrix_from_openapi(p: Pipeline) -> None:
    doc = call(p, "GET", "/api/openapi.json", READ).json()
    paths: dict[str, dict[str, Any]] = doc["paths"]
    assert {"/healthz", "/status", "/metrics", "/api/search", "/api/dlq/skip"} <= set(paths)
    wrong: list[str] = []
    cells = 0
    seen: dict[int, int] = {}
    for path, ops in sorted(paths.items()):
        floor_roles = set().union(*(set(o["x-roles"]) for o in ops.values()))
        for method in METHODS:
            op = ops.get("get" if method == "HEAD" else method.lower())
            url = concrete(path, op or ops.get("get"), p)
            for caller, (token, role) in CALLERS.items():
                cells += 1
                roles = set(op["x-roles"]) if op else floor_roles
                allowed = "anyone" in roles or (role in roles and token != WRONG and token is not None)
                r = call(p, method, url, token)
                got = r.status_code
                seen[got] = seen.get(got, 0) + 1
                if allowed and op is not None:
                    ok = got not in (401, 403) and got < 500
                    want = "not 401/403/5xx"
                elif allowed:
                    want_code = 204 if method == "OPTIONS" else 405
                    ok, want = got == want_code, str(want_code)
                else:
                    want_code = 401 if token in (None, WRONG) else 403
                    ok, want = got == want_code, str(want_code)
                if not ok:
                    wrong.append(f"{method} {url} [{caller}]: {got}, wanted {want}: {r.text[:200]}")
    print(f"authorization matrix: {len(paths)} routes x {len(METHODS)} methods x {len(CALLERS)} callers = "
          f"{cells} cells, {cells - len(wrong)} as documented; statuses {dict(sorted(seen.items()))}")
    assert cells == len(paths) * len(METHODS) * len(CALLERS)
    assert not wrong, "\n".join(wrong)


def test_head_and_options_need_the_token(p: Pipeline) -> None:
    # The bug of issue 18: HEAD ran the GET handler without a token (Faust's View.head calls get).
    for path in ("/api/search?q=x", "/api/dlq?values=true", "/api/tables", "/status", "/metrics"):
        for method in ("HEAD", "OPTIONS", "GET"):
            r = call(p, method, path, None)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    assert call(p, "HEAD", "/api/tables", READ).status_code == 200
    r = call(p, "OPTIONS", "/api/tables", READ)
    assert r.status_code == 204 and r.headers["Allow"] == "GET, HEAD, OPTIONS"
    # Liveness only: no token, no data.
    h = call(p, "GET", "/healthz", None)
    assert h.status_code == 200 and h.text == "ok\n"


def test_roles_for_dlq_values_and_writes(p: Pipeline) -> None:
    assert call(p, "GET", "/api/dlq", READ).status_code == 200
    r = call(p, "GET", "/api/dlq?values=true", READ)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    body = call(p, "GET", "/api/dlq?values=true", ADMIN).json()
    assert {"records", "next_offset", "truncated"} <= set(body)
    for method, path, payload in (("PUT", f"/api/tables/{p.connector}.public.orders/profile", {"profile": "archive"}),
                                  ("POST", "/api/dlq/replay", {"all": True}),
                                  ("POST", "/api/dlq/skip", {"table": f"{p.connector}.public.orders", "reason": "x"})):
        for token in (READ, SCOPED):
            r = call(p, method, path, token, json=payload)
            assert r.status_code == 403 and READ not in r.text and ADMIN not in r.text, (method, path)
    # Admin may: not blocked, so the skip is refused for the state, not the token.
    assert call(p, "POST", "/api/dlq/skip", ADMIN, json={"table": f"{p.connector}.public.orders",
                                                          "reason": "x"}).status_code == 409


def test_table_scoped_token_searches_its_tables_only(p: Pipeline) -> None:
    hits = call(p, "GET", "/api/search?q=*", SCOPED).json()["hits"]
    assert hits and {h["table"] for h in hits} == {f"{p.connector}.public.orders"}
    r = call(p, "GET", f"/api/search?q=*&table={p.connector}.public.articles", SCOPED)
    assert r.status_code == 403
    r = call(p, "GET", "/api/search?q=*&table=nope.public.x", SCOPED)
    assert r.status_code == 400 and "articles" not in r.json()["error"]  # tables beyond its own stay unnamed
    for path in ("/api/tables", "/status", "/metrics", "/api/dlq", "/api/connectors"):
        assert call(p, "GET", path, SCOPED).status_code == 403, path
    # The read token sees every indexed table.
    hits = call(p, "GET", "/api/search?q=*", READ).json()["hits"]
    assert {h["table"] for h in hits} >= {f"{p.connector}.public.orders", f"{p.connector}.public.articles"}


def test_semantic_search_is_rate_limited_per_token(p: Pipeline) -> None:
    q = f"/api/search?q=logical+decoding&mode=semantic&table={p.connector}.public.articles"
    for _ in range(SEMANTIC_PER_MINUTE):
        r = call(p, "GET", q, READ)
        assert r.status_code in (200, 502), r.text  # 502: the shared embeddings server is busy
    r = call(p, "GET", q, READ)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60, r.text
    hy = call(p, "GET", q.replace("semantic", "hybrid"), READ)
    assert hy.status_code == 429  # one budget for both kinds
    assert call(p, "GET", q.replace("semantic", "keyword"), READ).status_code == 200  # keyword costs nothing
    # Per token: the admin token has its own budget.
    assert call(p, "GET", q, ADMIN).status_code in (200, 502)


def test_admin_token_rotates_without_restart(p: Pipeline) -> None:
    rotated = ADMIN + "-rotated"
    token_file = p.tmp / "admin.token"
    token_file.write_text(rotated)
    try:
        started = time.monotonic()
        p.wait("rotated token accepted", lambda: call(p, "GET", "/api/dlq?values=true", rotated).status_code == 200,
               timeout=15)
        assert time.monotonic() - started < 10
        assert call(p, "GET", "/api/dlq?values=true", ADMIN).status_code == 401
    finally:
        token_file.write_text(ADMIN)
        p.wait("token restored", lambda: call(p, "GET", "/api/dlq?values=true", ADMIN).status_code == 200,
               timeout=15)


def test_status_page_in_a_browser_session(p: Pipeline) -> None:
    """What a browser does: the form posts the token, the cookie carries a session id; no token
    in a URL, the cookie HttpOnly, and it never authorizes a write."""
    browser = requests.Session()
    base = f"http://127.0.0.1:{p.web_port}"
    assert browser.get(f"{base}/status", timeout=30).status_code == 401
    form = browser.get(f"{base}/login", timeout=30)
    assert form.status_code == 200 and 'method="post"' in form.text and 'type="password"' in form.text
    assert browser.post(f"{base}/login", data={"token": WRONG}, timeout=30).status_code == 401
    r = browser.post(f"{base}/login", data={"token": READ}, timeout=30, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/status"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and READ not in cookie
    page = browser.get(f"{base}/status", timeout=30)
    assert page.status_code == 200 and f'data-connector="{p.connector}"' in page.text and READ not in page.text
    assert browser.get(f"{base}/api/tables", timeout=30).status_code == 200
    r = browser.put(f"{base}/api/tables/{p.connector}.public.orders/profile", json={"profile": "archive"}, timeout=30)
    assert r.status_code == 401  # the cookie is for reads only
    browser.post(f"{base}/logout", timeout=30)
    assert browser.get(f"{base}/status", timeout=30).status_code == 401
    # Neither token reached the worker's log.
    log = (p.tmp / "worker.log").read_text(errors="replace")
    assert READ not in log and ADMIN not in log and SCOPED not in log


def test_a_forged_cursor_shows_a_scoped_token_nothing_beyond_its_tables(p: Pipeline) -> None:
    """Cursors are not signed: one made over every table (a read token's point in time), re-bound
    to the scoped token's own query, must still keep to the scoped token's tables."""
    import base64

    from cdcstream.web.search import encode_cursor, parse_request

    first = call(p, "GET", "/api/search?q=*&size=1", READ).json()
    assert first["total"]["value"] == 3 and first["next"]  # two orders and the article
    raw = first["next"]
    cursor = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    # From before the best score: every row of that point in time would follow.
    forged = encode_cursor({**cursor, "o": 0, "after": [1e9, 0], "fp": parse_request([("q", "*")]).fingerprint()})
    r = call(p, "GET", f"/api/search?q=*&size=10&search_after={forged}", SCOPED)
    assert r.status_code == 200, r.text
    assert sorted((h["table"], h["id"]) for h in r.json()["hits"]) == [
        (f"{p.connector}.public.orders", "1"), (f"{p.connector}.public.orders", "2")], r.text
    assert r.json()["total"] == {"value": 2, "relation": "eq"}


def test_search_page_and_rows_in_a_table_scoped_session(p: Pipeline) -> None:
    """The search page in a browser with a table-scoped token: the login form leads back to
    /search, the token's table is searchable and its rows readable, nothing beyond it."""
    browser = requests.Session()
    base = f"http://127.0.0.1:{p.web_port}"
    orders, articles = f"{p.connector}.public.orders", f"{p.connector}.public.articles"
    assert browser.get(f"{base}/search", timeout=30).status_code == 401
    form = browser.get(f"{base}/login", params={"next": "/search"}, timeout=30).text
    assert 'name="next" value="/search"' in form
    # Only the known pages: never an address from outside.
    assert 'value="/status"' in browser.get(f"{base}/login", params={"next": "https://evil.example/"},
                                           timeout=30).text
    r = browser.post(f"{base}/login", data={"token": SCOPED, "next": "/search"}, timeout=30, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/search"
    page = browser.get(f"{base}/search", params={"q": "acme"}, timeout=30)
    assert page.status_code == 200 and f'data-table="{orders}" data-id="1"' in page.text
    assert f'<option value="{articles}"' not in page.text  # the table list keeps to the token's tables
    denied = browser.get(f"{base}/search", params={"q": "slot", "table": articles}, timeout=30)
    assert denied.status_code == 403 and "may not search" in denied.text
    row = browser.get(f"{base}/api/tables/{orders}/rows/1", timeout=30)
    assert row.status_code == 200 and row.json()["fields"]["customer"] == "acme"
    assert browser.get(f"{base}/api/tables/{articles}/rows/1", timeout=30).status_code == 403
    browser.post(f"{base}/logout", timeout=30)


def test_dlq_listing_pages_on_a_byte_budget(p: Pipeline) -> None:
    from aiokafka import AIOKafkaProducer

    async def poison() -> None:
        prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
        await prod.start()
        try:
            for i in range(3):
                await prod.send_and_wait(p.topic("orders"), key=f'{{"id": {90 + i}}}'.encode(),
                                         value=b"{not json " + b"x" * 200_000, partition=0)
        finally:
            await prod.stop()

    asyncio.run(poison())
    p.wait("poison dead-lettered", lambda: call(p, "GET", "/api/dlq", READ).json()["end_offset"] >= 3,
           retry_on=API_NOT_YET)
    body = call(p, "GET", "/api/dlq?from_offset=0&limit=3", READ).json()
    assert [r["dlq_offset"] for r in body["records"]] == [0, 1, 2]
    assert body["next_offset"] == 3 and body["truncated"] is False
    # Previews stay small; whole values are the admin's, inside the same budget per answer.
    assert all(len(json.dumps(r)) < 10_000 for r in body["records"])
    full = call(p, "GET", "/api/dlq?from_offset=0&limit=3&values=true", ADMIN).json()
    assert len(full["records"]) == 3 and len(full["records"][0]["value"]) > 200_000


def test_worker_bound_beyond_loopback_without_token_refuses(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "cdcstream.yaml"
    config.write_text("connectors: []\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CDCSTREAM_WEB_HOST": "0.0.0.0",
           "CDCSTREAM_WEB_PORT": str(port), "CDCSTREAM_CONFIG": str(config),
           "CDCSTREAM_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "worker"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"refusing to start: web_host '0\.0\.0\.0' is not a loopback address and no API token",
                     r.stderr), r.stderr
    # It refused before binding anything, before even creating its data dir.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("token", [READ, ADMIN], ids=["read", "admin"])
def test_openapi_fuzz_with_each_role_no_server_errors(p: Pipeline, tmp_path: Path, token: str) -> None:
    """schemathesis over the protected worker's document with each role's token: refusals (403)
    and rate limits (429) are answers, a 5xx is a bug (tests/e2e/st_hooks.py)."""
    exe = Path(sys.executable).parent / "schemathesis"
    base = f"http://127.0.0.1:{p.web_port}"
    env = {**p.env, "SCHEMATHESIS_HOOKS": "tests.e2e.st_hooks", "PYTHONPATH": str(ROOT)}
    # The document itself needs a token here: hand schemathesis a copy.
    spec = tmp_path / "openapi.json"
    spec.write_text(call(p, "GET", "/api/openapi.json", token).text)
    r = subprocess.run([str(exe), "run", str(spec), "--url", base, "--checks", "no_server_error_of_ours",
                        "--max-examples", "25", "--seed", "18", "--header", f"Authorization: Bearer {token}",
                        "--request-timeout", "90", "--no-color"],
                       capture_output=True, text=True, timeout=540, cwd=tmp_path, env=env, check=False)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    assert re.search(r"\b\d+ passed\b|Test cases:", tail), tail
    assert token not in tail


def test_verify_asks_the_protected_worker_with_the_read_token(p: Pipeline) -> None:
    # The bug of issue 18: verify asked /api/tables without a token, took the 401 for "no worker" and
    # compared against the config's profile, so a table switched at runtime was checked as the wrong one.
    def verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cdcstream.cli", "verify", "public.orders", "--full",
                               "--settle", "30", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=False)

    r = verify(p.env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    bare = {k: v for k, v in p.env.items() if k not in ("CDCSTREAM_API_TOKEN", "CDCSTREAM_API_READ_TOKEN")}
    r = verify(bare)
    assert r.returncode == 2 and "needs a token (HTTP 401)" in r.stderr and "CDCSTREAM_API_READ_TOKEN" in r.stderr, \
        r.stderr
    r = verify({**bare, "CDCSTREAM_API_READ_TOKEN": "env:E2E_WRONG", "E2E_WRONG": WRONG})
    assert r.returncode == 2 and "was refused (HTTP 401)" in r.stderr and WRONG not in r.stderr, r.stderr
