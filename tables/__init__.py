"""Faust tables (changelog-backed state).

* ``rows`` – per-row state, co-partitioned with the captured topics (same partition count,
  written while the row's event is current): last applied position, delete marker, chunk
  hashes, last values of TOAST-able columns.
* ``profiles`` – processing profile per table, a GlobalTable fed by the 1-partition control
  topic: every worker sees every change.
* ``stats`` – counters per (table, source partition), a GlobalTable written with the
  key partitioner: each key has one writer (the owner of that partition) and every worker
  reads all keys, so any worker's status shows cluster-wide totals.
* ``archive_cuts`` – per source topic-partition, the archive objects cut recently (first and
  last offset), written and flushed to its changelog *before* each object is stored, so a
  replay (after a crash, or on the partition's next owner) cuts the same objects; a
  GlobalTable like ``stats``: one writer per key, readable by the next owner at once.
* ``truncations`` – per table, the version (source position) of the newest TRUNCATE applied:
  changes older than it are stale on every worker (a row that reached another partition late).
* ``embed_budget`` – embedding tokens spent per (table, worker) in the current period of each
  budget that applies (docs/profiles.md, "Token budgets"); written and flushed before the
  tokens are sent, so a restart knows what was spent.
* ``workers`` – heartbeat of each live worker with the profile version it has applied; the
  profile API waits on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TableT
from faust.types.tables import GlobalTableT


@dataclass
class Tables:
    rows: TableT[str, Any]
    profiles: GlobalTableT
    stats: GlobalTableT
    workers: GlobalTableT
    archive_cuts: GlobalTableT
    truncations: GlobalTableT
    embed_budget: GlobalTableT


# Not "memory://": yarl's URL("memory://") is falsy, and Faust then silently falls back to
# the app's store (rocksdb). Any host part makes it truthy; the memory store ignores it.
MEMORY = "memory://global"


def register(app: faust.App, partitions: int) -> Tables:
    rows = app.Table("rows", default=None, partitions=partitions, help="Per-row state")
    # partitions=1 + recovery_buffer_size=1: the upstream workaround for GlobalTable recovery
    # loops with several workers (faust-streaming#212).
    # The small global tables live in memory, rebuilt from their changelog at start: the
    # RocksDB store files every write under the current event's partition, which a
    # key-partitioned table written from timers does not have.
    profiles = app.GlobalTable("profiles", default=None, partitions=1, recovery_buffer_size=1, store=MEMORY,
                               help="Live processing profile per table")
    stats = app.GlobalTable("stats", default=None, partitions=1, recovery_buffer_size=1, use_partitioner=True,
                            store=MEMORY, help="Counters per (table, partition)")
    workers = app.GlobalTable("workers", default=None, partitions=1, recovery_buffer_size=1, use_partitioner=True,
                              store=MEMORY, help="Live workers and the profile version each applied")
    archive_cuts = app.GlobalTable("archive_cuts", default=None, partitions=1, recovery_buffer_size=1,
                                   use_partitioner=True, store=MEMORY,
                                   help="Recent archive cuts per source topic-partition")
    truncations = app.GlobalTable("truncations", default=None, partitions=1, recovery_buffer_size=1,
                                  use_partitioner=True, store=MEMORY,
                                  help="Per table, the version of the newest TRUNCATE applied")
    embed_budget = app.GlobalTable("embed_budget", default=None, partitions=1, recovery_buffer_size=1,
                                   use_partitioner=True, store=MEMORY,
                                   help="Embedding tokens spent per (table, worker) and budget period")
    return Tables(rows, profiles, stats, workers, archive_cuts, truncations, embed_budget)
