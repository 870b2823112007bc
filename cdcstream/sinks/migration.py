"""Mapping migrations: which column type changes need a new index generation, and how a
document of the old generation becomes one of the new.

Elasticsearch cannot change a field's type in place (``put_mapping`` answers "mapper [qty]
cannot be changed from type [long] to [text]", and documents of the new type are refused
with "failed to parse field"). ``EsMirror`` then builds the next generation of the alias with
the new mapping, copies the current one into it converting the changed fields with
:func:`convert_document`, and swaps the alias (``cdcstream/sinks/elasticsearch.py``).

Everything here is pure: the decision and the conversion are unit-tested without a cluster.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

#: Mapping parameters Elasticsearch refuses to update on an existing field, with the value a
#: field has when they are absent. ``None``: compared only when both mappings name it (the
#: cluster fills some in itself, e.g. a dense vector's similarity).
_FIXED: dict[str, Any] = {"type": "object", "enabled": True, "index": True, "element_type": "float",
                          "format": None, "dims": None, "similarity": None}


def _fixed_differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for param, default in _FIXED.items():
        if default is None and (param not in current or param not in wanted):
            continue
        if current.get(param, default) != wanted.get(param, default):
            return True
    return False


def incompatible_fields(current: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """The fields of ``wanted`` (mapping properties) the index with ``current`` cannot take
    in place, as dotted paths. New fields are compatible (``put_mapping`` adds them); so is a
    change Elasticsearch merges, e.g. INT -> BIGINT (both ``long``) or another ``ignore_above``."""
    out: list[str] = []
    for name, want in wanted.items():
        cur = current.get(name)
        if cur is None:
            continue
        path = f"{prefix}{name}"
        if _fixed_differs(cur, want):
            out.append(path)
            continue
        for sub in ("properties", "fields"):
            if sub in cur and sub in want:
                out += incompatible_fields(cur[sub], want[sub], f"{path}.")
    return out


class Unconvertible(ValueError):
    """A stored value has no form of the new type (e.g. the text "a dozen" for a ``long``)."""


_TRUE = {"t", "true", "y", "yes", "on", "1"}
#: How the worker writes a float's NaN and infinities (JSON has no such numbers).
NON_FINITE = ("NaN", "Infinity", "-Infinity")
_FALSE = {"f", "false", "n", "no", "off", "0"}


def _as_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"  # PostgreSQL's boolean::text
    if isinstance(v, dict | list):
        return json.dumps(v)  # jsonb's text form separates with ", " and ": " too
    return str(v)


def _as_integer(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation as e:
        raise Unconvertible(f"not an integer: {type(v).__name__}") from e
    if not d.is_finite() or d != d.to_integral_value():
        raise Unconvertible("not an integer")
    return int(d)


def _as_double(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise Unconvertible(f"not a number: {type(v).__name__}") from e
    if f != f or f in (float("inf"), float("-inf")):
        raise Unconvertible("Elasticsearch's double holds no NaN or infinity")
    return f


def _as_boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE or s in _FALSE:
        return s in _TRUE
    raise Unconvertible("not a boolean")


def _as_object(v: Any, mapping: dict[str, Any]) -> Any:
    props = mapping.get("properties")
    if props is None:
        # A field kept in _source only (JSON, arrays): any JSON value; text is parsed
        # (TEXT -> JSONB: the source accepted the text as JSON).
        if not isinstance(v, str):
            return v
        try:
            return json.loads(v)
        except ValueError as e:
            raise Unconvertible("not JSON") from e
    if not isinstance(v, dict):
        raise Unconvertible(f"not an object: {type(v).__name__}")
    if {"x", "y"} <= set(props) and {"lat", "lon"} <= set(v):
        # A point indexed by an older version as geo_point (lat = y): planar x/y now.
        return {"x": v["lon"], "y": v["lat"]}
    return {k: convert_value(val, props[k]) if k in props else val for k, val in v.items()}


def convert_value(v: Any, mapping: dict[str, Any]) -> Any:
    """``v`` as a value of the field ``mapping`` (the form the worker writes for that type)."""
    if v is None:
        return None
    typ = mapping.get("type", "object")
    if typ in ("text", "keyword", "wildcard", "match_only_text"):
        return _as_text(v)
    if typ in ("long", "integer", "short", "byte", "unsigned_long"):
        return _as_integer(v)
    if typ in ("double", "float", "half_float"):
        if mapping.get("ignore_malformed") and v in NON_FINITE:
            return v  # as the worker writes it: kept in _source, not indexed
        return _as_double(v)
    if typ == "boolean":
        return _as_boolean(v)
    if typ == "object":
        return _as_object(v, mapping)
    if typ == "geo_point" and isinstance(v, dict) and {"x", "y"} <= set(v):
        return {"lat": v["y"], "lon": v["x"]}
    return v  # date, binary, vectors: their stored form is the written form


def convert_document(doc: dict[str, Any], properties: dict[str, Any],
                     fields: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``doc`` with its ``fields`` (top-level names) converted to ``properties``; a value that
    has no form of the new type is left out of the copy (named in the second item): the
    document is kept, and the row's next change writes the source's value."""
    out = dict(doc)
    dropped: list[str] = []
    for name in fields:
        if name in out and name in properties:
            try:
                out[name] = convert_value(out[name], properties[name])
            except (Unconvertible, TypeError, ValueError):
                del out[name]
                dropped.append(name)
    return out, dropped


@dataclass
class Migration:
    """One rebuild of an alias: ``source`` (behind the alias, serving searches) is copied into
    ``target`` (taking every new write) until the alias is swapped. Shown on ``/status``."""

    alias: str
    source: str
    target: str
    properties: dict[str, Any]
    changed: list[str]
    schema_version: int = 0
    total: int = 0
    copied: int = 0
    dropped_values: int = 0
    refused: int = 0
    attempts: int = 0
    error: str | None = None
    resumed: bool = False
    started: float = field(default_factory=time.monotonic)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def top_fields(self) -> set[str]:
        return {p.split(".", 1)[0] for p in self.changed}

    def view(self) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.started)
        return {"index": self.alias, "from": self.source, "to": self.target, "changed": self.changed,
                "copied": self.copied, "total": self.total,
                "progress": round(min(1.0, self.copied / self.total), 4) if self.total else None,
                "docs_per_s": round(self.copied / elapsed, 1), "started_ms": self.started_ms,
                "dropped_values": self.dropped_values, "refused": self.refused, "resumed": self.resumed,
                "attempts": self.attempts, "error": self.error}
