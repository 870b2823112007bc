"""The OpenAPI 3 document of the worker's HTTP API (served at ``/api/openapi.json``).

Written as data next to the views rather than generated: Faust views carry no schema,
and a hand-kept document is what the schemathesis fuzz test checks the views against.
Who may call each operation is not hand-kept: ``security`` and ``x-roles`` come from
``cdcstream.web.auth.ROUTES``, the table the views enforce, and every route there must have
its operations here (``document`` refuses otherwise), so the authorization matrix test that
reads this document cannot miss a route.
"""

from __future__ import annotations

from typing import Any

from cdcstream.core.config import ProcessingProfile
from cdcstream.web.auth import ROLES, ROUTES, Access
from cdcstream.web.search import MAX_CURSOR_CHARS, MAX_QUERY_CHARS, MAX_SIZE, MODES

_ERROR = {"description": "Invalid input, unknown resource or refused request",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_UNAUTH = {"description": "Bearer token missing or wrong",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_FORBIDDEN = {"description": "The token's role may not call this",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_OBJ = {"application/json": {"schema": {"type": "object"}}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _table_param(example: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": "table", "in": "path", "required": True,
        "description": "Table id `connector.schema.table` as listed by `GET /api/tables` (field `id`).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 300},
    }
    if example:
        # A real id: fuzzers and readers reach the handler, not only the 404.
        p["example"] = example
    return p


def document(reads_open: bool, example_table: str | None = None) -> dict[str, Any]:
    """The document as a worker with open reads (loopback, no protect_reads) or not serves it."""
    table_param = _table_param(example_table)
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    # Placeholders: _secure() below replaces every operation's security from ROUTES.
    read_sec: list[dict[str, list[str]]] = []

    def op(summary: str, *, security: list[dict[str, list[str]]], params: list[dict[str, Any]] | None = None,
           body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
           op_id: str) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": ok or {"description": "OK", "content": _JSON_OBJ}, "400": _ERROR}
        if security:
            responses["401"] = _UNAUTH
        responses.update(extra or {})
        out: dict[str, Any] = {"summary": summary, "operationId": op_id, "security": security,
                               "responses": responses}
        if params:
            out["parameters"] = params
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return out

    profiles = [p.value for p in ProcessingProfile]
    return {
        "openapi": "3.0.3",
        "info": {"title": "cdcstream worker API", "version": "1",
                 "description": "Status, profiles, dead letters and search of a cdcstream worker. Totals are "
                                "cluster-wide whichever worker answers. See docs/api.md."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token of the api_token (admin), api_read_token (read) or "
                                                          "api_tokens settings; roles in docs/api.md."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "ProfileChange": {
                    "type": "object", "required": ["profile"], "additionalProperties": False,
                    "properties": {
                        "profile": {"type": "string", "enum": profiles},
                        "backfill": {"type": "boolean", "default": False,
                                     "description": "Bring existing rows into the new profile (incremental "
                                                    "snapshot)."},
                        "confirm": {"type": "boolean", "default": False,
                                    "description": "Needed for a backfill into `full`, after reading the "
                                                   "estimate a first call returns (409)."},
                        "drop_index": {"type": "boolean", "default": False,
                                       "description": "Into `archive`: also delete the row index."},
                    }},
                "Skip": {
                    "type": "object", "additionalProperties": False, "required": ["table", "reason"],
                    "properties": {"table": {"type": "string", "minLength": 1},
                                   "reason": {"type": "string", "minLength": 1, "maxLength": 500}}},
                "Replay": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "offsets": {"type": "array", "minItems": 1, "maxItems": 1000,
                                    "items": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
                        "all": {"type": "boolean"},
                    },
                    "description": "Exactly one of `offsets` (DLQ offsets) or `all: true`."},
            },
        },
        "paths": _secure({
            "/healthz": {"get": op("Liveness: the web server answers (no data; for health checks)", security=[],
                                   ok={"description": "ok", "content": _TEXT}, op_id="healthz")},
            "/login": {
                "get": op("The login form of the status and search pages", security=[],
                          ok={"description": "HTML form", "content": _HTML}, op_id="loginForm",
                          params=[{"name": "next", "in": "query", "description": "Where to go after: /status "
                                                                                "(default) or /search",
                                   "schema": {"type": "string"}}]),
                "post": {"summary": "Log in with a token: sets an HttpOnly session cookie (reads only)",
                         "operationId": "login", "security": [],
                         "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                             "schema": {"type": "object", "required": ["token"],
                                        "properties": {"token": {"type": "string", "maxLength": 4096},
                                                       "next": {"type": "string", "enum": ["/status", "/search"]}}}}}},
                         "responses": {"303": {"description": "Logged in: redirect to `next` (default /status)"},
                                       "400": {"description": "No token in the form", "content": _HTML},
                                       "401": {"description": "Wrong token: the form again", "content": _HTML}}}},
            "/logout": {"post": {"summary": "End the browser session", "operationId": "logout", "security": [],
                                 "responses": {"303": {"description": "Logged out: redirect to /login"}}}},
            "/status": {"get": op("The status page (HTML)", security=read_sec, op_id="statusPage",
                                  ok={"description": "HTML", "content": _HTML})},
            "/metrics": {"get": op("Prometheus text exposition", security=read_sec, op_id="metrics",
                                   ok={"description": "metrics", "content": _TEXT})},
            "/api/openapi.json": {"get": op("This document", security=read_sec, op_id="openapi")},
            "/api/connectors": {"get": op("Connectors: state, tasks, last error, replication slot lag",
                                          security=read_sec, op_id="listConnectors")},
            "/api/tables": {"get": op("Tables with profile, counters, lag and index sizes", security=read_sec,
                                      op_id="listTables")},
            "/api/tables/{table}": {"get": op("One table", security=read_sec, params=[table_param],
                                              extra={"404": _ERROR}, op_id="getTable")},
            "/api/tables/{table}/profile": {"put": op(
                "Change a table's processing profile (applied by every live worker before this returns)",
                security=bearer, params=[table_param], body={"$ref": "#/components/schemas/ProfileChange"},
                extra={"404": _ERROR, "409": {"description": "Backfill into full: confirmation needed; the body "
                                                             "carries the estimate", "content": _JSON_OBJ},
                       "504": {"description": "Not every live worker applied it in time", "content": _JSON_OBJ}},
                op_id="setProfile")},
            "/api/tables/{table}/reembed": {"post": op(
                "Re-embed a full table's chunks with this worker's configured embedding model and dimensions "
                "into the next chunk-index generation (in the background; searches answer from the current "
                "one until the swap). Answers the re-embed (also on /status, `migrations`)",
                security=bearer, params=[table_param],
                extra={"404": _ERROR, "409": {"description": "Nothing to change, or an index rebuild of the "
                                                             "chunks runs", "content": _JSON_OBJ},
                       "503": {"description": "No Elasticsearch or embeddings configured", "content": _JSON_OBJ}},
                op_id="reembedTable")},
            "/api/dlq": {"get": op("Dead-lettered records (oldest first), at most 4 MiB per answer: continue from "
                                   "`next_offset` when `truncated`", security=read_sec, op_id="listDlq", params=[
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                                             "default": 100}},
                {"name": "from_offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "values", "in": "query", "description": "Full record values instead of a preview "
                                                                  "(needs role admin)",
                 "schema": {"type": "boolean", "default": False}},
            ])},
            "/api/dlq/replay": {"post": op("Re-send dead-lettered records to their original topic and partition",
                                           security=bearer, body={"$ref": "#/components/schemas/Replay"},
                                           op_id="replayDlq")},
            "/api/dlq/skip": {"post": op("Move the event that blocks a table on this worker to the DLQ with a reason "
                                         "(the table's partition then resumes); 409 when the table is not blocked",
                                         security=bearer, body={"$ref": "#/components/schemas/Skip"},
                                         op_id="skipBlocked")},
            "/api/search": {"get": op(
                "Search the mirror: keyword, semantic (kNN over chunks) or hybrid (score-normalised blend, "
                "0.9 semantic). Filters: `filter=<column>:<value|>=v|<=v|>v|<v|lo..hi>` (repeatable), also "
                "`filter.<column>=value` and `range.<column>=lo..hi`; `total`, and `next` to pass as "
                "`search_after` for the next page (see docs/api.md)", security=read_sec,
                op_id="search", params=[
                    {"name": "q", "in": "query", "required": True,
                     "schema": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}},
                    {"name": "mode", "in": "query", "schema": {"type": "string", "enum": list(MODES),
                                                               "default": "keyword"}},
                    {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SIZE,
                                                               "default": 10}},
                    {"name": "table", "in": "query", "description": "Table id(s), comma-separated; default all.",
                     "schema": {"type": "string"}},
                    {"name": "filter", "in": "query", "style": "form", "explode": True,
                     "description": "A filter on a mirrored column: `status:paid`, `amount:>=10`, "
                                    "`created:2024-01-01..2024-02-01` (bounds inclusive, dates whole days); "
                                    "repeatable, all must hold",
                     "schema": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 300}}},
                    {"name": "search_after", "in": "query",
                     "description": "The `next` of the previous answer (an opaque cursor), for the next page",
                     "schema": {"type": "string", "maxLength": MAX_CURSOR_CHARS}},
                    {"name": "explain", "in": "query", "description": "Per hit, how its keyword and semantic "
                                                                      "scores combined",
                     "schema": {"type": "boolean", "default": False}},
                ],
                extra={"429": {"description": "Too many semantic/hybrid searches for this token; see Retry-After",
                               "content": _JSON_OBJ},
                       "502": {"description": "Elasticsearch or the embeddings API failed", "content": _JSON_OBJ}})},
            "/api/tables/{table}/rows/{id}": {"get": op(
                "One row's document in the mirror (where a search hit links to), with its source position",
                security=read_sec, op_id="getRow", params=[table_param, {
                    "name": "id", "in": "path", "required": True, "example": "1",
                    "description": "The document id (a search hit's `id`: the primary key)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 1000}}],
                extra={"404": _ERROR, "502": {"description": "Elasticsearch failed", "content": _JSON_OBJ}})},
            "/search": {"get": {
                "summary": "The search page (HTML): keyword / semantic / hybrid, table and column filters",
                "operationId": "searchPage", "security": read_sec,
                "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                               for n in ("q", "mode", "table", "filters", "size", "search_after", "explain")],
                "responses": {"200": {"description": "HTML", "content": _HTML},
                              "400": {"description": "The page with the search's error", "content": _HTML},
                              "429": {"description": "Too many semantic/hybrid searches: the page with the error",
                                      "content": _HTML},
                              "502": {"description": "Elasticsearch or the embeddings API failed: the page with "
                                                     "the error", "content": _HTML},
                              "503": {"description": "No Elasticsearch configured: the page with the error",
                                      "content": _HTML}}}},
            "/api/workers": {"get": op("Live workers and the profile version each applied", security=read_sec,
                                       op_id="listWorkers")},
        }, reads_open),
    }


