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

Filters: the filter language ``filter=<column>:<expr>`` (``status:paid``, ``amount:>=10``,
``created:2024-01-01..2024-02-01``) and the older ``filter.<column>=value`` /
``range.<column>=lo..hi`` become the same two things: equality (``match``, or a whole day on
a date column) and ranges. Each is checked against the searched tables' mappings, so an
unknown column or a value of the wrong type answers 400 naming the filter instead of matching
nothing; ranges on exact decimals (keyword text, see ``sinks/documents.py``) use their
``.num`` sub-field so 9.5 < 10. On chunks the same filters apply to the row's copy under
``row.<column>`` (text columns are not copied there).

Paging (``search_after`` = the ``next`` of the previous answer, an opaque cursor): keyword
searches page through an Elasticsearch point in time, so concurrent writes neither repeat nor
skip a row; semantic and hybrid searches page by offset through their fused top-k (k fixed
by the first page: ``3 × size`` rows per list, the depth the relevance was measured at).

Parsing and fusion are pure functions (unit-tested); ``run_search`` does the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import html
import json
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dc_field
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
#: How long a keyword cursor's point in time is kept between two pages (each page renews it).
CURSOR_KEEP_ALIVE = "2m"
MAX_CURSOR_CHARS = 8192
#: Lucene's English stop words (Elasticsearch's ``_english_``): the snippet does not mark them.
#: The row indices are analysed by the standard analyzer, which keeps them; changing that
#: needs a re-index, so the highlight is asked for the query without them instead.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split())
_NUMERIC = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float", "unsigned_long"}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$")
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
    gt: str | None = None
    lt: str | None = None
    #: How the caller wrote it, for error messages (``filter=amount:>=10``).
    label: str = dc_field(default="", compare=False)


