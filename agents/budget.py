"""The embedding queue: chunks waiting for a token budget are sent when it pays for them.

A timer, not the data path: it never holds a batch, so a full queue never slows indexing.
At every tick it counts the queue (for /status and /metrics) and, once a period opens with
budget left, sends the oldest chunks first (``Pipeline.drain_embed_queue``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faust

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger("cdcstream.budget")


def register(app: faust.App, pipe: Pipeline) -> None:
    if not pipe.ledger.active:
        return

    @app.timer(pipe.settings.embed_budget_check_s)  # type: ignore[untyped-decorator]
    async def drain_embed_queue() -> None:
        # Spend is read from the embed_budget table: not before it is recovered, or a restart
        # would think nothing was spent this period.
        if app.in_recovery or app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        try:
            await pipe.drain_embed_queue()
        except Exception as e:  # noqa: BLE001 - the next tick retries; the queue is durable in the index
            log.warning("embedding queue: %s: %s; retrying in %.0fs", type(e).__name__, str(e)[:300],
                        pipe.settings.embed_budget_check_s)
