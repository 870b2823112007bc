"""The Elasticsearch mirror: one index per table, read through an alias.

Every write is a full index or a delete with ``version_type=external`` and the event's
``SourcePosition.version``, so replays and reordering never overwrite newer data: an
older write is answered 409 by Elasticsearch and counted as a no-op.

Uses core APIs only (bulk, mget, aliases, search, scroll): the minimal node has no
delete_by_query, reindex or scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, ConnectionError, NotFoundError, TransportError
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from cdcstream.core import fastjson
from cdcstream.core.masking import mask_es_reason
from cdcstream.sinks.base import BulkResult, IndexOp, OnWait, SinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE = {429, 502, 503, 504}
BULK_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"


_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


class _Orjson:
    """orjson for the client's JSON (issue 19: the standard json module took ~11% of the
    worker's CPU in the index_only benchmark, bulk bodies and bulk responses). The output is
    the same JSON: types orjson would write its own way (dates, subclasses, dataclasses) go
    through the client's ``default`` as before, and whatever orjson refuses or would read
    differently (integers past 64 bits, lone surrogates, NaN literals) goes through the
    standard module as before (``core/fastjson.py``)."""

    def json_dumps(self, data: Any) -> bytes:
        try:
            return orjson.dumps(data, default=self.default, option=_ORJSON_OPTS)  # type: ignore[attr-defined]
        except TypeError:
            return super().json_dumps(data)  # type: ignore[misc, no-any-return]

    def json_loads(self, data: bytes) -> Any:
        return fastjson.loads(data)


class FastJsonSerializer(_Orjson, JsonSerializer):
    pass


class FastNdjsonSerializer(_Orjson, NdjsonSerializer):
    pass


def fast_serializers() -> dict[str, Any]:
    """The ``serializers`` argument of the worker's client (the compatibility mimetypes follow)."""
    return {JsonSerializer.mimetype: FastJsonSerializer(), NdjsonSerializer.mimetype: FastNdjsonSerializer()}


def client_options(user: str | None, password: str | None, api_key: str | None, ca: Any = None) -> dict[str, Any]:
    """Keyword arguments of an Elasticsearch client (sync or async) for resolved credentials."""
    kw: dict[str, Any] = {}
    if user and password:
        kw["basic_auth"] = (user, password)
    if api_key:
        kw["api_key"] = api_key
    if ca:
        kw["ca_certs"] = str(ca)
    return kw


def _error_type(e: ApiError) -> str:
    """The error type Elasticsearch names, never its reason text (which may quote values)."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", {})
    return str(err.get("type", e.meta.status)) if isinstance(err, dict) else str(e.meta.status)


#: The index settings a swap carries over to the fresh index (the table's index_settings).
KEPT_SETTINGS = ("number_of_shards", "number_of_replicas", "refresh_interval")


def kept_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The table's own settings (``KEPT_SETTINGS``) out of an index's ``_settings`` answer."""
    index = settings.get("index", {})
    return {k: index[k] for k in KEPT_SETTINGS if k in index}


def physical(alias: str, generation: int = 1) -> str:
    return f"{alias}-{generation:06d}"


