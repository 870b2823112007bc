"""The worker's web server: status page, Prometheus metrics, JSON API with its OpenAPI document.

Every view is a class subclassing ``ApiView``, whose ``dispatch`` authorizes *every* request,
whatever its method (HEAD and OPTIONS included, and methods the view does not serve, which
then answer 405), before any handler runs: Faust ignores ``base=`` on function views
(notes/faust.md), so a function view would silently be unprotected, and Faust's ``View.head``
calls ``get``, so a check keyed on overridden methods would let HEAD through. What each route
and method needs is declared once, in ``cdcstream.web.auth.ROUTES``; roles and tokens are
described there and in docs/api.md.

Handlers run on the agents' event loop: Elasticsearch goes through the async client,
Kafka through aiokafka, and Kafka Connect, psycopg and tiktoken through the executor.
Table writes never happen here: a profile change is a command on the control topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs

import faust
from faust.web import Request, Response, View
from faust.web.exceptions import MethodNotAllowed

from cdcstream.core.config import ProcessingProfile
from cdcstream.core.masking import mask_text
from cdcstream.core.route import Route
from cdcstream.web.auth import (
    ANONYMOUS,
    ROUTES,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Access,
    Principal,
    RateLimiter,
    Sessions,
    TokenBook,
    Unresolvable,
    configured_tokens,
    cookie_value,
)
from cdcstream.web.status import StatusService, find_route, in_executor, live_profile, table_id

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger("cdcstream.web.views")

MAX_BODY_BYTES = 64 * 1024
#: Serialized bytes of DLQ records per answer (at least one record is always returned): a
#: listing of 1,000 records of up to 16 MiB each must not become one huge response.
DLQ_RESPONSE_BYTES = 4 << 20
SAFE_METHODS = ("GET", "HEAD")


class HttpError(Exception):
    """An error answer: ``status`` and a JSON body with at least ``error``."""

    def __init__(self, status: int, error: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": error, **extra}


def bad(error: str, **extra: Any) -> HttpError:
    return HttpError(400, error, **extra)


# --- input validation (pure; unit-tested) ----------------------------------------------
PROFILE_KEYS = {"profile", "backfill", "confirm", "drop_index"}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise bad("a JSON object body is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body


def parse_profile_change(body: dict[str, Any]) -> tuple[ProcessingProfile, bool, bool, bool]:
    unknown = sorted(set(body) - PROFILE_KEYS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PROFILE_KEYS))}")
    profile = body.get("profile")
    allowed = [p.value for p in ProcessingProfile]
    if not isinstance(profile, str) or profile not in allowed:
        raise bad(f"profile must be one of {', '.join(allowed)}")
    flags = []
    for k in ("backfill", "confirm", "drop_index"):
        v = body.get(k, False)
        if not isinstance(v, bool):
            raise bad(f"{k} must be true or false")
        flags.append(v)
    return ProcessingProfile(profile), flags[0], flags[1], flags[2]


def parse_replay(body: dict[str, Any]) -> set[int] | None:
    """The DLQ offsets to replay, or None for all."""
    unknown = sorted(set(body) - {"offsets", "all"})
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}; allowed: offsets, all")
    if ("offsets" in body) == (body.get("all") is True):
        raise bad("give exactly one of offsets (a list of DLQ offsets) or all: true")
    if "all" in body and not isinstance(body["all"], bool):
        raise bad("all must be true or false")
    if "offsets" not in body:
        return None
    offs = body["offsets"]
    if (not isinstance(offs, list) or not 1 <= len(offs) <= 1000
            or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < 2**63 for o in offs)):
        # Kafka offsets are 64-bit: a larger number is no offset (and no JSON encoder of ours echoes it).
        raise bad("offsets must be a list of 1 to 1000 non-negative 64-bit integers")
    return set(offs)


def parse_int(params: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise bad(f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


def parse_bool(params: Any, name: str) -> bool:
    raw = params.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false", "1", "0"):
        raise bad(f"{name} must be true or false")
    return raw.lower() in ("true", "1")


#: Where the login form may send the browser afterwards (never an address given from outside).
LOGIN_TARGETS = ("/status", "/search")


def login_target(wanted: str | None) -> str:
    return wanted if wanted in LOGIN_TARGETS else "/status"


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# --- the base view ---------------------------------------------------------------------
class ApiView(View):
    """Authorizes every request in ``dispatch`` and turns ``HttpError`` into JSON answers."""

    pipe: ClassVar[Pipeline]
    svc: ClassVar[StatusService]
    book: ClassVar[TokenBook]
    sessions: ClassVar[Sessions]
    #: method -> access, from ``ROUTES`` (set by ``register``).
    access: ClassVar[dict[str, Access]] = {}

    async def dispatch(self, request: Any) -> Any:
        try:
            method = request.method.upper()
            need = self.access.get("GET" if method == "HEAD" else method)
            # OPTIONS and unserved methods: as much as the path's weakest method, so that they
            # tell nothing (not even the 405) to a caller who may call nothing here.
            who = await self.authorize(request, min(self.access.values()) if need is None else need)
            request["principal"] = who
            if need is None:
                allow = ", ".join(sorted({*self.access, *(["HEAD"] if "GET" in self.access else []), "OPTIONS"}))
                if method == "OPTIONS":
                    return self.bytes(b"", status=204, headers={"Allow": allow})
                raise HttpError(405, f"method {method} not allowed here; allowed: {allow}", headers={"Allow": allow})
            return await super().dispatch(request)
        except HttpError as e:
            headers = dict(e.headers)
            if e.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="cdcstream"'
            return self.json(e.body, status=e.status, headers=headers or None)
        except Exception as e:  # one JSON 500 with a log line, never a traceback page
            log.exception("%s %s failed", request.method, request.path)
            return self.json({"error": f"internal error ({type(e).__name__}); see the worker log"}, status=500)

    async def authorize(self, request: Any, need: Access) -> Principal | None:
        """The caller, or an HttpError (401: who are you; 403: you may not; 503: tokens unresolvable)."""
        if need is Access.PUBLIC:
            return None
        s = self.pipe.settings
        given = bearer(request.headers.get("Authorization"))
        # The login form's cookie counts for reads only: a cross-site form can never write.
        sid = cookie_value(request.headers.get("Cookie")) if request.method in SAFE_METHODS else None
        if given is None and sid is None and need <= Access.READ and s.reads_open:
            return ANONYMOUS
        if need is Access.ADMIN and not self.book.has_admin:
            raise HttpError(403, "no admin token is configured: write endpoints are disabled "
                                 "(set CDCSTREAM_API_TOKEN to a secret reference)")
        if given is None and sid is None:
            raise HttpError(401, "this endpoint needs 'Authorization: Bearer <token>'"
                                 + ("" if need is Access.ADMIN else " (browsers: log in at /login)"))
        if not self.book.entries:
            raise HttpError(401, "this worker has no API token configured")
        who = await (self._by_token(given) if given is not None else self._by_session(sid or ""))
        if not who.passes(need):
            scope = ", limited to tables" if who.scoped else ""
            raise HttpError(403, f"token {who.name!r} (role {who.role}{scope}) may not call this; "
                                 f"it needs role {' or '.join(r for r in ('read', 'admin') if r in _roles(need))}")
        return who

    async def _by_token(self, given: str) -> Principal:
        try:
            who = await self.book.identify(given)
        except Unresolvable:
            raise HttpError(503, "the API tokens cannot be resolved right now") from None
        if who is None:
            raise HttpError(401, "wrong bearer token")
        return who

    async def _by_session(self, sid: str) -> Principal:
        hit = self.sessions.get(sid)
        if hit is None:
            raise HttpError(401, "no such session (expired or logged out): log in again at /login")
        who, fingerprint = hit
        try:
            current = await self.book.fingerprint(who.name)
        except Exception:  # noqa: BLE001 - same answer as an unresolvable bearer token
            raise HttpError(503, "the API tokens cannot be resolved right now") from None
        if current != fingerprint:
            self.sessions.close(sid)
            raise HttpError(401, "the token of this session was rotated: log in again at /login")
        return who

    # Every method is routed to dispatch (Faust registers the overridden ones), so that the
    # check above sees them all; the handlers below are never reached for undeclared methods.
    async def get(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method GET not allowed here")

    async def head(self, request: Request, **kwargs: Any) -> Any:
        return await self.get(request, **kwargs)

    async def post(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method POST not allowed here")

    async def put(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method PUT not allowed here")

    async def patch(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method PATCH not allowed here")

    async def delete(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method DELETE not allowed here")

    async def options(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method OPTIONS not allowed here")

    def route_of(self, ident: str) -> Route:
        r = find_route(self.pipe, ident)
        if r is None:
            known = ", ".join(table_id(x) for x in self.pipe.router.by_key.values())
            raise HttpError(404, f"no table {ident!r}; known: {known}")
        return r

    async def body(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await request.read())


def _roles(need: Access) -> tuple[str, ...]:
    from cdcstream.web.auth import ROLES

    return ROLES[need]


def principal(request: Any) -> Principal | None:
    p = request.get("principal")
    return p if isinstance(p, Principal) else None


def register(app: faust.App, pipe: Pipeline) -> None:
    # Faust's own /table (table *contents*: row state, TOAST values), /router and debug
    # pages would bypass the token: turn them off before the web server is built.
    for flag in ("web_tables_enabled", "web_router_enabled", "web_stats_enabled", "web_graph_enabled"):
        setattr(app.conf, flag, False)
    svc = StatusService(pipe)
    pipe_ref = pipe
    limiter = RateLimiter(pipe.settings.api_semantic_per_minute)

    class Base(ApiView):
        pipe = pipe_ref
        book = TokenBook(configured_tokens(pipe.settings), pipe.secret, in_executor)
        sessions = Sessions()

    Base.svc = svc

    def page(path: str) -> Any:
        def add(cls: type[ApiView]) -> Any:
            cls.access = ROUTES[path]
            return app.page(path)(cls)

        return add

    @app.timer(pipe.settings.status_sample_s)  # type: ignore[untyped-decorator]
    async def sample_status() -> None:
        await svc.sampler.tick()

    @page("/healthz")
    class Healthz(Base):
        """Liveness only: the web server answers. No data, no token (the Docker HEALTHCHECK)."""

        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.text("ok\n", headers={"Cache-Control": "no-store"})

    @page("/login")
    class Login(Base):
        """A form that turns a token into an HttpOnly session cookie, so that a browser shows
        /status without the token in a URL (it would end up in history and access logs)."""

        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.pages import render_login

            return self.html(render_login(next_path=login_target(request.query.get("next"))),
                             headers={"Cache-Control": "no-store"})

        async def post(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.pages import render_login

            raw = await request.read()
            if len(raw) > MAX_BODY_BYTES:
                raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            form = parse_qs(raw.decode("utf-8", "replace"))
            token = (form.get("token") or [""])[0].strip()
            target = login_target(next(iter(form.get("next") or []), None))
            if not token:
                return self.html(render_login("a token is required", target), status=400,
                                 headers={"Cache-Control": "no-store"})
            who = None
            if self.book.entries:
                try:
                    who = await self.book.identify(token)
                except Unresolvable:
                    raise HttpError(503, "the API tokens cannot be resolved right now") from None
            if who is None:
                return self.html(render_login("wrong token", target), status=401,
                                 headers={"Cache-Control": "no-store"})
            fp = await self.book.fingerprint(who.name)
            sid = self.sessions.open(who, fp or "")
            log.info("login: session opened for token %r", who.name)
            cookie = (f"{SESSION_COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_TTL_S)}"
                      + ("; Secure" if getattr(request, "scheme", "http") == "https" else ""))
            return self.bytes(b"", status=303, headers={"Location": target, "Set-Cookie": cookie,
                                                         "Cache-Control": "no-store"})

    @page("/logout")
    class Logout(Base):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            sid = cookie_value(request.headers.get("Cookie"))
            if sid:
                self.sessions.close(sid)
            return self.bytes(b"", status=303, headers={
                "Location": "/login", "Set-Cookie": f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"})

    @page("/status")
    class StatusPage(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.pages import render_status

            return self.html(render_status(await svc.snapshot()), headers={"Cache-Control": "no-store"})

    @page("/metrics")
    class Metrics(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.metrics import render

            return self.text(render(await svc.snapshot()), content_type="text/plain; version=0.0.4")

    @page("/api/openapi.json")
    class OpenApi(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.openapi import document

            first = next(iter(pipe.router.by_key.values()), None)
            return self.json(document(pipe.settings.reads_open, table_id(first) if first else None))

    @page("/api/connectors")
    class Connectors(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"connectors": await svc.connectors(), "worker": pipe.worker_id, "ts": time.time()})

    @page("/api/tables")
    class Tables(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"tables": await svc.tables(), "worker": pipe.worker_id, "ts": time.time(),
                              "lag_error": svc.sampler.lag_error, "blocked": svc.blocked(),
                              "embed_budget": svc.embed_budget()})

    @page("/api/tables/{table}")
    class Table(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            route = self.route_of(kwargs["table"])
            (view,) = await svc.tables([route])
            return self.json({**view, "worker": pipe.worker_id, "ts": time.time()})

    @page("/api/tables/{table}/profile")
    class Profile(Base):
        async def put(self, request: Request, **kwargs: Any) -> Response:
            body = await self.body(request)
            profile, backfill, confirm, drop_index = parse_profile_change(body)
            route = self.route_of(kwargs["table"])
            return self.json(await change_profile(pipe, svc, route, profile, backfill=backfill, confirm=confirm,
                                                  drop_index=drop_index))

    @page("/api/tables/{table}/reembed")
    class Reembed(Base):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            return self.json(await start_reembed(pipe, self.route_of(kwargs["table"])))

    @page("/api/workers")
    class Workers(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"workers": svc.workers()})

    @page("/api/dlq")
    class Dlq(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.runtime import dlq

            q = request.query
            unknown = sorted(set(q) - {"limit", "from_offset", "values"})
            if unknown:
                raise bad(f"unknown parameter(s) {', '.join(unknown)}; known: limit, from_offset, values")
            limit = parse_int(q, "limit", 100, 1, dlq.MAX_LIMIT)
            start = parse_int(q, "from_offset", None, 0, 2**62)
            values = parse_bool(q, "values")
            assert limit is not None
            who = principal(request)
            if values and (who is None or who.role != "admin"):
                if who is None or who is ANONYMOUS:
                    raise HttpError(401, "values=true needs an admin token ('Authorization: Bearer <token>')")
                raise HttpError(403, f"values=true needs role admin; token {who.name!r} has role {who.role}")
            try:
                records, first, end = await dlq.read(pipe.settings.kafka_bootstrap, pipe.dlq_topic.get_topic_name(),
                                                     limit=limit, from_offset=start)
            except Exception as e:  # noqa: BLE001 - Kafka unreachable: a gateway error, not a crash
                raise HttpError(502, f"cannot read the DLQ: {type(e).__name__}") from None
            shown, next_offset, truncated = dlq_page([dlq.public(r, values) for r in records], end)
            return self.json({"topic": pipe.dlq_topic.get_topic_name(), "first_offset": first, "end_offset": end,
                              "next_offset": next_offset, "truncated": truncated, "records": shown})

    @page("/api/dlq/replay")
    class DlqReplay(Base):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            offsets = parse_replay(await self.body(request))
            return self.json(await replay(pipe, offsets))

    @page("/api/dlq/skip")
    class DlqSkip(Base):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            body = await self.body(request)
            unknown = sorted(set(body) - {"table", "reason"})
            if unknown or not isinstance(body.get("table"), str) or not isinstance(body.get("reason", ""), str):
                raise bad("expected {\"table\": \"<table id>\", \"reason\": \"<why the event is at fault>\"}")
            route = self.route_of(body["table"])
            reason = (body.get("reason") or "").strip()[:500]
            if not reason:
                raise bad("a reason is required: it goes into the DLQ record")
            blocked = pipe.checkpoint.blocked
            key = route.table_id.key
            if blocked is None or key not in blocked.positions:
                raise HttpError(409, f"{table_id(route)} is not blocked on this worker ({pipe.worker_id}); "
                                     "nothing to skip", blocked=svc.blocked())
            pipe.skip_requests[key] = reason
            pipe.skip_wake.set()
            return self.json({"skipping": blocked.positions[key], "table": table_id(route), "reason": reason,
                              "worker": pipe.worker_id}, status=202)

    @page("/api/search")
    class Search(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json(await search(pipe, list(request.query.items()), principal(request) or ANONYMOUS,
                                          limiter))

    @page("/api/tables/{table}/rows/{id}")
    class Row(Base):
        """A row's document as the mirror holds it: where a search hit links to."""

        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json(await row_document(pipe, kwargs["table"], kwargs["id"],
                                                principal(request) or ANONYMOUS))

    @page("/search")
    class SearchPage(Base):
        """The search page: the same search as /api/search, rendered server-side."""

        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.pages import render_search

            who = principal(request) or ANONYMOUS
            form = search_form(list(request.query.items()))
            result, error, status = None, None, 200
            if form.get("q"):
                try:
                    result = await search(pipe, form_params(form), who, limiter)
                except HttpError as e:
                    error, status = str(e.body["error"]), e.status
            tables = [table_id(r) for r in pipe.router.by_key.values()
                      if _may_search(pipe, who, r) and not live_profile(pipe, r)[0].archives]
            return self.html(render_search(form, tables, result, error), status=status,
                             headers={"Cache-Control": "no-store"})