@dataclass
class SearchRequest:
    q: str
    mode: str = "keyword"
    tables: list[str] = field(default_factory=list)  # table ids (connector.schema.table); empty = all
    size: int = 10
    filters: dict[str, str] = field(default_factory=dict)
    ranges: list[RangeFilter] = field(default_factory=list)
    #: column -> how its equality filter was written, for error messages.
    labels: dict[str, str] = field(default_factory=dict)
    explain: bool = False
    #: The decoded ``search_after`` cursor (checked to belong to this query), or None.
    cursor: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """What a cursor must have been made for: everything but ``size`` and the cursor."""
        ranges = sorted((r.field, r.gte, r.lte, r.gt, r.lt) for r in self.ranges)
        raw = json.dumps([self.q, self.mode, sorted(self.tables), sorted(self.filters.items()), ranges], default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


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
    cursor: str | None = None
    for name, value in items:
        if name in ("q", "mode", "size", "search_after", "explain") and name in seen:
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
        elif name == "filter":
            _parse_filter(req, value)
        elif name.startswith("filter."):
            f = _field_name(name.removeprefix("filter."), name)
            _equality(req, f, value, f"{name}={value}")
        elif name.startswith("range."):
            f = _field_name(name.removeprefix("range."), name)
            req.ranges.append(_range(f, value, name))
        elif name == "search_after":
            if not value or len(value) > MAX_CURSOR_CHARS:
                raise SearchInputError("search_after: pass the `next` of a previous answer unchanged")
            cursor = value
        elif name == "explain":
            if value.lower() not in ("true", "false", "1", "0"):
                raise SearchInputError("explain must be true or false")
            req.explain = value.lower() in ("true", "1")
        else:
            raise SearchInputError(f"unknown parameter {name!r}; known: q, mode, size, table, filter, "
                                   f"filter.<field>, range.<field>, search_after, explain")
    if q is None or not q.strip():
        raise SearchInputError("q (the search text) is required")
    if len(q) > MAX_QUERY_CHARS:
        raise SearchInputError(f"q is longer than {MAX_QUERY_CHARS} characters")
    if len(req.filters) + len(req.ranges) > MAX_FILTERS:
        raise SearchInputError(f"at most {MAX_FILTERS} filters and ranges")
    req.q = q.strip()
    if cursor is not None:
        req.cursor = decode_cursor(cursor, req)
    return req


def _parse_filter(req: SearchRequest, raw: str) -> None:
    """One expression of the filter language: ``column:value``, ``column:>=v`` (also ``>``,
    ``<=``, ``<``) or ``column:lo..hi`` (either side may be left out; both inclusive)."""
    label = f"filter={raw}"
    col, sep, expr = raw.partition(":")
    if not sep or not col:
        raise SearchInputError(f"{label}: a filter is column:value, column:>=value or column:lo..hi "
                               "(e.g. filter=status:paid, filter=amount:>=10, filter=created:2024-01-01..2024-02-01)")
    f = _field_name(col, label)
    for op, key in ((">=", "gte"), ("<=", "lte"), (">", "gt"), ("<", "lt")):
        if expr.startswith(op):
            bound = expr[len(op):]
            if not bound or len(bound) > 128:
                raise SearchInputError(f"{label}: {op} needs a value (e.g. {col}:{op}10)")
            req.ranges.append(RangeFilter(f, **{"gte": None, "lte": None, key: bound}, label=label))
            return
    if ".." in expr:
        r = _range(f, expr, label)
        req.ranges.append(RangeFilter(f, r.gte, r.lte, label=label))
        return
    _equality(req, f, expr, label)


def _equality(req: SearchRequest, f: str, value: str, label: str) -> None:
    if f in req.filters:
        raise SearchInputError(f"{label}: an equality filter on {f!r} given more than once")
    if not value or len(value) > 256:
        raise SearchInputError(f"{label}: the value must be 1 to 256 characters")
    req.filters[f] = value
    req.labels[f] = label


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(raw: str, req: SearchRequest) -> dict[str, Any]:
    """The cursor of a previous answer, checked for shape and for belonging to ``req``'s query.

    A cursor is not signed: what it can name is harmless (a page offset, a point-in-time id;
    keyword searches filter on the request's own indices, so another index's point in time
    shows nothing beyond what the token may search)."""
    bad = SearchInputError("search_after: not a cursor of this API (pass the `next` of a previous answer unchanged)")
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("o"), int) or data["o"] < 0:
        raise bad
    if data.get("fp") != req.fingerprint():
        raise SearchInputError("search_after: this cursor belongs to another query (q, mode, table and filters "
                               "must stay the same from page to page)")
    if req.mode == "keyword":
        if not isinstance(data.get("pit"), str) or not isinstance(data.get("after"), list):
            raise bad
    elif not isinstance(data.get("d"), int) or not 1 <= data["d"] <= 3 * MAX_SIZE:
        raise bad
    return data


def highlight_text(q: str) -> str | None:
    """``q`` without its stop words outside quoted phrases, for the highlighter; None when
    nothing would change or only stop words are left (then the query itself is highlighted)."""
    parts = re.findall(r'"[^"]*"?|[^\s"]+', q)
    kept = [p for p in parts if p.startswith('"') or re.sub(r"^[-+|(]+|(~\d*|[)*])+$", "", p).lower() not in STOP_WORDS]
    if len(kept) == len(parts) or not kept:
        return None
    return " ".join(kept)


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
    return [(item, score) for item, score, _ in convex_explained(keyword, semantic, weight)]


def convex_explained(keyword: Sequence[tuple[K, float]], semantic: Sequence[tuple[K, float]],
                     weight: float = 0.5) -> list[tuple[K, float, dict[str, dict[str, float | int] | None]]]:
    """``convex`` with, per item, each list's part: ``{"keyword": {"score", "rank",
    "normalised"} or None, "semantic": ...}`` (None: not in that list)."""
    kw = _dedup(keyword)
    sem = _dedup(semantic)
    if not 0.0 <= weight <= 1.0:
        raise ValueError("weight must be in [0, 1]")
    scores: dict[K, float] = {}
    parts: dict[K, dict[str, dict[str, float | int] | None]] = {}
    for name, items, share in (("keyword", kw, 1.0 - weight), ("semantic", sem, weight)):
        for rank, ((item, raw), norm) in enumerate(zip(items, minmax([s for _, s in items]), strict=True), start=1):
            scores[item] = scores.get(item, 0.0) + share * norm
            parts.setdefault(item, {"keyword": None, "semantic": None})[name] = {
                "score": raw, "rank": rank, "normalised": norm}
    order = {item: i for i, item in enumerate(scores)}
    return [(item, score, parts[item]) for item, score in sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))]


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


