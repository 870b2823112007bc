"""Regressions found under load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_regression_take_buffer_current_event_none(tmp_path: Path, require: Callable[[str], dict[str, Any]]) -> None:
    """Bug: the agent reset the stream's current event to None after its table writes; the
    take_events drainer, resuming after an await, found None and crashed the worker
    ("Take buffer found current_event is None") once events arrived while a batch was busy."""
    for svc in ("kafka", "connect"):
        require(svc)
    # It takes events trickling in while a batch is busy (a time-flushed batch waiting on the
    # embeddings server): single-row transactions into a full-profile table.
    tables = [{"name": "public.articles", "profile": "full", "text_columns": ["body"]}]
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), tables) as p:
        p.sql("INSERT INTO articles VALUES (0, 't', 'seed', 'x')")
        p.apply()
        p.start_worker()
        p.wait("seed row", lambda: "0" in p.docs("articles"))
        for i in range(1, 121):
            p.sql("INSERT INTO articles VALUES (%s, 't', %s, 'x')",
                  (i, f"Row {i} of run {p.tag}: " + " ".join(f"w{i}x{j}" for j in range(60))))
        p.wait("all rows", lambda: p.es("POST", f"/{p.alias('articles')}/_count")["count"] == 121, timeout=240,
               retry_on=(*CONNECTION_ERRORS, KeyError))