def dlq_page(records: list[dict[str, Any]], end: int,
             budget: int = DLQ_RESPONSE_BYTES) -> tuple[list[dict[str, Any]], int, bool]:
    """The records that fit ``budget`` serialized bytes (at least one), the offset to continue
    from (``from_offset`` of the next page) and whether the budget cut the page short.

    Reasons are masked again on the way out: records written before the masking (or by a sink
    that quotes values in its errors) must not show values to a read token.
    """
    shown: list[dict[str, Any]] = []
    used = 0
    for r in records:
        if isinstance(r.get("reason"), str):
            r = {**r, "reason": mask_text(r["reason"])}
        size = len(json.dumps(r, default=str))
        if shown and used + size > budget:
            return shown, int(r["dlq_offset"]), True
        shown.append(r)
        used += size
    return shown, (int(shown[-1]["dlq_offset"]) + 1 if shown else end), False


# --- handlers with I/O -----------------------------------------------------------------
def _check_profile_possible(pipe: Pipeline, route: Route, profile: ProcessingProfile) -> None:
    s = pipe.settings
    if profile.embeds and not route.table.text_columns:
        raise bad(f"profile full needs text_columns for {table_id(route)}: add them to the config first")
    if profile.embeds and not s.embed_url:
        raise bad("profile full needs embeddings: embed_url is not set")
    if profile.indexes and not s.elasticsearch_url:
        raise bad(f"profile {profile.value} needs Elasticsearch: elasticsearch_url is not set")
    if profile.archives and not s.archive_url:
        raise bad("profile archive needs an archive store: archive_url is not set")