def _column(mappings: Sequence[Mapping[str, Any]], f: str) -> Mapping[str, Any] | None:
    for m in mappings:
        p = _prop(m, f)
        if p is not None:
            return p
    return None


def _is_date_only(v: str) -> bool:
    return len(v) == 10


def _check_value(kind: str, v: str, label: str) -> None:
    if kind == "number":
        try:
            ok = math.isfinite(float(v))
        except ValueError:
            ok = False
        if not ok:
            raise SearchInputError(f"{label}: {v!r} is not a number")
    elif kind == "date":
        if not (_ISO_DATE.match(v) or (v.isascii() and v.isdigit())):
            raise SearchInputError(f"{label}: {v!r} is not a date (YYYY-MM-DD or an ISO 8601 date-time)")
        if _ISO_DATE.match(v):
            try:
                datetime.date.fromisoformat(v[:10])
            except ValueError:
                raise SearchInputError(f"{label}: {v!r} is not a date (YYYY-MM-DD or an ISO 8601 date-time)") from None
    elif kind == "boolean" and v.lower() not in ("true", "false"):
        raise SearchInputError(f"{label}: {v!r} is not true or false")


def _kind(prop: Mapping[str, Any] | None) -> str:
    if prop is None:
        return "unknown"
    typ = prop.get("type", "object")
    if typ in _NUMERIC or "num" in prop.get("fields", {}):
        return "number"
    if typ in ("date", "date_nanos"):
        return "date"
    if typ in ("boolean", "keyword", "text"):
        return str(typ)
    return "other"


