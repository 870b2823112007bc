"""Shared fixtures. Integration and e2e tests use the real stack started by `cdcstream stack up`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def stack_status() -> dict[str, dict[str, Any]]:
    from cdcstream.stack.manager import Stack

    return {s.name: s.as_dict() for s in Stack().status()}


@pytest.fixture(scope="session")
def require(stack_status: dict[str, dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """``require("kafka")`` returns the service's status facts, failing (never skipping) when it is down."""

    def _require(name: str) -> dict[str, Any]:
        svc = stack_status.get(name)
        if svc is None:
            pytest.fail(f"the stack has no service {name!r}; known: {', '.join(stack_status)}")
        if svc["state"] != "running":
            pytest.fail(f"{name} is {svc['state']}: run `cdcstream stack up` first (make test does)")
        return svc

    return _require


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full-size", action="store_true", default=False,
                     help="Run fault tests at full size (50k changes, five rounds); CI runs the smoke size.")


@pytest.fixture(scope="session")
def full_size(request: pytest.FixtureRequest) -> bool:
    """True with ``--full-size`` or ``CDCSTREAM_FULL_SIZE=1``."""
    import os

    return bool(request.config.getoption("--full-size")) or os.environ.get("CDCSTREAM_FULL_SIZE") == "1"