async def estimate_backfill(pipe: Pipeline, route: Route) -> dict[str, Any]:
    """rows × average text tokens, from the source database or else from the row index."""
    from cdcstream.ops import backfill

    s = pipe.settings
    try:
        rows, texts = await in_executor(backfill.sample_source, route, pipe.resolver, deadline=20.0)
        source = "database"
    except Exception as e:  # noqa: BLE001 - fall back to the index
        log.warning("backfill estimate from %s failed (%s); using the index", route.connector.name, type(e).__name__)
        await pipe.ready()
        if pipe.es is None:
            raise HttpError(502, "cannot estimate: the source database and Elasticsearch are unavailable") from None
        try:
            rows = int((await pipe.es.count(index=route.alias))["count"])
            resp = await pipe.es.search(index=route.alias, size=backfill.SAMPLE_ROWS,
                                        source={"includes": list(route.table.text_columns)})
        except Exception:  # noqa: BLE001
            raise HttpError(502, "cannot estimate: the source database and the row index are unavailable") from None
        texts = backfill.texts_from_docs([h["_source"] for h in resp["hits"]["hits"]], route.table.text_columns)
        source = "index"
    est = await in_executor(backfill.estimate, rows, texts, s.chunk_encoding, s.embed_price_per_million_tokens,
                            source, deadline=30.0)
    return est.as_dict()


