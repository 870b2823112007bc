"""orjson on the hot path (issue 19) writes and reads the same JSON as the json module did."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from cdcstream.core import fastjson
from cdcstream.core.events import KafkaOrigin
from cdcstream.pipeline import decode as d
from cdcstream.sinks.elasticsearch import BULK_FILTER, FastJsonSerializer, FastNdjsonSerializer
from tests.fixturedata import record

VALUES: list[Any] = [
    {"a": 1, "b": [1.5, None, True, "é", "\U0001f600"], "c": {"d": -(2**63)}},
    {"big": 2**70, "lone": "\ud800"},  # orjson refuses both: the json module writes them as before
    {"when": dt.datetime(2020, 1, 2, 3, 4, 5, 6), "day": dt.date(2020, 1, 2), "n": Decimal("1.25"),
     "u": uuid.UUID(int=7)},
]


@pytest.mark.parametrize("value", VALUES)
def test_same_bytes_as_the_clients_serializers(value: Any) -> None:
    assert FastJsonSerializer().dumps(value) == JsonSerializer().dumps(value)
    lines = [{"index": {"_id": "1"}}, value]
    assert FastNdjsonSerializer().dumps(lines) == NdjsonSerializer().dumps(lines)


@pytest.mark.parametrize("body", [b'{"a":[1,2.5,null,"\\u00e9"]}', b'{"x":NaN}', b'{"n":123456789012345678901234}',
                                  b'[12345678901234567890]', b'[1234567890123456789]', b'[18446744073709551616]',
                                  b'{"a":"x00000000000000000000"}', b'[-99999999999999999999.5]', b""])
def test_same_values_read(body: bytes) -> None:
    assert repr(FastJsonSerializer().loads(body)) == repr(JsonSerializer().loads(body))
    if body:
        assert repr(fastjson.loads(body)) == repr(json.loads(body))


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        fastjson.loads(b'{"a":')


def test_bulk_answer_keeps_what_apply_reads() -> None:
    assert set(BULK_FILTER.split(",")) == {"errors", "items.*.status", "items.*.error.type", "items.*.error.reason"}


def test_payloads_orjson_refuses_decode_as_before() -> None:
    r = record("postgres", "02_insert_customer_00")
    value = json.dumps(r["value"], separators=(",", ":")).encode()
    key = json.dumps(r["key"], separators=(",", ":")).encode()
    origin = KafkaOrigin(r["topic"], 0, 0)
    d.decode(key, value, origin=origin)  # caches the schema
    at = d._split_at(value)
    # A NaN literal in the payload: orjson refuses it, the json module reads it, as before.
    odd = value.replace(b'"op":"c"', b'"op":"c","extra":NaN')
    assert odd != value and d._split_at(odd) == at
    assert d.decode(key, odd, origin=origin) == d.decode(key, value, origin=origin)
