"""Web views on Faust's web server (status JSON for now; pages and the API grow here)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from cdcstream.app import Pipeline


def table_totals(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    """Cluster-wide counters per table, summed over partitions from the stats GlobalTable."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for key, v in pipe.tables.stats.items():
        if not v:
            continue
        tk = key.rsplit("|", 1)[0]
        for k, n in v.items():
            if k in ("last_event_ms", "updated_ms"):
                out[tk][k] = max(out[tk][k], int(n))
            elif isinstance(n, int):
                out[tk][k] += n
    return {k: dict(v) for k, v in out.items()}


def register(app: faust.App, pipe: Pipeline) -> None:
    @app.page("/api/tables")
    class Tables(View):
        async def get(self, request: Request) -> Response:
            totals = table_totals(pipe)
            rows = []
            for key, route in pipe.router.by_key.items():
                live = pipe.tables.profiles.get(key)
                rows.append({"table": key, "name": str(route.table_id), "index": route.alias,
                             "profile": live["profile"] if live else route.table.profile.value,
                             "stats": totals.get(key, {})})
            return self.json({"tables": rows, "worker": pipe.worker_id, "ts": time.time()})

    @app.page("/api/workers")
    class Workers(View):
        async def get(self, request: Request) -> Response:
            return self.json({"workers": {k: v for k, v in pipe.tables.workers.items()}})
