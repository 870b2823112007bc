"""`cdcstream verify`'s comparison rules: the same value in the source driver's form and in
the mirror's form compares equal; a real difference never does."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from cdcstream.core.config import Config
from cdcstream.ops.verify import ArchiveReplay, VerifyError, canonical, find_route, row_digest


@pytest.mark.parametrize(("kind", "source", "mirror"), [
    ("decimal", Decimal("19.90"), "19.9"),
    ("decimal", Decimal("12345678901234567890123456789012345.123456789012345678901234567891"),
     "12345678901234567890123456789012345.123456789012345678901234567891"),
    ("ts", dt.datetime(2024, 1, 2, 3, 4, 5, 123456), "2024-01-02T03:04:05.123456"),
    ("tstz", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2024-01-02T03:04:05Z"),
    ("tstz", dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T04:04:05+01:00"),  # MariaDB TIMESTAMP, session UTC
    ("date", dt.date(2024, 2, 29), "2024-02-29"),
    ("time", dt.timedelta(hours=25, minutes=1), "01:01:00"),  # MariaDB TIME as a duration
    ("bytes", b"\x00\xff", "AP8="),
    ("json", {"b": 1, "a": [1, 2]}, '{"a": [1, 2], "b": 1}'),
    ("float4", 0.1, 0.10000000149011612),  # REAL travels as float32
    ("interval", dt.timedelta(days=1, microseconds=5), 86_400_000_005),
    ("text", uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
    ("int", 7, 7),
])
def test_same_value_in_both_forms_compares_equal(kind: str, source: object, mirror: object) -> None:
    assert canonical(kind, source) == canonical(kind, mirror)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "source", "mirror"), [
    ("decimal", Decimal("19.90"), "19.91"),
    ("ts", dt.datetime(2024, 1, 2, 3, 4, 5, 123456), "2024-01-02T03:04:05.123457"),
    ("text", "abc", "abd"),
    ("decimal", Decimal("1"), "not a number"),
])
def test_a_real_difference_never_compares_equal(kind: str, source: object, mirror: object) -> None:
    assert canonical(kind, source) != canonical(kind, mirror)  # type: ignore[arg-type]


def test_row_digest_sees_an_absent_column() -> None:
    cols = [("id", "int"), ("note", "text")]
    assert row_digest(cols, {"id": 1, "note": None}) != row_digest(cols, {"id": 1})  # type: ignore[arg-type]


def test_archive_replay_keeps_the_latest_change_and_finds_duplicates(tmp_path: Path) -> None:
    def rec(key: int, op: str, version: int, after: dict[str, object] | None) -> bytes:
        return json.dumps({"key": {"id": key}, "op": op, "after": after,
                           "position": {"version": version, "text": f"lsn:{version}"}}).encode()

    class Store:
        async def list(self, prefix: str = "") -> list[str]:
            return ["a", "b"]

        async def get(self, name: str) -> bytes:
            lines = {"a": [rec(1, "c", 10, {"id": 1, "v": "x"}), rec(2, "c", 11, {"id": 2})],
                     "b": [rec(1, "u", 12, {"id": 1, "v": "y"}), rec(2, "d", 13, None),
                           rec(2, "c", 11, {"id": 2})]}[name]
            return gzip.compress(b"\n".join(lines))

    r = ArchiveReplay(Store(), "x/")
    assert r.rows == {"1": {"id": 1, "v": "y"}}
    assert r.events == 5
    assert r.duplicates == ["2@lsn:11"]


def test_unknown_or_ambiguous_table_is_named() -> None:
    conn = {"kind": "postgres", "host": "h", "database": "d", "user": "u", "password": "env:X"}
    cfg = Config.model_validate({"connectors": [
        {"name": "a", "connection": conn, "tables": [{"name": "public.t"}]},
        {"name": "b", "topic_prefix": "b", "connection": conn, "tables": [{"name": "public.t"}]}]})
    with pytest.raises(VerifyError, match="not in the config"):
        find_route(cfg, "public.nope")
    with pytest.raises(VerifyError, match="several connectors"):
        find_route(cfg, "public.t")
    assert find_route(cfg, "b/public.t").connector.name == "b"