async def start_reembed(pipe: Pipeline, route: Route) -> dict[str, Any]:
    """Start re-embedding ``route``'s chunks on this worker (pipeline/reembed.py, Vectors)."""
    from elasticsearch import NotFoundError

    from cdcstream.sinks.base import SinkUnavailable

    profile, _ = live_profile(pipe, route)
    if not profile.embeds:
        raise bad(f"{table_id(route)} has profile {profile.value}: it has no chunks to re-embed")
    await pipe.ready()
    if pipe.vectors is None:
        raise HttpError(503, "re-embedding needs Elasticsearch and embeddings: elasticsearch_url and embed_url")
    from cdcstream.runtime.control import live_workers

    # Only this worker learns of the start; another one running now would keep writing the old
    # generation while it is copied, and its changes would be missing after the swap.
    others = sorted(w for w in live_workers(pipe) if w != pipe.worker_id)
    if others:
        raise HttpError(409, f"re-embedding runs on one worker, and {len(others)} other worker(s) are live "
                             f"({', '.join(others)}): they would keep writing the old generation. Stop them, "
                             f"re-embed, then start them again (docs/profiles.md)")
    try:
        mig = await pipe.vectors.reembed(route.chunks_alias)
    except NotFoundError:
        raise HttpError(404, f"{table_id(route)} has no chunks index yet: nothing to re-embed") from None
    except (ValueError, SinkUnavailable) as e:
        raise HttpError(409, str(e)) from None
    return {"table": table_id(route), "worker": pipe.worker_id, **mig.view()}


