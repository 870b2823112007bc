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
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, ConnectionError, NotFoundError, TransportError
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from cdcstream.core import fastjson
from cdcstream.core.faults import crash_point
from cdcstream.core.masking import mask_es_reason
from cdcstream.sinks.base import BulkResult, IndexOp, OnWait, SinkUnavailable
from cdcstream.sinks.migration import Migration, convert_document, incompatible_fields

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


def _generation(alias: str, name: str) -> int | None:
    """The generation of ``name`` if it is one of ``alias``'s indices (``<alias>-000002``;
    not ``<alias>-chunks-000001``, another alias's)."""
    base, _, gen = name.rpartition("-")
    return int(gen) if base == alias and gen.isdigit() and len(gen) == 6 else None


def _gen(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


#: The key of cdcstream's marker in an index's ``_meta``: the schema version a generation was
#: built for, and while it is being filled, the generation it is filled from.
MARK = "cdcstream"
#: How long a delete's tombstone is kept in a generation being filled: a copied document older
#: than a delete written meanwhile must find it (Elasticsearch's default is 60 s).
FILL_GC_DELETES = "12h"
FILL_PAGE = 500


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
        self._known: dict[str, dict[str, Any]] = {}  # alias -> its write index's mapped properties
        # alias -> source version of the schema its generation was built for (0: the first).
        self._schema_version: dict[str, int] = {}
        self._migrated: dict[str, set[str]] = {}  # alias -> top-level fields its migrations changed
        self.migrations: dict[str, Migration] = {}  # alias -> its rebuild in progress
        self._tasks: set[asyncio.Task[None]] = set()
        # A re-embed a killed worker left half-done, found when its alias is loaded: the
        # pipeline (which has the embedder) makes it a migration and fills it
        # (cdcstream/pipeline/reembed.py). Arguments: alias, source, target, the target's
        # properties and its recorded model/dimensions. None (tools): left for a worker.
        self.on_reembed: Callable[[str, str, str, dict[str, Any], dict[str, Any]], Migration | None] | None = None

    # --- indices ---------------------------------------------------------------------
    async def ensure_index(self, alias: str, mapping: dict[str, Any], settings: dict[str, Any] | None = None,
                           version: int = 0) -> None:
        """Create the index behind ``alias`` on first use; add new fields (DDL) to its mapping.

        A field whose type the index cannot change in place starts a migration (the next
        generation, filled in the background, then swapped in; :meth:`_migrate`), unless the
        schema is older than the one the index was last rebuilt for (``version``: the source
        position of the newest event with this schema): a late event of another partition
        must not rebuild the index back. Its documents are converted on refusal (``apply``).
        """
        props = mapping.get("properties", {})
        known = self._known.get(alias)
        if known is not None and all(known.get(k) == v for k, v in props.items()):
            return
        if known is None:
            known = await self._load(alias)
            if known is None:
                await self._create(alias, mapping, settings)
                self._known[alias] = dict(props)
                return
        changed = incompatible_fields(known, props)
        if changed and version < self._schema_version.get(alias, 0):
            return  # an older schema: written as it is, converted if refused
        if not changed:
            differing = {k: v for k, v in props.items() if known.get(k) != v}
            try:
                await self._retrying(lambda: self.es.indices.put_mapping(index=self._write_index(alias),
                                                                         properties=differing))
            except ApiError as e:
                if e.meta.status != 400:
                    raise
                # Not foreseen by incompatible_fields: Elasticsearch has the last word.
                log.warning("%s: mapping refused (%s); rebuilding the index", alias, _error_type(e))
                changed = sorted(differing)
        vectors = [f for f in changed if (known.get(f) or {}).get("type") == "dense_vector"]
        if vectors:
            # Copying would carry vectors of the old model into a field sized for the new one
            # (Elasticsearch refuses every document) while searches embed queries with the new
            # one. Not the events' fault: the table waits, visibly, for the settings to go back
            # or for a re-embed (docs/profiles.md, "Changing the embedding model").
            was, now = (known[vectors[0]].get("dims"), props[vectors[0]].get("dims"))
            # The worker writes with the serving generation's size until a re-embed runs
            # (pipeline/reembed.py, Vectors): only a writer that does not gets here.
            raise SinkUnavailable("elasticsearch", "embedding model changed",
                                  f"{alias}: {vectors[0]} has {was} dimensions, the settings give {now}: "
                                  f"restore CDCSTREAM_EMBED_MODEL/CDCSTREAM_EMBED_DIMENSIONS, or re-embed "
                                  f"(cdcstream embeddings reembed); vectors are never copied across models")
        if changed:
            if alias in self.migrations:
                # A second incompatible change while the first is copied: wait for the swap.
                raise SinkUnavailable("elasticsearch", "migration in progress",
                                      f"{alias}: {', '.join(changed)} changed again")
            await self._migrate(alias, {**mapping, "properties": {**known, **props}}, changed, settings, version)
        self._known[alias] = {**known, **props}

    async def _create(self, alias: str, mapping: dict[str, Any], settings: dict[str, Any] | None) -> None:
        body_settings = {"number_of_shards": 1, "number_of_replicas": 0, **(settings or {})}
        try:
            await self._retrying(lambda: self.es.indices.create(
                index=physical(alias), mappings=mapping, settings=body_settings,
                aliases={alias: {"is_write_index": True}}))
        except ApiError as e:
            if e.meta.status != 400 or "resource_already_exists" not in str(e):
                raise

    async def _load(self, alias: str) -> dict[str, Any] | None:
        """The mapped properties of the index behind ``alias`` (None: no such alias), read once
        per process. A generation left half-built by a crash is resumed, one left over by a
        crash right after its swap is deleted."""
        if not await self._retrying(lambda: self.es.indices.exists_alias(name=alias)):
            return None
        behind = sorted((await self._retrying(lambda: self.es.indices.get_alias(name=alias))).body)
        current = behind[-1]
        found = await self._retrying(lambda: self.es.indices.get_mapping(index=f"{alias}-*"))
        ours = {n: v.get("mappings", {}) for n, v in found.body.items() if _generation(alias, n) is not None}
        props = dict(ours.get(current, {}).get("properties", {}))
        mark = ours.get(current, {}).get("_meta", {}).get(MARK, {})
        self._schema_version[alias] = int(mark.get("schema_version", 0))
        self._migrated[alias] = {p.split(".", 1)[0] for p in mark.get("changed", [])}
        if "migrating_from" in mark or "reembedding_from" in mark:  # swapped in, killed before its marker was cleared
            await self._finish(current, self._schema_version[alias], list(mark.get("changed", [])),
                               mark.get("embedding"))
        for name, m in sorted(ours.items()):
            if name in behind:
                continue
            meta = m.get("_meta", {}).get(MARK, {})
            if meta.get("migrating_from") in behind and _gen(name) > _gen(current):
                mig = Migration(alias, meta["migrating_from"], name, dict(m.get("properties", {})),
                                list(meta.get("changed", [])), int(meta.get("schema_version", 0)), resumed=True)
                log.warning("%s: resuming the migration %s -> %s", alias, mig.source, name)
                self._start(mig)
                props = mig.properties
            elif meta.get("reembedding_from") in behind and _gen(name) > _gen(current):
                # Resumed as a re-embed, never as a copy: a copy would carry the old vectors.
                found = (self.on_reembed(alias, meta["reembedding_from"], name, dict(m.get("properties", {})),
                                         dict(meta.get("embedding", {}))) if self.on_reembed else None)
                if found is None:
                    log.warning("%s: %s is a re-embed left half-done; a worker resumes it", alias, name)
                    continue
                log.warning("%s: resuming the re-embed %s -> %s", alias, found.source, name)
                self.migrations[alias] = found
                props = found.properties
            elif _gen(name) < _gen(current):
                log.warning("%s: deleting %s, left over after its swap", alias, name)
                await self._retrying(lambda name=name: self.es.indices.delete(index=name, ignore_unavailable=True))
        return props

    # --- migrations: rebuild into the next generation, then swap ---------------------------
    #
    # While a generation is filled, every write goes to it (the authoritative copy: an event is
    # acked only once its write is there) and none to the old one, which may refuse the new
    # type; searches read the old one through the alias until the swap, so they keep
    # answering, without the changes made meanwhile. The fill copies each document with its
    # stored version as an external version: a change written meanwhile is newer and wins
    # (409), a delete written meanwhile leaves a tombstone kept for FILL_GC_DELETES.
    def _write_index(self, alias: str) -> str:
        mig = self.migrations.get(alias)
        return mig.target if mig is not None else alias

    async def _migrate(self, alias: str, mapping: dict[str, Any], changed: list[str],
                       settings: dict[str, Any] | None, version: int) -> None:
        """Create the next generation of ``alias`` with ``mapping`` and start filling it."""
        behind = sorted((await self._retrying(lambda: self.es.indices.get_alias(name=alias))).body)
        source = behind[-1]
        current = await self._retrying(lambda: self.es.indices.get_settings(index=source))
        kept = kept_settings(next(iter(current.body.values()))["settings"])
        target = physical(alias, _gen(source) + 1)
        meta = {MARK: {"migrating_from": source, "schema_version": version, "changed": changed}}
        body_settings = {"number_of_shards": 1, "number_of_replicas": 0, **kept, **(settings or {}),
                         "gc_deletes": FILL_GC_DELETES}
        try:
            await self._retrying(lambda: self.es.indices.create(
                index=target, mappings={**mapping, "_meta": meta}, settings=body_settings))
        except ApiError as e:
            # Another worker started the same migration: fill it too (copies are idempotent).
            if e.meta.status != 400 or "resource_already_exists" not in str(e):
                raise
        log.warning("%s: %s changed type incompatibly; rebuilding %s -> %s", alias, ", ".join(changed), source, target)
        self._start(Migration(alias, source, target, mapping["properties"], changed, version))

    def _start(self, mig: Migration) -> None:
        running = self.migrations.get(mig.alias)
        if running is not None and running.target == mig.target:
            return  # found twice (the start-up resume and the table's first batch): one fill
        self.migrations[mig.alias] = mig
        self._schema_version[mig.alias] = mig.schema_version
        self._migrated[mig.alias] = mig.top_fields
        task = asyncio.get_running_loop().create_task(self._run(mig), name=f"migrate {mig.alias}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, mig: Migration) -> None:
        """Fill, then swap; an error is retried with backoff (the generation stays, and every
        write keeps going to it), never given up: the alias is swapped only when complete."""
        backoff = 1.0
        while True:
            mig.attempts += 1
            try:
                if not await self._swapped(mig):
                    await self._fill(mig)
                    await self._swap_in(mig)
                await self._finish(mig.target, mig.schema_version, mig.changed)
                await self._retrying(lambda: self.es.indices.delete(index=mig.source, ignore_unavailable=True))
                if self.migrations.get(mig.alias) is mig:
                    del self.migrations[mig.alias]
                log.warning("%s: migrated to %s (%d documents, %.0f/s)", mig.alias, mig.target, mig.copied,
                            mig.view()["docs_per_s"])
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - operational (the cluster): retry the fill
                mig.error = f"{type(e).__name__}: {_error_type(e) if isinstance(e, ApiError) else e}"[:300]
                log.warning("%s: migration to %s failed (%s); again in %.0fs", mig.alias, mig.target, mig.error,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _fill(self, mig: Migration) -> None:
        """Copy ``mig.source`` into ``mig.target`` by scroll + bulk (the node has no reindex),
        converting the changed fields; from the start on each attempt (copies are idempotent)."""
        es = self.es
        await self._retrying(lambda: es.indices.refresh(index=mig.source))
        mig.total = int((await self._retrying(lambda: es.count(index=mig.source)))["count"])
        mig.copied = 0
        fields = mig.top_fields
        resp = await self._retrying(lambda: es.search(index=mig.source, scroll="5m", size=FILL_PAGE,
                                                      sort=["_doc"], version=True))
        sid = resp.get("_scroll_id")
        try:
            while hits := resp["hits"]["hits"]:
                ops = []
                for h in hits:
                    doc, dropped = convert_document(h["_source"], mig.properties, fields)
                    mig.dropped_values += len(dropped)
                    ops.append(IndexOp("index", mig.target, h["_id"], h["_version"], doc))
                res = await self.apply(ops)
                for op, reason in res.failed:
                    mig.refused += 1
                    log.error("%s: the copy of %s was refused: %s", mig.target, op.id, reason)
                mig.copied += len(hits)
                crash_point("mid_migration")
                resp = await self._retrying(lambda sid=sid: es.scroll(scroll_id=sid, scroll="5m"))
                sid = resp.get("_scroll_id", sid)
        finally:
            if sid:
                with contextlib.suppress(Exception):
                    await es.clear_scroll(scroll_id=sid)

    async def _swapped(self, mig: Migration) -> bool:
        behind = await self._retrying(lambda: self.es.indices.get_alias(name=mig.alias))
        return mig.target in behind.body

    async def _swap_in(self, mig: Migration) -> None:
        """Point the alias at the filled generation in one ``_aliases`` call."""
        es = self.es
        await self._retrying(lambda: es.indices.refresh(index=mig.target))  # searchable at the swap
        await self._retrying(lambda: es.indices.update_aliases(actions=[
            {"remove": {"index": mig.source, "alias": mig.alias}},
            {"add": {"index": mig.target, "alias": mig.alias, "is_write_index": True}}]))
        crash_point("after_migration_swap")

    async def _finish(self, index: str, schema_version: int, changed: list[str],
                      embedding: dict[str, Any] | None = None) -> None:
        """Clear the fill's marker and tombstone retention of a generation now behind its alias
        (a re-embedded one keeps the model/dimensions of its vectors)."""
        await self._retrying(lambda: self.es.indices.put_settings(index=index, settings={"index.gc_deletes": None}))
        meta: dict[str, Any] = {MARK: {"schema_version": schema_version, "changed": changed,
                                       **({"embedding": embedding} if embedding else {})}}
        await self._retrying(lambda: self.es.indices.put_mapping(index=index, meta=meta))

    async def resume(self, aliases: Iterable[str]) -> int:
        """Read the indices behind ``aliases`` now rather than at their table's next change: a
        rebuild a killed worker left half-done resumes at start. Returns how many resumed."""
        for alias in aliases:
            if alias not in self._known:
                props = await self._load(alias)
                if props is not None:
                    self._known[alias] = props
        return len(self.migrations)

    def loaded(self, alias: str) -> bool:
        """The index behind ``alias`` exists as far as this mirror knows (created or loaded,
        not dropped by it)."""
        return alias in self._known

    def migration_views(self) -> list[dict[str, Any]]:
        return [m.view() for m in self.migrations.values()]

    def stop(self) -> None:
        """Stop filling (the client is about to close): the next mirror resumes the fill."""
        for task in self._tasks:
            task.cancel()

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
        self._known[alias] = dict(mapping.get("properties", {}))
        return new

    async def delete_older_than(self, alias: str, version: int) -> int:
        # A delete with the truncate's own external version removes exactly the documents older
        # than it; a newer one answers 409 and stays. No delete_by_query on the minimal node:
        # scroll the ids, bulk the deletes.
        if not await self._retrying(lambda: self.es.indices.exists_alias(name=alias)):
            return 0
        mig = self.migrations.get(alias)
        # While migrating, documents are in either generation; the deletes go to the new one
        # (a tombstone there stops the copy of an older document).
        read = f"{mig.source},{mig.target}" if mig is not None else alias
        await self._retrying(lambda: self.es.indices.refresh(index=read))
        deleted = 0
        resp = await self._retrying(lambda: self.es.search(index=read, scroll="2m", size=2000, sort=["_doc"],
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
        mig = self.migrations.pop(alias, None)
        doomed = [*resp.body, *([mig.target] if mig else [])]
        for task in [t for t in self._tasks if t.get_name() == f"migrate {alias}"]:
            task.cancel()
        for idx in doomed:
            await self._retrying(lambda idx=idx: self.es.indices.delete(index=idx, ignore_unavailable=True))
        self._known.pop(alias, None)
        return True

    # --- writes ----------------------------------------------------------------------
    async def apply(self, ops: list[IndexOp]) -> BulkResult:
        """Write ``ops`` durably (retrying retryable failures); report per-item outcomes."""
        result = BulkResult()
        pending = list(ops)
        converted: set[int] = set()  # ops whose document was converted to the index's mapping
        backoff = 0.2
        started = time.monotonic()
        while pending:
            body: list[dict[str, Any]] = []
            for op in pending:
                meta = {"_index": self._write_index(op.index), "_id": op.id, "version": op.version,
                        "version_type": "external"}
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
            again: list[IndexOp] = []  # converted to the index's mapping: sent again at once
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
                elif self._converts(op, converted):
                    again.append(op)
                else:
                    err = r.get("error", {})
                    # The reason quotes the refused value: keep its type and length only (it goes
                    # to the DLQ record's reason and the log; the record itself is admin-only).
                    reason = mask_es_reason(str(err.get("reason", "")))
                    result.failed.append((op, f"{err.get('type', st)}: {reason}"[:1000]))
            if retry:
                backoff = await self._wait(backoff, started, f"{len(retry)} bulk items rejected (429/5xx)")
                result.retries += 1
            pending = retry + again
        return result

    def _converts(self, op: IndexOp, converted: set[int]) -> bool:
        """A refused document written with an older schema than its index's (a late event of
        another partition after a migration): its migrated fields converted to the index's
        mapping, once, when every value has a form of the new type (else it is refused)."""
        known, fields = self._known.get(op.index), self._migrated.get(op.index)
        if op.action != "index" or op.doc is None or not known or not fields or id(op) in converted:
            return False
        doc, dropped = convert_document(op.doc, known, fields)
        if dropped:
            return False
        converted.add(id(op))
        op.doc = doc
        return True

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
        mig = self.migrations.get(index)
        found = await self._mget(mig.target if mig else index, wanted, source)
        if mig is not None:
            # Not yet copied, nor changed since the migration began: the old generation has it.
            found.update(await self._mget(mig.source, [i for i in wanted if i not in found], source))
        return found

    async def _mget(self, index: str, ids: list[str], source: list[str] | None) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        try:
            resp = await self._retrying(lambda: self.es.mget(index=index, ids=ids, source=source or True))
        except NotFoundError:
            return {}
        return {d["_id"]: d.get("_source", {}) for d in resp["docs"] if d.get("found")}
