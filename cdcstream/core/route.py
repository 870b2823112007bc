"""Route each decoded event: which table config and profile, is it stale, fill TOAST gaps.

Per-row state lives in a Faust table keyed by ``row_key``; this module only reads and
computes it (``RowState``), the agent writes it while the event is current.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from cdcstream.core.config import Config, ConnectorSpec, ConnectorTableConfig, ProcessingProfile
from cdcstream.core.events import ChangeEvent, TableId, plain

# PostgreSQL moves values out of line once a row passes ~2 kB (TOAST_TUPLE_THRESHOLD);
# only such values can come back as the unavailable placeholder, so only they are kept.
TOAST_MIN_BYTES = 1800
DELETE_MARKER_RETENTION_MS = 7 * 24 * 3600 * 1000


def row_key(table: TableId, doc_id: str) -> str:
    return f"{table.key}|{doc_id}"


@dataclass
class RowState:
    version: int = -1
    deleted: bool = False
    deleted_at_ms: int = 0
    chunks: dict[str, list[str]] = field(default_factory=dict)  # text column -> chunk hashes in order
    toast: dict[str, Any] = field(default_factory=dict)  # last values of TOAST-able columns

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.version}
        if self.deleted:
            out["d"] = self.deleted_at_ms
        if self.chunks:
            out["c"] = self.chunks
        if self.toast:
            out["x"] = self.toast
        return out

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> RowState | None:
        if raw is None:
            return None
        toast = {k: v for k, v in dict(raw.get("x", {})).items() if not _bytes_repr(v)}
        return cls(int(raw["v"]), "d" in raw, int(raw.get("d", 0)), dict(raw.get("c", {})), toast)

    def expired_marker(self, now_ms: int, retention_ms: int = DELETE_MARKER_RETENTION_MS) -> bool:
        return self.deleted and now_ms - self.deleted_at_ms > retention_ms


def _bytes_repr(v: Any) -> bool:
    # Row state written before bytes were kept as base64 holds Python's b'...' text: not a value
    # to write (the binary field refuses it). Dropped, the mirror fills the column instead.
    return isinstance(v, str) and len(v) > 2 and v[0] == "b" and v[1] in "'\"" and v[-1] == v[1]


@dataclass(frozen=True)
class Route:
    connector: ConnectorSpec
    table: ConnectorTableConfig
    table_id: TableId

    @property
    def alias(self) -> str:
        return self.connector.index_alias(self.table)

    @property
    def chunks_alias(self) -> str:
        return f"{self.alias}-chunks"

    @property
    def index_settings(self) -> dict[str, Any]:
        """Elasticsearch settings of the table's indices (row and chunks), from the config."""
        return self.table.index_settings.es()


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.by_key: dict[str, Route] = {}
        for c, t in config.tables():
            tid = c.table_id(t)
            self.by_key[tid.key] = Route(c, t, tid)
        self.topics = config.topic_map()

    def route(self, table: TableId) -> Route | None:
        return self.by_key.get(table.key)

    def index_settings(self, alias: str) -> dict[str, Any] | None:
        """The settings of the table whose row or chunks index ``alias`` is (None: not a table's)."""
        for r in self.by_key.values():
            if alias in (r.alias, r.chunks_alias):
                return r.index_settings
        return None

    def default_profile(self, table: TableId) -> ProcessingProfile:
        r = self.by_key.get(table.key)
        return r.table.profile if r else ProcessingProfile.INDEX_ONLY


def is_stale(ev: ChangeEvent, state: RowState | None, now_ms: int | None = None) -> bool:
    """True when ``ev`` is not newer than what was applied (replays, reordering)."""
    if state is None:
        return False
    if state.deleted and state.expired_marker(now_ms if now_ms is not None else int(time.time() * 1000)):
        return False
    return ev.position.version <= state.version


def keep_toast(row: dict[str, Any]) -> dict[str, Any]:
    """The row's TOAST-able values, in their JSON form (``plain``): the row state is stored as
    JSON, so bytes are kept as base64 (as documents hold them), never as Python's ``b'...'``.

    Text, bytea, json/jsonb, arrays and hstore can come back as the placeholder; a value is kept
    when its JSON form has at least ``TOAST_MIN_BYTES`` characters.
    """
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, str):
            if len(v) >= TOAST_MIN_BYTES:
                out[k] = v
        elif isinstance(v, (bytes, bytearray)):
            if len(v) * 4 // 3 >= TOAST_MIN_BYTES:
                out[k] = plain(v)
        elif isinstance(v, (dict, list)):
            if _json_len_bound(v, TOAST_MIN_BYTES) < TOAST_MIN_BYTES:
                continue  # small for sure: not converted and dumped just to measure it
            p = plain(v)
            if len(json.dumps(p, separators=(",", ":"))) >= TOAST_MIN_BYTES:
                out[k] = p
    return out


def _json_len_bound(v: Any, limit: int) -> int:
    """An upper bound of ``len(json.dumps(plain(v), separators=(",", ":")))`` (ASCII-escaped),
    cheap for small JSON values; counting stops once it reaches ``limit``. Types without a
    cheap bound answer ``limit`` (measure them)."""
    if v is None or isinstance(v, bool):
        return 5
    if isinstance(v, str):
        return 2 + 12 * len(v)  # "\ud83d\ude00" for one astral character
    if isinstance(v, int):
        return 2 + len(str(v))
    if isinstance(v, float):
        return 26
    n = 2
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                return limit
            n += 2 + _json_len_bound(k, limit) + _json_len_bound(x, limit)
            if n >= limit:
                return n
        return n
    if isinstance(v, list):
        for x in v:
            n += 1 + _json_len_bound(x, limit)
            if n >= limit:
                return n
        return n
    return limit
