"""Real Debezium 3.6 records captured from PostgreSQL 15 and MariaDB 10.11 (see tests/fixtures/*/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def record(source: str, name: str, mode: str = "schemas_enabled") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"debezium-{source}" / mode / f"{name}.json").read_text())
    return data


def raw(source: str, name: str, mode: str = "schemas_enabled") -> tuple[bytes | None, bytes | None, str]:
    """(key bytes, value bytes, topic) exactly as the JsonConverter would have written them."""
    r = record(source, name, mode)
    key = None if r["key"] is None else json.dumps(r["key"]).encode()
    value = None if r["value"] is None else json.dumps(r["value"]).encode()
    return key, value, r["topic"]


def all_names(source: str, mode: str = "schemas_enabled") -> list[str]:
    return sorted(p.stem for p in (FIXTURES / f"debezium-{source}" / mode).glob("*.json"))
