"""Named crash points for fault tests.

``CDCSTREAM_CRASH_POINT=<name>[:<n>]`` makes the worker kill itself with SIGKILL the n-th
time (default first) it reaches that point: the same as ``kill -9`` at an exact moment.
Points: ``after_truncate`` (a TRUNCATE recorded and applied, its batch not yet acked),
``before_cut_record`` / ``after_cut_record`` (an archive cut about to be / just
recorded, its object not yet stored), ``after_archive_put`` (object stored, its events not
yet acked), ``after_archive_release`` (a timer's objects stored and their events acked, the
offsets not yet committed), ``after_bulk``
(Elasticsearch written, row state not yet), ``after_batch`` (everything written, offsets
not yet committed), ``mid_embedding`` (vectors fetched, nothing indexed), ``mid_migration``
(a page of an index rebuild's copy written, the alias not yet swapped), ``after_migration_swap``
(the alias swapped, the old generation not yet deleted), ``mid_reembed`` (a page of a
re-embed written, the alias not yet swapped).
Unset in production; reading one environment variable per batch costs nothing.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    want = os.environ.get("CDCSTREAM_CRASH_POINT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