async def change_profile(pipe: Pipeline, svc: StatusService, route: Route, profile: ProcessingProfile, *,
                         backfill: bool, confirm: bool, drop_index: bool) -> dict[str, Any]:
    from cdcstream.runtime.control import request_profile

    _check_profile_possible(pipe, route, profile)
    current, _ = live_profile(pipe, route)
    estimate = None
    if backfill and profile.embeds:
        estimate = await estimate_backfill(pipe, route)
        if not confirm:
            raise HttpError(409, "a backfill into full embeds every existing row: repeat with confirm: true to "
                                 "accept the estimate", confirm_required=True, estimate=estimate, table=table_id(route),
                            profile=profile.value, current_profile=current.value)
    try:
        applied = await request_profile(pipe, route.table_id.key, profile, drop_index=drop_index)
    except TimeoutError as e:
        raise HttpError(504, str(e)) from None
    out: dict[str, Any] = {"table": table_id(route), "table_key": route.table_id.key, "from": current.value,
                           "profile": profile.value, "version": applied["version"], "workers": applied["workers"],
                           "backfill": None, "estimate": estimate}
    if backfill:
        from cdcstream.ops.credentials import resolve_credentials
        from cdcstream.ops.lifecycle import signal_snapshot

        def signal() -> str:
            return signal_snapshot(route.connector, resolve_credentials(route.connector, pipe.resolver),
                                   [route.table.name])

        try:
            sid = await in_executor(signal, deadline=20.0)
        except Exception as e:  # noqa: BLE001 - the profile is applied; say the snapshot was not asked for
            raise HttpError(502, f"profile applied, but the backfill signal failed: {type(e).__name__}",
                            applied=out) from None
        out["backfill"] = {"signal": sid, "kind": "incremental snapshot"}
    return out


