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
