"""An index rebuild in progress, as /status and /metrics show it."""

from __future__ import annotations

import time
from typing import Any

from cdcstream.sinks.migration import Migration
from cdcstream.web import metrics, pages


def _snapshot(migration: dict[str, Any]) -> dict[str, Any]:
    return {"worker": "w1", "ts": time.time(), "tables": [], "connectors": [], "workers": {}, "series": [],
            "lag_error": None, "in_flight": {}, "blocked": [], "migrations": [migration]}


def _rebuild() -> dict[str, Any]:
    mig = Migration("shop-public-orders", "shop-public-orders-000001", "shop-public-orders-000002", {}, ["qty"])
    mig.total, mig.copied = 2000, 500
    return mig.view()


def test_status_names_the_rebuild_and_its_progress() -> None:
    html = pages.render_status(_snapshot(_rebuild()))
    assert 'id="migration"' in html and "shop-public-orders-000001 → shop-public-orders-000002" in html
    assert "500 / 2,000 documents copied" in html or "500 / 2000 documents copied" in html


def test_metrics_carry_copied_and_total_per_index() -> None:
    text = metrics.render(_snapshot(_rebuild()))
    assert 'cdcstream_migration_copied_docs{index="shop-public-orders"} 500' in text
    assert 'cdcstream_migration_total_docs{index="shop-public-orders"} 2000' in text


def test_a_view_reports_progress_and_rate() -> None:
    view = _rebuild()
    assert view["progress"] == 0.25 and view["docs_per_s"] > 0 and view["changed"] == ["qty"]