async def replay(pipe: Pipeline, offsets: set[int] | None) -> dict[str, Any]:
    from cdcstream.runtime import dlq

    topic = pipe.dlq_topic.get_topic_name()

    async def pages() -> AsyncIterator[list[dict[str, Any]]]:
        if offsets:
            yield (await dlq.read(pipe.settings.kafka_bootstrap, topic, offsets=offsets, limit=dlq.MAX_LIMIT))[0]
        else:
            async for page in dlq.read_all(pipe.settings.kafka_bootstrap, topic):
                yield page

    replayed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    found: set[int] = set()
    try:
        async for page in pages():
            found |= {r["dlq_offset"] for r in page}
            await _replay_page(pipe, page, replayed, skipped)
    except HttpError:
        raise
    except Exception as e:  # noqa: BLE001
        raise HttpError(502, f"cannot read the DLQ: {type(e).__name__}") from None
    for off in sorted((offsets or set()) - found):
        skipped.append({"dlq_offset": off, "reason": "no such DLQ record"})
    return {"replayed": replayed, "skipped": skipped}


async def _replay_page(pipe: Pipeline, records: list[dict[str, Any]], replayed: list[dict[str, Any]],
                       skipped: list[dict[str, Any]]) -> None:
    from cdcstream.runtime import dlq

    producer = pipe.app.producer
    for r in records:
        off, src, part = r["dlq_offset"], r.get("topic"), r.get("partition")
        if src not in pipe.router.topics or not isinstance(part, int):
            skipped.append({"dlq_offset": off, "reason": f"topic {src!r} is not captured by this config"})
            continue
        try:
            key, value = dlq.raw_bytes(r.get("key")), dlq.raw_bytes(r.get("value"))
        except ValueError:
            skipped.append({"dlq_offset": off, "reason": "the stored key or value is not decodable"})
            continue
        try:
            md = await asyncio.wait_for(producer.send_and_wait(
                src, key, value, partition=part, timestamp=None,
                headers=[(dlq.REPLAY_HEADER, str(off).encode())]), timeout=15)
        except Exception as e:  # noqa: BLE001 - report per record
            skipped.append({"dlq_offset": off, "reason": f"send failed: {type(e).__name__}"})
            continue
        replayed.append({"dlq_offset": off, "topic": src, "partition": part, "offset": md.offset})


