"""Analyst search over the mirror.

Three modes, all over the indices the pipeline writes:

* ``keyword``  – ``simple_query_string`` over a table's row index (``<alias>``), with
  Elasticsearch highlighting for the snippet. ``simple_query_string`` never rejects user
  syntax, so a stray quote is a search, not a 500.
* ``semantic`` – the query embedded with the pipeline's embedder (as a *query*: e5 models
  embed queries and passages differently) and a kNN search over ``<alias>-chunks``; chunks
  are grouped by their row (``parent_id``), the best chunk giving score and snippet.
* ``hybrid``   – a score-normalised convex combination of both lists, computed here (the
  minimal node has no ``rrf`` retriever): each list's scores min-max scaled to [0, 1], then
  ``0.9 * semantic + 0.1 * keyword`` (``SEMANTIC_WEIGHT``; equal-weight reciprocal rank
  fusion, the previous method, let a weak keyword list pull good semantic hits down:
  docs/benchmarks.md, "Search relevance"). ``rrf`` stays for comparison.

Field filters (``filter.<field>=value``) are ``match`` queries with ``lenient`` on, so a
word on a number field matches nothing instead of failing; ranges (``range.<field>=lo..hi``)
target the ``.num`` sub-field of exact decimals (stored as keyword text, see
``sinks/documents.py``) so 9.5 < 10 numerically. On chunks the same filters apply to the
row's copy under ``row.<field>``.

Parsing and fusion are pure functions (unit-tested); ``run_search`` does the I/O.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from cdcstream.core.config import ProcessingProfile
from cdcstream.sinks.documents import META

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch

    from cdcstream.pipeline.embeddings import Embedder

MODES = ("keyword", "semantic", "hybrid")
RRF_K = 60
#: Hybrid fusion: the semantic list's share of the score-normalised convex combination (see
#: ``convex``). Measured on bench/relevance_set.py (docs/benchmarks.md, "Search relevance"):
#: equal-weight RRF ranked far below semantic alone there; at 0.9 hybrid is at least as good
#: as the better single mode on every measure, lower weights are not.
SEMANTIC_WEIGHT = 0.9
MAX_SIZE = 100
MAX_QUERY_CHARS = 1000
MAX_FILTERS = 20
SNIPPET_CHARS = 300
# Column names as PostgreSQL/MariaDB allow them unquoted, dotted for object sub-fields.
_FIELD = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,62}(\.[A-Za-z_$][A-Za-z0-9_$]{0,62}){0,3}$")

K = TypeVar("K", bound=Hashable)


class SearchInputError(ValueError):
    """Bad search input: the API answers 400 with this message."""


class SearchBackendError(RuntimeError):
    """Elasticsearch or the embeddings API failed: the API answers 502."""


@dataclass(frozen=True)
class RangeFilter:
    field: str
    gte: str | None
    lte: str | None


@dataclass
class SearchRequest:
    q: str
    mode: str = "keyword"
    tables: list[str] = field(default_factory=list)  # table ids (connector.schema.table); empty = all
    size: int = 10
    filters: dict[str, str] = field(default_factory=dict)
    ranges: list[RangeFilter] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One searchable table: its id, indices and live profile."""

    id: str
    key: str
    alias: str
    chunks_alias: str
    profile: ProcessingProfile
    text_columns: tuple[str, ...]


