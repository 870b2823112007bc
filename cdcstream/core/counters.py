"""Counter names kept per (table, partition), and how two counter sets add up."""

from __future__ import annotations

from collections.abc import Mapping

OPS = ("c", "u", "d", "r", "t")


#: Counters kept per table by the agents (cdcstream/pipeline/processor.py, agents/changes.py).
COUNTERS = ("stale", "coalesced", "index_ops", "version_conflicts", "chunks", "chunks_reused", "embed_requests",
            "embed_inputs", "embed_tokens", "embed_queued", "embed_dequeued", "tokens_saved", "toast_filled",
            "toast_from_mirror", "toast_missing", "dlq", "duplicates", "truncated_docs")


def merge_counters(into: Mapping[str, int], delta: Mapping[str, int]) -> dict[str, int]:
    out = dict(into)
    for k, v in delta.items():
        out[k] = out.get(k, 0) + v
    return out