async def search(pipe: Pipeline, params: list[tuple[str, str]], who: Principal = ANONYMOUS,
                 limiter: RateLimiter | None = None) -> dict[str, Any]:
    from cdcstream.web import search as s

    try:
        req = s.parse_request(params)
    except s.SearchInputError as e:
        raise bad(str(e)) from None
    routes = []
    for ident in req.tables:
        r = find_route(pipe, ident)
        if r is None:
            # A table-scoped token learns nothing about tables beyond its own.
            known = ", ".join(table_id(x) for x in pipe.router.by_key.values() if _may_search(pipe, who, x))
            raise bad(f"unknown table {ident!r}; known: {known}")
        if not _may_search(pipe, who, r):
            raise HttpError(403, f"token {who.name!r} may not search {ident!r}")
        routes.append(r)
    explicit = bool(routes)
    routes = routes or [r for r in pipe.router.by_key.values() if _may_search(pipe, who, r)]
    if req.mode in ("semantic", "hybrid") and limiter is not None:
        wait = limiter.take(who.name)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise HttpError(429, f"too many {req.mode} searches for token {who.name!r}: at most "
                                 f"{limiter.per_minute} per minute; retry in {retry} s",
                            headers={"Retry-After": str(retry)}, retry_after_s=retry)
    targets = []
    for r in routes:
        prof, _ = live_profile(pipe, r)
        if prof.archives:
            if explicit:
                raise bad(f"{table_id(r)} has profile archive: it is not indexed, so not searchable")
            continue
        if req.mode == "semantic" and not prof.embeds:
            if explicit:
                raise bad(f"semantic search needs profile full; {table_id(r)} is {prof.value}")
            continue
        targets.append(s.Target(table_id(r), r.table_id.key, r.alias, r.chunks_alias, prof, r.table.text_columns))
    if not targets:
        raise bad("no table to search: " + ("no table has profile full" if req.mode == "semantic"
                                            else "no table is indexed"))
    await pipe.ready()
    if pipe.es is None:
        raise HttpError(503, "search needs Elasticsearch: elasticsearch_url is not set")
    try:
        return await s.run_search(pipe.es, pipe.embedder, targets, req,
                                  query_input_type=pipe.settings.embed_query_input_type,
                                  query_prefix=pipe.settings.embed_query_prefix)
    except s.SearchInputError as e:
        raise bad(str(e)) from None
    except s.SearchBackendError as e:
        raise HttpError(502, str(e)) from None


