"""Control commands on the 1-partition control topic: sent by the web views, applied by
``agents/control.py``; heartbeat timing the profile API waits on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cdcstream.core.config import ProcessingProfile
from cdcstream.runtime.context import Pipeline

HEARTBEAT_S = 1.0


LIVE_WITHIN_S = 8.0


def live_workers(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    """The workers whose heartbeat (``agents/control.py``) is fresh, by worker id."""
    now = time.time()
    return {w: v for w, v in pipe.tables.workers.items() if v and now - float(v.get("ts", 0)) < LIVE_WITHIN_S}


async def request_profile(pipe: Pipeline, table_key: str, profile: ProcessingProfile, *, drop_index: bool = False,
                          timeout: float = 60.0) -> dict[str, Any]:
    """Send a profile change and wait until every live worker applied it."""
    version = time.time_ns()
    await pipe.control_topic.send(key=table_key.encode(), value={
        "type": "set_profile", "table": table_key, "profile": profile.value, "version": version,
        "drop_index": drop_index})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = live_workers(pipe)
        if live and all(int(v.get("applied", 0)) >= version for v in live.values()):
            return {"table": table_key, "profile": profile.value, "version": version, "workers": sorted(live)}
        await asyncio.sleep(0.2)
    raise TimeoutError(f"profile change of {table_key} to {profile.value} not applied by every live worker "
                       f"within {timeout:.0f}s")