def _secure(paths: dict[str, dict[str, Any]], reads_open: bool) -> dict[str, dict[str, Any]]:
    """Each operation's ``security`` and ``x-roles`` from ROUTES; refuses a route without its
    operation here, or an operation ROUTES does not know."""
    declared = {(p, m.lower()) for p, ms in ROUTES.items() for m in ms}
    documented = {(p, m) for p, ops in paths.items() for m in ops}
    if declared != documented:
        raise AssertionError(f"OpenAPI document and auth.ROUTES disagree: only in ROUTES "
                             f"{sorted(declared - documented)}, only here {sorted(documented - declared)}")
    for path, ops in paths.items():
        for method, o in ops.items():
            need = ROUTES[path][method.upper()]
            needs_token = need is Access.ADMIN or (need is not Access.PUBLIC and not reads_open)
            o["security"] = [{"bearer": []}] if needs_token else []
            o["x-roles"] = list(ROLES[need])
            o["x-access"] = need.name.lower()
            if needs_token:
                o["responses"].setdefault("401", _UNAUTH)
            if need is not Access.PUBLIC:
                o["responses"].setdefault("403", _FORBIDDEN)
            if method == "get" and path == "/api/dlq":
                o["responses"].setdefault("401", _UNAUTH)  # values=true needs an admin token
    return paths