class EsMirror:
    def __init__(self, client: AsyncElasticsearch, *, max_backoff: float = 10.0, request_timeout: float = 30.0,
                 retry_for: float | None = None, on_wait: OnWait | None = None) -> None:
        self.es = client
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        # How long to keep retrying a failing cluster before raising; None = forever (the agent
        # then simply stops consuming: backpressure, not memory growth).
        self.retry_for = retry_for
        self.on_wait = on_wait
        self._known: dict[str, set[str]] = {}  # alias -> mapped top-level fields

    # --- indices ---------------------------------------------------------------------
    async def ensure_index(self, alias: str, mapping: dict[str, Any], settings: dict[str, Any] | None = None) -> None:
        """Create the index behind ``alias`` on first use; add new fields (DDL) to its mapping."""
        props = set(mapping.get("properties", {}))
        known = self._known.get(alias)
        if known is not None and props <= known:
            return
        exists = await self._retrying(lambda: self.es.indices.exists_alias(name=alias))
        if not exists:
            body_settings = {"number_of_shards": 1, "number_of_replicas": 0, **(settings or {})}
            try:
                await self._retrying(lambda: self.es.indices.create(
                    index=physical(alias), mappings=mapping, settings=body_settings,
                    aliases={alias: {"is_write_index": True}}))
            except ApiError as e:
                if e.meta.status != 400 or "resource_already_exists" not in str(e):
                    raise
        elif known is None or not props <= known:
            try:
                await self._retrying(lambda: self.es.indices.put_mapping(index=alias,
                                                                         properties=mapping["properties"]))
            except ApiError as e:
                if e.meta.status == 400:
                    # A field's type changed incompatibly: no document of the batch is at fault.
                    raise SinkUnavailable("elasticsearch", "mapping conflict", f"{alias}: {_error_type(e)}") from e
                raise
        self._known[alias] = props | (known or set())

    async def swap(self, alias: str, mapping: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
        """Point ``alias`` at a fresh, empty index (an incompatible mapping change); drop the old one.

        Without ``settings`` the fresh index keeps the table's settings (``KEPT_SETTINGS``: shards,
        replicas, refresh interval) of the index it replaces.
        """
        resp = await self.es.indices.get_alias(name=alias)
        old = sorted(resp.body)
        if settings is None and old:
            current = await self.es.indices.get_settings(index=old[-1])
            settings = kept_settings(next(iter(current.body.values()))["settings"])
        gen = max((int(n.rsplit("-", 1)[1]) for n in old if n.rsplit("-", 1)[-1].isdigit()), default=0) + 1
        new = physical(alias, gen)
        await self.es.indices.create(index=new, mappings=mapping,
                                     settings={"number_of_shards": 1, "number_of_replicas": 0, **(settings or {})})
        actions: list[dict[str, Any]] = [{"remove": {"index": o, "alias": alias}} for o in old]
        actions.append({"add": {"index": new, "alias": alias, "is_write_index": True}})
        await self.es.indices.update_aliases(actions=actions)
        for o in old:
            await self.es.indices.delete(index=o)
        self._known[alias] = set(mapping.get("properties", {}))
        return new

    async def delete_older_than(self, alias: str, version: int) -> int:
        # A delete with the truncate's own external version removes exactly the documents older
        # than it; a newer one answers 409 and stays. No delete_by_query on the minimal node:
        # scroll the ids, bulk the deletes.
        if not await self._retrying(lambda: self.es.indices.exists_alias(name=alias)):
            return 0
        await self._retrying(lambda: self.es.indices.refresh(index=alias))
        deleted = 0
        resp = await self._retrying(lambda: self.es.search(index=alias, scroll="2m", size=2000, sort=["_doc"],
                                                           source=False))
        sid = resp.get("_scroll_id")
        try:
            while True:
                hits = resp["hits"]["hits"]
                if not hits:
                    break
                ops = [IndexOp("delete", alias, h["_id"], version) for h in hits]
                res = await self.apply(ops)
                if res.failed:
                    raise SinkUnavailable("elasticsearch", "truncate refused", f"{alias}: {res.failed[0][1][:200]}")
                deleted += res.deleted
                resp = await self._retrying(lambda sid=sid: self.es.scroll(scroll_id=sid, scroll="2m"))
                sid = resp.get("_scroll_id", sid)
        finally:
            if sid:
                with contextlib.suppress(Exception):
                    await self.es.clear_scroll(scroll_id=sid)
        return deleted

    async def drop(self, alias: str) -> bool:
        if not await self._retrying(lambda: self.es.indices.exists_alias(name=alias)):
            return False
        resp = await self._retrying(lambda: self.es.indices.get_alias(name=alias))
        for idx in resp.body:
            await self._retrying(lambda idx=idx: self.es.indices.delete(index=idx))
        self._known.pop(alias, None)
        return True

    # --- writes ----------------------------------------------------------------------
    async def apply(self, ops: list[IndexOp]) -> BulkResult:
        """Write ``ops`` durably (retrying retryable failures); report per-item outcomes."""
        result = BulkResult()
        pending = list(ops)
        backoff = 0.2
        started = time.monotonic()
        while pending:
            body: list[dict[str, Any]] = []
            for op in pending:
                meta = {"_index": op.index, "_id": op.id, "version": op.version, "version_type": "external"}
                body.append({op.action: meta})
                if op.action == "index":
                    body.append(op.doc or {})
            try:
                result.requests += 1
                # Only what is read below: a full answer is ~200 bytes per item to send and parse.
                resp = await self.es.options(request_timeout=self.request_timeout).bulk(
                    operations=body, filter_path=BULK_FILTER)
            except (ConnectionError, TransportError, ApiError) as e:
                status = getattr(getattr(e, "meta", None), "status", 0) or 0
                if isinstance(e, ApiError) and status not in RETRYABLE:
                    raise
                backoff = await self._wait(backoff, started, f"bulk of {len(pending)} failed: {type(e).__name__}", e)
                result.retries += 1
                continue
            retry: list[IndexOp] = []
            for op, item in zip(pending, resp["items"], strict=True):
                r = item.get(op.action, {})
                st = r.get("status", 0)
                if 200 <= st < 300:
                    if op.action == "index":
                        result.indexed += 1
                    else:
                        result.deleted += 1
                elif st == 404 and op.action == "delete":
                    result.not_found += 1
                elif st == 409:
                    result.conflicts += 1
                elif st in RETRYABLE:
                    retry.append(op)
                elif st != 400:
                    # 401/403 (credentials, a read-only or closed index), 404 (index gone): the
                    # index cannot take writes now, whatever the document. Not the event's fault.
                    err = r.get("error", {})
                    raise SinkUnavailable("elasticsearch", f"HTTP {st} ({err.get('type', 'item refused')})",
                                          f"{op.index}")
                else:
                    err = r.get("error", {})
                    # The reason quotes the refused value: keep its type and length only (it goes
                    # to the DLQ record's reason and the log; the record itself is admin-only).
                    reason = mask_es_reason(str(err.get("reason", "")))
                    result.failed.append((op, f"{err.get('type', st)}: {reason}"[:1000]))
            if retry:
                backoff = await self._wait(backoff, started, f"{len(retry)} bulk items rejected (429/5xx)")
                result.retries += 1
            pending = retry
        return result

    async def _wait(self, backoff: float, started: float, why: str, exc: BaseException | None = None) -> float:
        if self.on_wait is not None:
            self.on_wait("elasticsearch", exc, why)
        if self.retry_for is not None and time.monotonic() - started > self.retry_for:
            raise TimeoutError(f"Elasticsearch: {why}; gave up after {self.retry_for:.0f}s")
        log.warning("Elasticsearch: %s; retrying in %.1fs", why, backoff)
        await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
        return min(backoff * 2, self.max_backoff)

    async def _retrying(self, call: Any) -> Any:
        backoff, started = 0.2, time.monotonic()
        while True:
            try:
                return await call()
            except (ConnectionError, TransportError) as e:
                backoff = await self._wait(backoff, started, f"{type(e).__name__}", e)
            except ApiError as e:
                if e.meta.status not in RETRYABLE:
                    raise
                backoff = await self._wait(backoff, started, f"HTTP {e.meta.status}", e)

    # --- reads -----------------------------------------------------------------------
    async def get_many(self, index: str, ids: Iterable[str],
                       source: list[str] | None = None) -> dict[str, dict[str, Any]]:
        wanted = list(ids)
        if not wanted:
            return {}
        try:
            resp = await self._retrying(lambda: self.es.mget(index=index, ids=wanted, source=source or True))
        except NotFoundError:
            return {}
        return {d["_id"]: d.get("_source", {}) for d in resp["docs"] if d.get("found")}
