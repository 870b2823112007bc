"""The benchmarks at smoke size, so they keep working (full size: `python -m bench <scenario> --size full`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench import embedding_cost

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_embedding_cost_smoke(require: Callable[[str], dict[str, Any]]) -> None:
    for svc in ("postgres", "kafka", "connect", "elasticsearch", "embeddings"):
        require(svc)
    r = embedding_cost.run("smoke")
    assert r["change_events"] >= r["rows"] * (r["update_rounds"] + 1)
    # Never pay twice: the pipeline sends far less than re-embedding every change would.
    assert 0 < r["pipeline_tokens_cl100k"] < r["baseline_tokens_cl100k"]
    assert r["pipeline_tokens_cl100k"] + r["pipeline_tokens_saved_cl100k"] == pytest.approx(
        r["baseline_tokens_cl100k"], rel=0.05)
