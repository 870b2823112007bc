"""The worker's web server: status page, Prometheus metrics, JSON API with its OpenAPI document.

Every view is a class subclassing ``ApiView``, whose ``dispatch`` checks the bearer token
before any handler runs: Faust ignores ``base=`` on function views (notes/faust.md), so a
function view would silently be unprotected. Write methods always need the token
(``api_token``, a secret reference); ``protect_reads`` extends that to reads. With no
token configured, writes are refused (fail closed), never open.

Handlers run on the agents' event loop: Elasticsearch goes through the async client,
Kafka through aiokafka, and Kafka Connect, psycopg and tiktoken through the executor.
Table writes never happen here: a profile change is a command on the control topic.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

import faust
from faust.web import Request, Response, View
from faust.web.exceptions import MethodNotAllowed

from cdcstream.core.config import ProcessingProfile
from cdcstream.core.route import Route
from cdcstream.web.status import StatusService, TTLCache, find_route, in_executor, live_profile, table_id

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger("cdcstream.web.views")

TOKEN_CACHE_S = 60.0
MAX_BODY_BYTES = 64 * 1024


class HttpError(Exception):
    """An error answer: ``status`` and a JSON body with at least ``error``."""

    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
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
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)):
        raise bad("offsets must be a list of 1 to 1000 non-negative integers")
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


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# --- the base view ---------------------------------------------------------------------
class ApiView(View):
    """Checks the bearer token in ``dispatch`` and turns ``HttpError`` into JSON answers."""

    pipe: ClassVar[Pipeline]
    svc: ClassVar[StatusService]
    tokens: ClassVar[TTLCache]
    #: A public view answers without a token even with protect_reads (the OpenAPI document).
    public: ClassVar[bool] = False

    async def dispatch(self, request: Any) -> Any:
        try:
            name = request.method.lower()
            # A method this view does not serve answers 405 without asking for a token first.
            served = getattr(type(self), name, None) is not getattr(ApiView, name, None)
            write = request.method not in ("GET", "HEAD")
            if served and (write or (self.pipe.settings.protect_reads and not self.public)):
                await self._authorize(request)
            return await super().dispatch(request)
        except HttpError as e:
            headers = {"WWW-Authenticate": 'Bearer realm="cdcstream"'} if e.status == 401 else None
            return self.json(e.body, status=e.status, headers=headers)
        except Exception as e:  # one JSON 500 with a log line, never a traceback page
            log.exception("%s %s failed", request.method, request.path)
            return self.json({"error": f"internal error ({type(e).__name__}); see the worker log"}, status=500)

    async def _authorize(self, request: Any) -> None:
        s = self.pipe.settings
        if s.api_token is None:
            raise HttpError(403, "no api_token is configured: write endpoints are disabled "
                                 "(set CDCSTREAM_API_TOKEN to a secret reference)")

        async def resolve() -> str | None:
            return await in_executor(self.pipe.secret, s.api_token, deadline=10.0)

        try:
            expected = await self.tokens.get("api_token", resolve)
        except Exception as e:  # noqa: BLE001 - never show the reference's value or the resolver's details
            log.warning("api_token cannot be resolved: %s", type(e).__name__)
            raise HttpError(503, "the api_token secret cannot be resolved right now") from None
        given = bearer(request.headers.get("Authorization"))
        if given is None:
            raise HttpError(401, "this endpoint needs 'Authorization: Bearer <token>'")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(401, "wrong bearer token")

    # Every undeclared method answers JSON 405 (not aiohttp's text page).
    async def get(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method GET not allowed here")

    async def post(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method POST not allowed here")

    async def put(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method PUT not allowed here")

    async def patch(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method PATCH not allowed here")

    async def delete(self, request: Request, **kwargs: Any) -> Any:
        raise MethodNotAllowed("method DELETE not allowed here")

    def route_of(self, ident: str) -> Route:
        r = find_route(self.pipe, ident)
        if r is None:
            known = ", ".join(table_id(x) for x in self.pipe.router.by_key.values())
            raise HttpError(404, f"no table {ident!r}; known: {known}")
        return r

    async def body(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await request.read())


def register(app: faust.App, pipe: Pipeline) -> None:
    # Faust's own /table (table *contents*: row state, TOAST values), /router and debug
    # pages would bypass the token: turn them off before the web server is built.
    for flag in ("web_tables_enabled", "web_router_enabled", "web_stats_enabled", "web_graph_enabled"):
        setattr(app.conf, flag, False)
    svc = StatusService(pipe)
    pipe_ref = pipe

    class Base(ApiView):
        pipe = pipe_ref
        tokens = TTLCache(TOKEN_CACHE_S)

    Base.svc = svc

    @app.timer(pipe.settings.status_sample_s)  # type: ignore[untyped-decorator]
    async def sample_status() -> None:
        await svc.sampler.tick()

    @app.page("/status")
    class StatusPage(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.pages import render_status

            return self.html(render_status(await svc.snapshot()), headers={"Cache-Control": "no-store"})

    @app.page("/metrics")
    class Metrics(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.metrics import render

            return self.text(render(await svc.snapshot()), content_type="text/plain; version=0.0.4")

    @app.page("/api/openapi.json")
    class OpenApi(Base):
        public = True

        async def get(self, request: Request, **kwargs: Any) -> Response:
            from cdcstream.web.openapi import document

            first = next(iter(pipe.router.by_key.values()), None)
            return self.json(document(pipe.settings.protect_reads, table_id(first) if first else None))

    @app.page("/api/connectors")
    class Connectors(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"connectors": await svc.connectors(), "worker": pipe.worker_id, "ts": time.time()})

    @app.page("/api/tables")
    class Tables(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"tables": await svc.tables(), "worker": pipe.worker_id, "ts": time.time(),
                              "lag_error": svc.sampler.lag_error, "blocked": svc.blocked()})

    @app.page("/api/tables/{table}")
    class Table(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            route = self.route_of(kwargs["table"])
            (view,) = await svc.tables([route])
            return self.json({**view, "worker": pipe.worker_id, "ts": time.time()})

    @app.page("/api/tables/{table}/profile")
    class Profile(Base):
        async def put(self, request: Request, **kwargs: Any) -> Response:
            body = await self.body(request)
            profile, backfill, confirm, drop_index = parse_profile_change(body)
            route = self.route_of(kwargs["table"])
            return self.json(await change_profile(pipe, svc, route, profile, backfill=backfill, confirm=confirm,
                                                  drop_index=drop_index))

    @app.page("/api/workers")
    class Workers(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json({"workers": svc.workers()})

    @app.page("/api/dlq")
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
            try:
                records, first, end = await dlq.read(pipe.settings.kafka_bootstrap, pipe.dlq_topic.get_topic_name(),
                                                     limit=limit, from_offset=start)
            except Exception as e:  # noqa: BLE001 - Kafka unreachable: a gateway error, not a crash
                raise HttpError(502, f"cannot read the DLQ: {type(e).__name__}") from None
            return self.json({"topic": pipe.dlq_topic.get_topic_name(), "first_offset": first, "end_offset": end,
                              "records": [dlq.public(r, values) for r in records]})

    @app.page("/api/dlq/replay")
    class DlqReplay(Base):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            offsets = parse_replay(await self.body(request))
            return self.json(await replay(pipe, offsets))

    @app.page("/api/dlq/skip")
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

    @app.page("/api/search")
    class Search(Base):
        async def get(self, request: Request, **kwargs: Any) -> Response:
            return self.json(await search(pipe, list(request.query.items())))


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
    try:
        records, _, _ = await dlq.read(pipe.settings.kafka_bootstrap, topic, offsets=offsets,
                                       limit=dlq.MAX_LIMIT, from_offset=None if offsets else 0)
    except Exception as e:  # noqa: BLE001
        raise HttpError(502, f"cannot read the DLQ: {type(e).__name__}") from None
    replayed, skipped = [], []
    found = {r["dlq_offset"] for r in records}
    for off in sorted((offsets or set()) - found):
        skipped.append({"dlq_offset": off, "reason": "no such DLQ record"})
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
    return {"replayed": replayed, "skipped": skipped}


async def search(pipe: Pipeline, params: list[tuple[str, str]]) -> dict[str, Any]:
    from cdcstream.web import search as s

    try:
        req = s.parse_request(params)
    except s.SearchInputError as e:
        raise bad(str(e)) from None
    routes = []
    for ident in req.tables:
        r = find_route(pipe, ident)
        if r is None:
            known = ", ".join(table_id(x) for x in pipe.router.by_key.values())
            raise bad(f"unknown table {ident!r}; known: {known}")
        routes.append(r)
    explicit = bool(routes)
    routes = routes or list(pipe.router.by_key.values())
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