# --- parsing ---------------------------------------------------------------------------
def parse_request(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> SearchRequest:
    """Validate query-string parameters; raise ``SearchInputError`` with a clear message."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    q: str | None = None
    req = SearchRequest(q="")
    seen: set[str] = set()
    for name, value in items:
        if name in ("q", "mode", "size") and name in seen:
            raise SearchInputError(f"parameter {name!r} given more than once")
        seen.add(name)
        if name == "q":
            q = value
        elif name == "mode":
            if value not in MODES:
                raise SearchInputError(f"mode must be one of {', '.join(MODES)}, not {value!r}")
            req.mode = value
        elif name == "size":
            if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_SIZE:
                raise SearchInputError(f"size must be an integer from 1 to {MAX_SIZE}, not {value!r}")
            req.size = int(value)
        elif name == "table":
            for t in value.split(","):
                if not t.strip():
                    raise SearchInputError("table must be a table id such as connector.schema.table")
                req.tables.append(t.strip())
        elif name.startswith("filter."):
            f = _field_name(name.removeprefix("filter."), name)
            if f in req.filters:
                raise SearchInputError(f"filter on {f!r} given more than once")
            if not value or len(value) > 256:
                raise SearchInputError(f"{name}: the value must be 1 to 256 characters")
            req.filters[f] = value
        elif name.startswith("range."):
            f = _field_name(name.removeprefix("range."), name)
            req.ranges.append(_range(f, value, name))
        else:
            raise SearchInputError(f"unknown parameter {name!r}; known: q, mode, size, table, filter.<field>, "
                                   f"range.<field>")
    if q is None or not q.strip():
        raise SearchInputError("q (the search text) is required")
    if len(q) > MAX_QUERY_CHARS:
        raise SearchInputError(f"q is longer than {MAX_QUERY_CHARS} characters")
    if len(req.filters) + len(req.ranges) > MAX_FILTERS:
        raise SearchInputError(f"at most {MAX_FILTERS} filters and ranges")
    req.q = q.strip()
    return req


def _field_name(f: str, param: str) -> str:
    if not _FIELD.match(f) or f.startswith(META):
        raise SearchInputError(f"{param}: {f!r} is not a column name")
    return f


def _range(f: str, value: str, param: str) -> RangeFilter:
    lo, sep, hi = value.partition("..")
    if not sep or (not lo and not hi) or len(value) > 128:
        raise SearchInputError(f"{param}: a range is lo..hi, lo.. or ..hi (e.g. range.amount=10..100)")
    return RangeFilter(f, lo or None, hi or None)


# --- fusion ----------------------------------------------------------------------------
def rrf(rankings: Sequence[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Reciprocal rank fusion: each list contributes ``1 / (k + rank)`` (rank from 1) per item.

    Ties keep the order of first appearance (earlier lists, then earlier ranks), so the
    fused order is deterministic. A duplicate inside one list counts once, at its best rank.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    scores: dict[K, float] = {}
    for ranking in rankings:
        seen: set[K] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def fuse(keyword: Sequence[tuple[K, float]], semantic: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
    """Hybrid's fusion of the keyword and semantic lists (each ``(item, score)``, best first)."""
    return convex(keyword, semantic, SEMANTIC_WEIGHT)


def minmax(scores: Sequence[float]) -> list[float]:
    """Scale a list's scores to [0, 1] (its best 1, its worst 0); all equal -> all 1."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi - lo <= 1e-12:
        return [1.0] * len(scores)
    return [(s - lo) / (hi - lo) for s in scores]


def convex(keyword: Sequence[tuple[K, float]], semantic: Sequence[tuple[K, float]],
           weight: float = 0.5) -> list[tuple[K, float]]:
    """Score-normalised convex combination (Bruch, Gai and Ingber, "An Analysis of Fusion
    Functions for Hybrid Retrieval", 2023): each list's scores min-max scaled to [0, 1],
    then ``weight * semantic + (1 - weight) * keyword``; an item missing from a list gets 0
    there. Each list best first; a duplicate counts at its first (best) place; ties keep the
    order of first appearance (keyword list first)."""
    kw = _dedup(keyword)
    sem = _dedup(semantic)
    if not 0.0 <= weight <= 1.0:
        raise ValueError("weight must be in [0, 1]")
    scores: dict[K, float] = {}
    for items, share in ((kw, 1.0 - weight), (sem, weight)):
        for (item, _), norm in zip(items, minmax([s for _, s in items]), strict=True):
            scores[item] = scores.get(item, 0.0) + share * norm
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def _dedup(items: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
    seen: set[K] = set()
    out: list[tuple[K, float]] = []
    for item, score in items:
        if item not in seen:
            seen.add(item)
            out.append((item, float(score)))
    return out


# --- queries ---------------------------------------------------------------------------
def _prop(props: Mapping[str, Any], dotted: str) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = None
    cur = props
    for part in dotted.split("."):
        node = cur.get(part)
        if not isinstance(node, Mapping):
            return None
        cur = node.get("properties", {})
    return node


def filter_clauses(req: SearchRequest, mappings: Sequence[Mapping[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    """Filter clauses for ``req`` against the given index mappings' ``properties``."""
    out: list[dict[str, Any]] = []
    for f, v in req.filters.items():
        out.append({"match": {prefix + f: {"query": v, "lenient": True, "operator": "and"}}})
    for r in req.ranges:
        target = prefix + r.field
        # Exact decimals are keyword text with a numeric `.num` sub-field: range on the number.
        if any((p := _prop(m, r.field)) is not None and "num" in p.get("fields", {}) for m in mappings):
            target += ".num"
        bounds = {k: v for k, v in (("gte", r.gte), ("lte", r.lte)) if v is not None}
        out.append({"range": {target: bounds}})
    return out


def keyword_body(req: SearchRequest, clauses: list[dict[str, Any]], size: int) -> dict[str, Any]:
    return {
        "size": size,
        "query": {"bool": {"must": [{"simple_query_string": {"query": req.q, "fields": ["*"], "lenient": True}}],
                           "filter": clauses}},
        # encoder=html: snippets are safe to put into a page; only <mark> is markup.
        "highlight": {"fields": {"*": {}}, "require_field_match": False, "encoder": "html",
                      "pre_tags": ["<mark>"], "post_tags": ["</mark>"], "fragment_size": 160,
                      "number_of_fragments": 1},
    }


def knn_body(vector: list[float], clauses: list[dict[str, Any]], k: int) -> dict[str, Any]:
    knn: dict[str, Any] = {"field": "embedding", "query_vector": vector, "k": k, "num_candidates": max(100, 2 * k)}
    if clauses:
        knn["filter"] = clauses
    return {"size": k, "knn": knn, "_source": {"excludes": ["embedding"]}}


def _alias_of(index: str) -> str:
    """Physical index name -> alias (``<alias>-000001`` -> ``<alias>``)."""
    base, _, gen = index.rpartition("-")
    return base if gen.isdigit() and len(gen) == 6 else index


def _snippet_from_highlight(hl: Mapping[str, list[str]], text_columns: tuple[str, ...]) -> str | None:
    for f in (*text_columns, *sorted(hl)):
        frags = hl.get(f) or hl.get(f"{f}.keyword")
        if frags and not f.startswith(META):
            return frags[0]
    return None


def _fields(source: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k != META}


# --- running ---------------------------------------------------------------------------
async def _mappings(es: AsyncElasticsearch, aliases: list[str]) -> list[Mapping[str, Any]]:
    from elasticsearch import NotFoundError

    try:
        resp = await es.indices.get_mapping(index=",".join(aliases), ignore_unavailable=True, allow_no_indices=True)
    except NotFoundError:
        return []
    return [v.get("mappings", {}).get("properties", {}) for v in resp.body.values()]


async def _search(es: AsyncElasticsearch, aliases: list[str], body: dict[str, Any]) -> list[dict[str, Any]]:
    from elasticsearch import ApiError, BadRequestError, TransportError

    try:
        resp = await es.search(index=",".join(aliases), ignore_unavailable=True, allow_no_indices=True, **body)
    except BadRequestError as e:
        # The query itself was refused: a range bound that is not a number or a date, etc.
        raise SearchInputError(f"Elasticsearch refused the query: {_reason(e)}") from None
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    return list(resp["hits"]["hits"])


def _reason(e: Exception) -> str:
    info = getattr(e, "info", None) or getattr(e, "body", None)
    if isinstance(info, dict):
        err = info.get("error", {})
        if isinstance(err, dict):
            root = (err.get("root_cause") or [err])[0]
            return str(root.get("reason", err.get("type", "")))[:500]
    return str(e)[:500]


#: Query vectors by (model, input type, prefix, query): analysts repeat queries, and a page
#: re-run must not wait for the embeddings API again. Bounded; oldest entries go first.
_QUERY_VECTORS: dict[tuple[str, str | None, str, str], list[float]] = {}
QUERY_CACHE_SIZE = 512
QUERY_EMBED_TIMEOUT_S = 30.0


async def embed_query(embedder: Embedder, q: str, input_type: str | None, prefix: str) -> list[float]:
    key = (embedder.model, input_type, prefix, q)
    hit = _QUERY_VECTORS.get(key)
    if hit is not None:
        return hit
    vec = await _embed_query(embedder, q, input_type, prefix)
    if len(_QUERY_VECTORS) >= QUERY_CACHE_SIZE:
        del _QUERY_VECTORS[next(iter(_QUERY_VECTORS))]
    _QUERY_VECTORS[key] = vec
    return vec


async def _embed_query(embedder: Embedder, q: str, input_type: str | None, prefix: str) -> list[float]:
    import openai

    kwargs: dict[str, Any] = {}
    if input_type:
        kwargs["extra_body"] = {"input_type": input_type}
    try:
        resp = await asyncio.wait_for(embedder.client.embeddings.create(
            model=embedder.model, input=[prefix + q], **kwargs), timeout=QUERY_EMBED_TIMEOUT_S)
    except (openai.OpenAIError, TimeoutError) as e:
        raise SearchBackendError(f"embeddings: {type(e).__name__}") from None
    return list(resp.data[0].embedding)


@dataclass
class _Hit:
    target: Target
    id: str
    score: float
    fields: dict[str, Any] | None = None
    snippet: str | None = None
    chunk: dict[str, Any] | None = None
    ranks: dict[str, int] = field(default_factory=dict)

    def out(self, score: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"table": self.target.id, "table_key": self.target.key, "id": self.id,
                             "score": self.score if score is None else score,
                             "fields": self.fields or {}, "snippet": self.snippet, "ranks": self.ranks}
        if self.chunk:
            d["chunk"] = self.chunk
        return d


async def run_search(es: AsyncElasticsearch, embedder: Embedder | None, targets: list[Target], req: SearchRequest,
                     *, query_input_type: str | None = "query", query_prefix: str = "") -> dict[str, Any]:
    """Run ``req`` over ``targets`` (already validated for the mode) and return the API body."""
    by_alias = {t.alias: t for t in targets}
    by_chunks = {t.chunks_alias: t for t in targets if t.profile.embeds}
    keyword: list[_Hit] = []
    semantic: list[_Hit] = []
    warnings: list[str] = []
    vec: list[float] | None = None
    want = req.size if req.mode != "hybrid" else min(req.size * 3, MAX_SIZE * 3)
    if req.mode in ("keyword", "hybrid") and by_alias:
        maps = await _mappings(es, list(by_alias))
        body = keyword_body(req, filter_clauses(req, maps), want)
        for rank, h in enumerate(await _search(es, list(by_alias), body), start=1):
            t = by_alias.get(_alias_of(h["_index"]))
            if t is None:
                continue
            snippet = _snippet_from_highlight(h.get("highlight", {}), t.text_columns)
            keyword.append(_Hit(t, h["_id"], float(h.get("_score") or 0.0), _fields(h.get("_source", {})), snippet,
                                ranks={"keyword": rank}))
    if req.mode in ("semantic", "hybrid") and by_chunks:
        if embedder is None:
            raise SearchInputError("semantic search needs embeddings: set embed_url")
        try:
            vec = await embed_query(embedder, req.q, query_input_type, query_prefix)
        except SearchBackendError as e:
            if req.mode == "semantic":
                raise
            # Hybrid degrades to its keyword half rather than failing the whole search.
            warnings.append(f"semantic part skipped: {e}")
            vec = None
    if req.mode in ("semantic", "hybrid") and by_chunks and vec is not None:
        maps = [m.get("row", {}).get("properties", {}) for m in await _mappings(es, list(by_chunks))]
        body = knn_body(vec, filter_clauses(req, maps, prefix="row."), min(want * 3, 1000))
        best: dict[tuple[str, str], _Hit] = {}
        for h in await _search(es, list(by_chunks), body):
            t = by_chunks.get(_alias_of(h["_index"]))
            src = h.get("_source", {})
            if t is None or "parent_id" not in src:
                continue
            key = (t.id, str(src["parent_id"]))
            if key in best:
                continue  # hits come best first: the first chunk of a row is its best
            text = str(src.get("text", ""))
            chunk_snippet = html.escape(text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else ""))
            best[key] = _Hit(t, key[1], float(h.get("_score") or 0.0), None, chunk_snippet,
                             {"column": src.get("column"), "n": src.get("n")})
        semantic = list(best.values())[:want]
        for rank, s in enumerate(semantic, start=1):
            s.ranks["semantic"] = rank
        await _fill_rows(es, semantic)
    if req.mode == "keyword":
        hits = [h.out() for h in keyword[:req.size]]
    elif req.mode == "semantic":
        hits = [h.out() for h in semantic[:req.size]]
    else:
        kw = {(h.target.id, h.id): h for h in keyword}
        sem = {(h.target.id, h.id): h for h in semantic}
        hits = []
        for key, score in fuse([(k, h.score) for k, h in kw.items()], [(k, h.score) for k, h in sem.items()])[
                :req.size]:
            a, b = kw.get(key), sem.get(key)
            base = a or b
            assert base is not None
            snippet = (a.snippet if a else None) or (b.snippet if b else None)
            merged = _Hit(base.target, base.id, score, base.fields, snippet, b.chunk if b else None,
                          {**(a.ranks if a else {}), **(b.ranks if b else {})})
            hits.append(merged.out(score))
    return {"q": req.q, "mode": req.mode, "tables": [t.id for t in targets], "size": req.size, "hits": hits,
            "counts": {"keyword": len(keyword), "semantic": len(semantic)}, "warnings": warnings}


async def _fill_rows(es: AsyncElasticsearch, hits: list[_Hit]) -> None:
    """Semantic hits come from chunks: fetch each row's full document for ``fields``."""
    if not hits:
        return
    from elasticsearch import ApiError, TransportError

    try:
        resp = await es.mget(docs=[{"_index": h.target.alias, "_id": h.id} for h in hits])
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    for h, d in zip(hits, resp["docs"], strict=True):
        h.fields = _fields(d.get("_source", {})) if d.get("found") else {}