#: The search page's form fields; ``filters`` holds filter-language expressions, space-separated.
SEARCH_FORM = ("q", "mode", "table", "filters", "size", "search_after", "explain")


def search_form(params: list[tuple[str, str]]) -> dict[str, str]:
    """The search page's form values (unknown fields ignored: it is a page, not the API)."""
    form: dict[str, str] = {}
    for k, v in params:
        if k in SEARCH_FORM and k not in form:
            form[k] = v[:2000]
    return form


def form_params(form: dict[str, str]) -> list[tuple[str, str]]:
    """The form as /api/search parameters."""
    out = [(k, form[k]) for k in ("q", "mode", "table", "size", "search_after", "explain") if form.get(k)]
    out += [("filter", f) for f in form.get("filters", "").split()]
    return out


async def row_document(pipe: Pipeline, ident: str, doc_id: str, who: Principal) -> dict[str, Any]:
    from cdcstream.web import search as s

    r = find_route(pipe, ident)
    if r is None:
        raise HttpError(404, f"no table {ident!r}")
    if not _may_search(pipe, who, r):
        raise HttpError(403, f"token {who.name!r} may not read rows of {ident!r}")
    prof, _ = live_profile(pipe, r)
    if prof.archives:
        raise HttpError(404, f"{table_id(r)} has profile archive: its rows are not indexed")
    await pipe.ready()
    if pipe.es is None:
        raise HttpError(503, "rows are read from Elasticsearch: elasticsearch_url is not set")
    target = s.Target(table_id(r), r.table_id.key, r.alias, r.chunks_alias, prof, r.table.text_columns)
    try:
        doc = await s.get_row(pipe.es, target, doc_id)
    except s.SearchBackendError as e:
        raise HttpError(502, str(e)) from None
    if doc is None:
        raise HttpError(404, f"no row {doc_id!r} in {table_id(r)} (deleted, or not mirrored yet)")
    return doc


def _may_search(pipe: Pipeline, who: Principal, route: Route) -> bool:
    if who.tables is None:
        return True
    allowed = {r.table_id.key for r in (find_route(pipe, t) for t in who.tables) if r is not None}
    return route.table_id.key in allowed
