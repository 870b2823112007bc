"""Which column type changes need a new index generation, and how stored values convert."""

from __future__ import annotations

from typing import Any

import pytest

from cdcstream.sinks.documents import POINT, field_mapping, row_mapping
from cdcstream.sinks.migration import Unconvertible, convert_document, convert_value, incompatible_fields

INT = {"type": "int32"}
BIGINT = {"type": "int64"}
TEXT = {"type": "string"}
JSONB = {"type": "string", "name": "io.debezium.data.Json"}
NUMERIC = {"type": "string", "name": "io.debezium.data.VariableScaleDecimal"}
# Connect's JSON schema names (the fixtures' real events say "double"; never float32/float64).
FLOAT4 = {"type": "float"}
FLOAT8 = {"type": "double"}


def _props(**cols: dict[str, Any]) -> dict[str, Any]:
    return dict(row_mapping({"fields": [{"field": k, **v} for k, v in cols.items()]})["properties"])


@pytest.mark.parametrize(("before", "after"), [
    (INT, TEXT), (TEXT, JSONB), (TEXT, NUMERIC), (INT, FLOAT8), (JSONB, TEXT), (TEXT, INT),
    ({"type": "boolean"}, INT), ({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, TEXT),
])
def test_a_type_change_elasticsearch_cannot_merge_needs_a_rebuild(before: dict[str, Any],
                                                                   after: dict[str, Any]) -> None:
    assert incompatible_fields(_props(id=INT, c=before), _props(id=INT, c=after)) == ["c"]


@pytest.mark.parametrize(("before", "after"), [(INT, BIGINT), (FLOAT4, FLOAT8), (TEXT, TEXT), (NUMERIC, NUMERIC)])
def test_widening_within_one_field_type_does_not(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert incompatible_fields(_props(c=before), _props(c=after)) == []


def test_a_new_column_is_added_in_place() -> None:
    assert incompatible_fields(_props(id=INT), _props(id=INT, qty=TEXT)) == []


def test_a_text_sub_field_that_changes_type_is_found_by_its_path() -> None:
    current = {"row": {"properties": _props(qty=INT, note=TEXT)}}
    wanted = {"row": {"properties": _props(qty=TEXT, note=TEXT)}}
    assert incompatible_fields(current, wanted) == ["row.qty"]  # a full table's chunks index


def test_parameters_the_cluster_fills_in_are_not_a_change() -> None:
    # Elasticsearch answers a dense vector's mapping with its similarity and index options.
    current = {"embedding": {"type": "dense_vector", "dims": 4, "index": True, "similarity": "cosine",
                             "index_options": {"type": "int8_hnsw"}}}
    assert incompatible_fields(current, {"embedding": {"type": "dense_vector", "dims": 4}}) == []
    assert incompatible_fields(current, {"embedding": {"type": "dense_vector", "dims": 8}}) == ["embedding"]


def test_older_mappings_of_points_and_never_indexed_floats_are_rebuilt() -> None:
    point = field_mapping({"type": "struct", "name": POINT})
    assert incompatible_fields({"p": {"type": "geo_point"}}, {"p": point}) == ["p"]
    assert incompatible_fields({"f": {"type": "double", "index": False}}, {"f": {"type": "double"}}) == ["f"]


@pytest.mark.parametrize(("value", "after", "expected"), [
    (12, TEXT, "12"), (1.5, TEXT, "1.5"), (True, TEXT, "true"), ({"a": [1, 2]}, TEXT, '{"a": [1, 2]}'),
    ('{"a": 1}', JSONB, {"a": 1}), ("[1, 2]", JSONB, [1, 2]), ("12.50", NUMERIC, "12.50"), (7, NUMERIC, "7"),
    ("42", INT, 42), ("42.0", INT, 42), ("2.5", FLOAT8, 2.5), ("t", {"type": "boolean"}, True), (None, INT, None),
    # As the worker writes a float's NaN/infinities: kept as text (ignore_malformed), not dropped.
    ("NaN", FLOAT8, "NaN"), ("-Infinity", FLOAT4, "-Infinity"),
])
def test_a_stored_value_converts_to_the_new_type(value: Any, after: dict[str, Any], expected: Any) -> None:
    assert convert_value(value, field_mapping(after)) == expected


@pytest.mark.parametrize(("value", "after"), [("a dozen", INT), ("1.5", INT), ("a dozen", FLOAT8), ("{nope", JSONB),
                                              ("maybe", {"type": "boolean"})])
def test_a_value_without_a_form_of_the_new_type_is_unconvertible(value: Any, after: dict[str, Any]) -> None:
    with pytest.raises(Unconvertible):
        convert_value(value, field_mapping(after))


def test_a_geo_point_stored_by_an_older_version_becomes_planar() -> None:
    point = field_mapping({"type": "struct", "name": POINT})
    assert convert_value({"lat": 120.0, "lon": 3.0}, point) == {"x": 3.0, "y": 120.0}


def test_only_the_changed_fields_convert_and_an_unconvertible_one_is_left_out() -> None:
    props = _props(id=INT, qty=INT, note=TEXT)
    doc = {"id": 1, "qty": "a dozen", "note": 5, "_cdc": {"version": 9}}
    out, dropped = convert_document(doc, props, {"qty"})
    assert out == {"id": 1, "note": 5, "_cdc": {"version": 9}} and dropped == ["qty"]
    assert doc["qty"] == "a dozen"  # the scrolled page is not modified
    out, _ = convert_document({"row": {"qty": 3, "note": "x"}}, {"row": {"properties": _props(qty=TEXT)}}, {"row"})
    assert out == {"row": {"qty": "3", "note": "x"}}
