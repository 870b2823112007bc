"""The control path: profile changes through a 1-partition topic into the profiles GlobalTable.

A profile change is applied by whichever worker owns the control partition; every worker
sees it through the GlobalTable's changelog and reports the highest version it has
applied in its heartbeat (``workers`` table). ``request_profile`` returns once every live
worker reports the new version, so events consumed after that take the new branch.

Leaving a profile: ``full -> index_only`` drops the table's chunks (the chunks alias is
pointed at an empty index); ``-> archive`` keeps the row index unless ``drop_index`` is set.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import faust

from cdcstream.core.config import ProcessingProfile
from cdcstream.runtime.control import HEARTBEAT_S

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline

log = logging.getLogger("cdcstream.control")

def register(app: faust.App, pipe: Pipeline) -> None:
    @app.agent(pipe.control_topic, name="cdcstream.control")
    async def control(stream: faust.StreamT[Any]) -> None:
        async for cmd in stream:
            if not isinstance(cmd, dict) or cmd.get("type") != "set_profile":
                log.warning("control: ignoring unknown command %r", cmd)
                continue
            table, profile, version = cmd["table"], ProcessingProfile(cmd["profile"]), int(cmd["version"])
            old = pipe.tables.profiles.get(table)
            old_profile = ProcessingProfile(old["profile"]) if old else _default(pipe, table)
            pipe.tables.profiles[table] = {"profile": profile.value, "version": version,
                                           "changed_ms": int(time.time() * 1000), "from": old_profile.value}
            await _leave(pipe, table, old_profile, profile, bool(cmd.get("drop_index")))
            log.warning("profile of %s: %s -> %s (version %d)", table, old_profile.value, profile.value, version)

    @app.timer(HEARTBEAT_S)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        pipe.tables.workers[pipe.worker_id] = {"applied": pipe.applied_profile_version(), "ts": time.time(),
                                               "batches": pipe.batches}


def _default(pipe: Pipeline, table_key: str) -> ProcessingProfile:
    r = pipe.router.by_key.get(table_key)
    return r.table.profile if r else ProcessingProfile.INDEX_ONLY


async def _leave(pipe: Pipeline, table_key: str, old: ProcessingProfile, new: ProcessingProfile,
                 drop_index: bool) -> None:
    route = pipe.router.by_key.get(table_key)
    if route is None or old is new:
        return
    await pipe.ready()
    if old.archives:
        # Events buffered for the archive would wait for a cut that no later event of the
        # table makes any more: cut and store the tail now, which also releases the events
        # queued behind them.
        topics = {t for t, tid in pipe.router.topics.items() if tid.key == table_key}
        async with pipe.archive_lock:
            await pipe.flush_archive(pipe.buffer.cut_topics(topics))
    if pipe.mirror is None:
        return
    drop = []
    if old.embeds:
        drop.append(route.chunks_alias)
    if new.archives and drop_index:
        drop.append(route.alias)
    for alias in drop:
        if await pipe.mirror.drop(alias):
            log.warning("profile change: dropped %s", alias)


