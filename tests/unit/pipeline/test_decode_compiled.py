"""Decode once per schema (issue 19): compiled converters give exactly what ``convert`` gives,
and a record decoded through the schema cache equals the same record decoded in full."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cdcstream.core.events import KafkaOrigin
from cdcstream.pipeline import decode as d
from tests.fixturedata import all_names, record

CASES = [(s, n) for s in ("postgres", "mariadb") for n in all_names(s)]


def _compact(doc: Any) -> bytes | None:
    # As the JsonConverter writes it (compact): the form the schema cache recognises.
    return None if doc is None else json.dumps(doc, separators=(",", ":")).encode()


def _spaced(doc: Any) -> bytes | None:
    return None if doc is None else json.dumps(doc).encode()  # never cached: the full path


def _decode(source: str, name: str, dump: Any) -> Any:
    r = record(source, name)
    try:
        return d.decode(dump(r["key"]), dump(r["value"]), origin=KafkaOrigin(r["topic"], 0, 0))
    except d.DecodeError as e:
        return ("DecodeError", str(e))


@pytest.mark.parametrize(("source", "name"), CASES)
def test_cached_decode_equals_full_decode(source: str, name: str) -> None:
    full = _decode(source, name, _spaced)
    assert _decode(source, name, _compact) == full  # first: parsed in full, schema cached
    assert _decode(source, name, _compact) == full  # second: from the cache


@pytest.mark.parametrize(("source", "name"), CASES)
def test_compiled_converters_equal_convert(source: str, name: str) -> None:
    value = record(source, name)["value"]
    if not value or not value.get("payload"):
        return
    schema = value["schema"]
    for part in ("before", "after"):
        raw = value["payload"].get(part)
        fs = next((f for f in schema.get("fields", ()) if f["field"] == part), None)
        if raw is None or fs is None:
            continue
        raw = {k: v for k, v in raw.items() if not d.is_unavailable(v)}
        assert d.compile_struct(fs)(raw) == d.convert_struct(raw, fs)


@pytest.mark.parametrize(("schema", "values"), [
    ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
     ["AQ==", None, "/w==", 12, 1.5]),
    ({"type": "string", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "x"}},
     ["1.25", None]),
    ({"type": "array", "items": {"type": "bytes"}}, [["AQ==", None], None, []]),
    ({"type": "map", "keys": {"type": "string"}, "values": {"type": "double"}}, [{"a": "-Infinity", "b": 1.0}, None]),
    ({"type": "double"}, ["Infinity", 2.5, None]),
    ({"type": "array", "items": {"type": "int32"}}, [[1, 2], None]),
])
def test_compiled_field_converters(schema: dict[str, Any], values: list[Any]) -> None:
    conv = d.compile_schema(schema)
    for v in values:
        assert (v if conv is None else conv(v)) == d.convert(v, schema)


def test_a_split_inside_the_schema_is_never_trusted() -> None:
    # A schema whose text contains the separator (a key named "payload" in a nested object):
    # the record takes the full path every time.
    r = record("postgres", "02_insert_customer_00")
    value = r["value"]
    value["schema"]["parameters"] = {"a": "1", "payload": {"op": "d"}}
    raw = _compact(value)
    assert raw is not None and d._split_at(raw) < raw.find(b'},"payload":{')
    first = d.decode(_compact(r["key"]), raw)
    again = d.decode(_compact(r["key"]), raw)
    assert first == again and first is not None and first.op.value == "c"
    assert raw[:d._split_at(raw)] not in d._ENVELOPES
