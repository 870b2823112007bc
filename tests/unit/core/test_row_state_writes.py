"""Which row states an index_only table writes (issue 19): only what the mirror cannot answer."""

from __future__ import annotations

from cdcstream.core.route import RowState, worth_writing

BIG = "x" * 2000


def test_plain_changes_write_nothing() -> None:
    assert not worth_writing(None, RowState(version=5))
    assert not worth_writing(RowState(version=5), RowState(version=6))
    assert not worth_writing(RowState(version=5, toast={"t": BIG}), RowState(version=6, toast={"t": BIG}))


def test_delete_markers_and_their_replacement_are_written() -> None:
    assert worth_writing(RowState(version=5), RowState(version=6, deleted=True, deleted_at_ms=1))
    assert worth_writing(None, RowState(version=6, deleted=True, deleted_at_ms=1))
    assert worth_writing(RowState(version=6, deleted=True, deleted_at_ms=1), RowState(version=7))


def test_toast_values_are_written_when_they_change() -> None:
    assert worth_writing(None, RowState(version=1, toast={"t": BIG}))
    assert worth_writing(RowState(version=1, toast={"t": BIG}), RowState(version=2, toast={"t": BIG + "y"}))
    assert worth_writing(RowState(version=1, toast={"t": BIG}), RowState(version=2))  # shrank below the threshold


def test_a_chunk_list_left_by_the_full_profile_is_replaced() -> None:
    assert worth_writing(RowState(version=1, chunks={"body": ["h"]}), RowState(version=2))


def test_toast_size_bound_never_underestimates() -> None:
    import json
    from decimal import Decimal

    from cdcstream.core.events import plain
    from cdcstream.core.route import TOAST_MIN_BYTES, _json_len_bound, keep_toast

    values = [{"gift": True, "tags": ["a", "b"]}, {"n": None, "x": 1.5e300, "i": -(10**30)}, ["\U0001f600" * 150],
              {"k": "é" * 300}, [float("nan"), float("-inf")], {"d": Decimal("1.5")}, [[[]]], {"a": {"b": [1, 2]}}]
    for v in values:
        assert _json_len_bound(v, 10**9) >= len(json.dumps(plain(v), separators=(",", ":")))
    assert keep_toast({"j": ["\U0001f600" * 150]}) == {"j": ["\U0001f600" * 150]}  # 1,802 escaped characters
    assert keep_toast({"j": {"gift": True}}) == {}
    assert TOAST_MIN_BYTES == 1800