def filter_clauses(req: SearchRequest, mappings: Sequence[Mapping[str, Any]], prefix: str = "",
                   row_mappings: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Filter clauses for ``req`` against the given index mappings' ``properties``.

    ``row_mappings`` (default ``mappings``) are the row indices' mappings the columns are
    checked against; with none known (no index yet) filters are passed on unchecked."""
    rows = mappings if row_mappings is None else row_mappings
    checked = any(rows)
    out: list[dict[str, Any]] = []

    def target(f: str, label: str, is_range: bool) -> tuple[str, str]:
        prop = _column(rows, f)
        kind = _kind(prop)
        if checked and prop is None:
            raise SearchInputError(f"{label}: no column {f!r} in the searched tables")
        if kind == "other":
            raise SearchInputError(f"{label}: column {f!r} is not filterable (JSON, geometry or binary)")
        if prefix and checked and _column(mappings, f) is None:
            raise SearchInputError(f"{label}: {f!r} is a text column, which chunks do not copy: semantic and "
                                   "hybrid searches filter on the other columns")
        name = prefix + f
        if kind == "number" and prop is not None and "num" in prop.get("fields", {}):
            name += ".num"  # exact decimals are keyword text: compare the numeric sub-field
        elif kind == "text" and is_range and "keyword" in (prop or {}).get("fields", {}):
            name += ".keyword"  # a range over the whole text, not over its words
        return name, kind

    for f, v in req.filters.items():
        label = req.labels.get(f, f"filter.{f}={v}")
        name, kind = target(f, label, False)
        _check_value(kind, v, label)
        if kind == "date" and _is_date_only(v):
            # A day, not its first millisecond: "||/d" rounds lte up to the day's last one.
            out.append({"range": {name: {"gte": v, "lte": f"{v}||/d"}}})
        elif kind == "number":
            out.append({"range": {name: {"gte": v, "lte": v}}})
        else:
            out.append({"match": {name: {"query": v, "lenient": True, "operator": "and"}}})
    for r in req.ranges:
        label = r.label or f"range.{r.field}"
        name, kind = target(r.field, label, True)
        if kind == "boolean":
            raise SearchInputError(f"{label}: a range on the boolean column {r.field!r}; use column:true")
        bounds: dict[str, str] = {}
        for key, bound in (("gte", r.gte), ("gt", r.gt), ("lte", r.lte), ("lt", r.lt)):
            if bound is None:
                continue
            _check_value(kind, bound, label)
            # Date-only upper bounds cover their whole day (lo..hi is inclusive); gt a day means after it.
            bounds[key] = f"{bound}||/d" if kind == "date" and key in ("lte", "gt") and _is_date_only(bound) else bound
        out.append({"range": {name: bounds}})
    return out


def keyword_body(req: SearchRequest, clauses: list[dict[str, Any]], size: int) -> dict[str, Any]:
    # encoder=html: snippets are safe to put into a page; only <mark> is markup.
    highlight: dict[str, Any] = {"fields": {"*": {}}, "require_field_match": False, "encoder": "html",
                                 "pre_tags": ["<mark>"], "post_tags": ["</mark>"], "fragment_size": 160,
                                 "number_of_fragments": 1}
    hl = highlight_text(req.q)
    if hl is not None:
        # "keep a shell running" matches rows by "a" too (the standard analyzer keeps stop
        # words), but the snippet should not mark every "a": highlight the query without them.
        highlight["highlight_query"] = {"simple_query_string": {"query": hl, "fields": ["*"], "lenient": True}}
    return {
        "size": size,
        "query": {"bool": {"must": [{"simple_query_string": {"query": req.q, "fields": ["*"], "lenient": True}}],
                           "filter": clauses}},
        "highlight": highlight,
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


async def _search(es: AsyncElasticsearch, aliases: list[str] | None, body: dict[str, Any]) -> dict[str, Any]:
    """One search; ``aliases`` None: the body names a point in time instead of indices."""
    from elasticsearch import ApiError, BadRequestError, NotFoundError, TransportError

    where: dict[str, Any] = {} if aliases is None else {
        "index": ",".join(aliases), "ignore_unavailable": True, "allow_no_indices": True}
    try:
        resp = await es.search(**where, **body)
    except BadRequestError as e:
        # The query itself was refused: a range bound that is not a number or a date, etc.
        raise SearchInputError(f"Elasticsearch refused the query: {_reason(e)}") from None
    except NotFoundError as e:
        if aliases is None:
            raise SearchInputError("search_after: the cursor expired (a point in time is kept "
                                   f"{CURSOR_KEEP_ALIVE} between pages); search again") from None
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    return dict(resp.body)


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
    key = (f"{embedder.model}/{embedder.dimensions if embedder.send_dimensions else ''}", input_type, prefix, q)
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
    if embedder.send_dimensions and embedder.dimensions:
        kwargs["dimensions"] = embedder.dimensions  # the chunks' size, as the pipeline asked for it
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
    source: dict[str, Any] | None = None

    def out(self, score: float | None = None, explain: dict[str, Any] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"table": self.target.id, "table_key": self.target.key, "id": self.id,
                             "score": self.score if score is None else score,
                             "fields": self.fields or {}, "snippet": self.snippet, "ranks": self.ranks,
                             "source": self.source}
        if self.chunk:
            d["chunk"] = self.chunk
        if explain is not None:
            d["explain"] = explain
        return d


def source_position(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where the row's last applied change came from (the ``_cdc`` metadata of its document)."""
    meta = doc.get(META)
    if not isinstance(meta, Mapping):
        return None
    return {k: meta.get(k) for k in ("position", "op", "ts_source", "version")}


def _total(value: int, capped: bool) -> dict[str, Any]:
    return {"value": value, "relation": "gte" if capped else "eq"}


async def run_search(es: AsyncElasticsearch, embedder: Embedder | None, targets: list[Target], req: SearchRequest,
                     *, query_input_type: str | None = "query", query_prefix: str = "") -> dict[str, Any]:
    """Run ``req`` over ``targets`` (already validated for the mode) and return the API body."""
    by_alias = {t.alias: t for t in targets}
    out: dict[str, Any] = {"q": req.q, "mode": req.mode, "tables": [t.id for t in targets], "size": req.size}
    row_maps = await _mappings(es, list(by_alias))
    if req.mode == "keyword":
        return {**out, **await _keyword_page(es, by_alias, req, row_maps)}
    cur = req.cursor
    # The fused list's depth is fixed by the first page, so that every page cuts the same list.
    depth = int(cur["d"]) if cur else min(req.size * 3, MAX_SIZE * 3)
    offset = int(cur["o"]) if cur else 0
    warnings: list[str] = []
    keyword: list[_Hit] = []
    kw_capped = False
    if req.mode == "hybrid":
        resp = await _search(es, list(by_alias), keyword_body(req, filter_clauses(req, row_maps), depth))
        keyword = [_keyword_hit(t, h, rank) for rank, (t, h) in enumerate(_owned(by_alias, resp), start=1)]
        kw_capped = resp["hits"]["total"]["value"] > len(keyword)
    semantic, sem_capped = await _semantic_list(es, embedder, targets, req, depth, row_maps, warnings,
                                                query_input_type, query_prefix)
    Parts = dict[str, dict[str, float | int] | None]
    ranked: list[tuple[_Hit, float, Parts | None]]
    if req.mode == "semantic":
        ranked = [(h, h.score, None) for h in semantic]
    else:
        kw = {(h.target.id, h.id): h for h in keyword}
        sem = {(h.target.id, h.id): h for h in semantic}
        ranked = []
        for key, score, parts in convex_explained([(k, h.score) for k, h in kw.items()],
                                                  [(k, h.score) for k, h in sem.items()], SEMANTIC_WEIGHT):
            a, b = kw.get(key), sem.get(key)
            base = a or b
            assert base is not None
            snippet = (a.snippet if a else None) or (b.snippet if b else None)
            ranked.append((_Hit(base.target, base.id, score, base.fields, snippet, b.chunk if b else None,
                                {**(a.ranks if a else {}), **(b.ranks if b else {})}, base.source), score, parts))
    page = ranked[offset:offset + req.size]
    await _fill_rows(es, [h for h, _, _ in page if h.fields is None])
    hits = []
    for h, score, why in page:
        explain: dict[str, Any] | None = None
        if req.explain:
            explain = ({"semantic": {"score": h.score, "rank": h.ranks.get("semantic")}, "final": h.score}
                       if why is None else {**why, "weight": SEMANTIC_WEIGHT, "final": score})
        hits.append(h.out(score, explain))
    end = offset + len(page)
    nxt = encode_cursor({"v": 1, "fp": req.fingerprint(), "o": end, "d": depth}) if end < len(ranked) else None
    return {**out, "hits": hits, "total": _total(len(ranked), kw_capped or sem_capped), "next": nxt,
            "depth": depth, "counts": {"keyword": len(keyword), "semantic": len(semantic)}, "warnings": warnings}


def _owned(by_alias: Mapping[str, Target], resp: Mapping[str, Any]) -> list[tuple[Target, dict[str, Any]]]:
    """The answer's hits with their table (hits of an index not asked for are dropped)."""
    out = []
    for h in resp["hits"]["hits"]:
        t = by_alias.get(_alias_of(h["_index"]))
        if t is not None:
            out.append((t, h))
    return out


def _keyword_hit(t: Target, h: Mapping[str, Any], rank: int) -> _Hit:
    src = h.get("_source", {})
    snippet = _snippet_from_highlight(h.get("highlight", {}), t.text_columns)
    return _Hit(t, h["_id"], float(h.get("_score") or 0.0), _fields(src), snippet, ranks={"keyword": rank},
                source=source_position(src))


async def _keyword_page(es: AsyncElasticsearch, by_alias: Mapping[str, Target], req: SearchRequest,
                        row_maps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One page of a keyword search through a point in time (opened by the first page, kept
    while there are more pages, closed after the last)."""
    from elasticsearch import ApiError, TransportError

    aliases = list(by_alias)
    clauses = filter_clauses(req, row_maps)
    # A cursor is not signed and its point in time may name any index: only the request's
    # tables (the ones this token may search) count.
    clauses.append({"terms": {"_index": aliases}})
    cur = req.cursor
    if cur is None:
        try:
            pit = (await es.open_point_in_time(index=",".join(aliases), keep_alive=CURSOR_KEEP_ALIVE,
                                               ignore_unavailable=True))["id"]
        except (ApiError, TransportError) as e:
            raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    else:
        pit = str(cur["pit"])
    body = keyword_body(req, clauses, req.size)
    # Sorted by score; the point in time adds its own tiebreak (_shard_doc), so equal scores
    # keep one order from page to page.
    body.update(pit={"id": pit, "keep_alive": CURSOR_KEEP_ALIVE}, sort=[{"_score": "desc"}],
                track_total_hits=True)
    if cur is not None:
        body["search_after"] = cur["after"]
    resp = await _search(es, None, body)
    pit = str(resp.get("pit_id") or pit)
    raw = resp["hits"]["hits"]
    offset = int(cur["o"]) if cur else 0
    hits = []
    for rank, (t, h) in enumerate(_owned(by_alias, resp), start=offset + 1):
        hit = _keyword_hit(t, h, rank)
        hits.append(hit.out(explain={"keyword": {"score": hit.score, "rank": rank}, "final": hit.score}
                            if req.explain else None))
    total = resp["hits"]["total"]
    end = offset + len(raw)
    more = len(raw) == req.size and end < int(total["value"])
    nxt = None
    if more:
        nxt = encode_cursor({"v": 1, "fp": req.fingerprint(), "o": end, "pit": pit, "after": raw[-1]["sort"]})
    else:
        with contextlib.suppress(ApiError, TransportError):
            await es.close_point_in_time(id=pit)
    return {"hits": hits, "total": {"value": int(total["value"]), "relation": total["relation"]}, "next": nxt,
            "counts": {"keyword": len(hits), "semantic": 0}, "warnings": []}


async def _semantic_list(es: AsyncElasticsearch, embedder: Embedder | None, targets: list[Target],
                         req: SearchRequest, depth: int, row_maps: Sequence[Mapping[str, Any]], warnings: list[str],
                         query_input_type: str | None, query_prefix: str) -> tuple[list[_Hit], bool]:
    """The semantic list (rows, best first, at most ``depth``) and whether more rows could match."""
    by_chunks = {t.chunks_alias: t for t in targets if t.profile.embeds}
    if not by_chunks:
        return [], False
    if embedder is None:
        raise SearchInputError("semantic search needs embeddings: set embed_url")
    maps = [m.get("row", {}).get("properties", {}) for m in await _mappings(es, list(by_chunks))]
    k = min(depth * 3, 1000)
    body = knn_body([], filter_clauses(req, maps, "row.", row_maps), k)
    try:
        found, capped = await _knn(es, embedder, list(by_chunks), body, req.q, query_input_type, query_prefix)
    except SearchBackendError as e:
        if req.mode == "semantic":
            raise
        # Hybrid degrades to its keyword half rather than failing the whole search.
        warnings.append(f"semantic part skipped: {e}")
        return [], False
    best: dict[tuple[str, str], _Hit] = {}
    for t, h in _owned(by_chunks, {"hits": {"hits": found}}):
        src = h.get("_source", {})
        if "parent_id" not in src:
            continue
        key = (t.id, str(src["parent_id"]))
        if key in best:
            continue  # hits come best first: the first chunk of a row is its best
        text = str(src.get("text", ""))
        chunk_snippet = html.escape(text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else ""))
        best[key] = _Hit(t, key[1], float(h.get("_score") or 0.0), None, chunk_snippet,
                         {"column": src.get("column"), "n": src.get("n")})
    semantic = list(best.values())[:depth]
    for rank, s in enumerate(semantic, start=1):
        s.ranks["semantic"] = rank
    return semantic, capped or len(best) > depth


#: (chunks generation, dimensions) -> the model its chunks record, for generations without a
#: marker (built before generations recorded their model; one search each, then remembered).
_RECORDED_MODELS: dict[tuple[str, int | None], str] = {}


async def _vectors(es: AsyncElasticsearch, indices: list[str]) -> dict[str, tuple[str | None, int | None]]:
    """Chunks generation -> the model/dimensions of its vectors, read at each search (a chunks
    index dropped with its profile comes back under the same name with the settings' size)."""
    from elasticsearch import ApiError, TransportError

    from cdcstream.pipeline.reembed import recorded_model, vector_mark

    if not indices:
        return {}
    try:
        resp = await es.indices.get_mapping(index=",".join(indices))
        out = {}
        for index, body in resp.body.items():
            model, dims = vector_mark(body.get("mappings", {}))
            if model is None and (index, dims) not in _RECORDED_MODELS:
                found = await recorded_model(es, index)
                if found is not None:
                    _RECORDED_MODELS[(index, dims)] = found
            out[index] = (model or _RECORDED_MODELS.get((index, dims)), dims)
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    return out


async def _serving(es: AsyncElasticsearch, aliases: list[str]) -> dict[str, str]:
    """Chunks alias -> the generation behind it now."""
    from elasticsearch import ApiError, NotFoundError, TransportError

    try:
        resp = await es.indices.get_alias(name=",".join(aliases), ignore_unavailable=True)
    except NotFoundError:
        return {}
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    return {a: index for index, v in sorted(resp.body.items()) for a in v.get("aliases", {}) if a in aliases}


async def _knn(es: AsyncElasticsearch, embedder: Embedder, aliases: list[str], body: dict[str, Any], q: str,
               input_type: str | None, prefix: str) -> tuple[list[dict[str, Any]], bool]:
    """The chunk hits of ``body``'s kNN over ``aliases`` (best first) and whether a list was cut
    at k. The query is embedded with the model and size of the generation answering each alias
    (pipeline/reembed.py: a re-embed swaps generations of another size under the alias), and
    the generations are searched by name: a swap between choosing the vector and searching
    cannot pair a vector with a generation of another size. A swap meanwhile: searched again."""
    for attempt in range(3):
        serving = await _serving(es, aliases)
        try:
            vectors = await _vectors(es, list(serving.values()))
        except SearchBackendError:
            if attempt == 2:
                raise
            continue  # a generation deleted by a swap meanwhile
        groups: dict[tuple[str, int | None], list[str]] = {}
        for index, (model, dims) in vectors.items():
            # No chunk yet: the configured model writes the first.
            groups.setdefault((model or embedder.model, dims), []).append(index)
        hits: list[dict[str, Any]] = []
        capped = False
        for (model, dims), indices in groups.items():
            same = model == embedder.model and dims in (None, embedder.dimensions)
            emb = embedder if same else embedder.variant(model, dims)
            vec = await embed_query(emb, q, input_type, prefix)
            resp = await _search(es, indices, {**body, "knn": {**body["knn"], "query_vector": vec}})
            hits += resp["hits"]["hits"]
            capped = capped or len(resp["hits"]["hits"]) >= body["knn"]["k"]
        if await _serving(es, aliases) == serving:
            break
    hits.sort(key=lambda h: -float(h.get("_score") or 0.0))
    return hits, capped


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
        src = d.get("_source", {}) if d.get("found") else {}
        h.fields = _fields(src)
        h.source = source_position(src)


async def get_row(es: AsyncElasticsearch, target: Target, doc_id: str) -> dict[str, Any] | None:
    """One row's document (the search hit's link), or None when the row is not in the mirror."""
    from elasticsearch import ApiError, NotFoundError, TransportError

    try:
        d = await es.get(index=target.alias, id=doc_id)
    except NotFoundError:
        return None
    except (ApiError, TransportError) as e:
        raise SearchBackendError(f"Elasticsearch: {type(e).__name__}: {_reason(e)}") from None
    src = d.get("_source", {})
    return {"table": target.id, "table_key": target.key, "id": doc_id, "fields": _fields(src),
            "source": source_position(src)}
