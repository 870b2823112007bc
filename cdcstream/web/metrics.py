"""Prometheus text exposition (format 0.0.4), written by hand from the status model.

Hand-written rather than prometheus-client: every figure already exists as a cluster-wide
snapshot (GlobalTable totals), so a collector registry would only add a dependency and
a second copy of the numbers. Counters here are totals over the whole cluster, so scrape
one worker (or de-duplicate by the ``worker`` label of ``cdcstream_scrape_info``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cdcstream.core.counters import COUNTERS, OPS

CONNECTOR_STATES = ("RUNNING", "PAUSED", "STOPPED", "FAILED", "UNASSIGNED", "RESTARTING", "NOT_CREATED",
                    "UNREACHABLE", "UNKNOWN")


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class _Family:
    def __init__(self, name: str, kind: str, help_: str) -> None:
        self.name, self.kind, self.help = name, kind, help_
        self.samples: list[tuple[dict[str, Any], float | int]] = []

    def add(self, value: float | int | None, **labels: Any) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, v in self.samples:
            yield f"{self.name}{_labels(labels)} {_num(v)}"


def render(snapshot: dict[str, Any]) -> str:
    fams: list[_Family] = []

    def fam(name: str, kind: str, help_: str) -> _Family:
        f = _Family(name, kind, help_)
        fams.append(f)
        return f

    info = fam("cdcstream_scrape_info", "gauge", "The worker that answered this scrape (figures are cluster-wide).")
    info.add(1, worker=snapshot["worker"])
    events = fam("cdcstream_events_total", "counter", "Change events processed, by table and operation.")
    counters = {c: fam(f"cdcstream_{c}_total", "counter", f"Counter {c} per table (see docs/api.md).")
                for c in COUNTERS}
    last = fam("cdcstream_last_event_timestamp_seconds", "gauge", "Source time of the newest event per table.")
    lag = fam("cdcstream_consumer_lag_messages", "gauge", "Messages in the captured topics not yet committed.")
    docs = fam("cdcstream_documents", "gauge", "Documents in the table's row index.")
    chunks = fam("cdcstream_chunks", "gauge", "Chunks (with vectors) in the table's chunk index.")
    profile = fam("cdcstream_table_profile", "gauge", "1 for the table's live processing profile.")
    snap_read = fam("cdcstream_snapshot_rows_read_total", "counter", "Snapshot (op=r) events per table.")
    src_rows = fam("cdcstream_source_rows", "gauge", "Estimated rows of the source table.")
    for t in snapshot["tables"]:
        lab = {"table": t["id"]}
        for op in OPS:
            events.add(t["events"][op], op=op, **lab)
        for c in COUNTERS:
            counters[c].add(int(t["stats"].get(c, 0)), **lab)
        last.add(t["last_event_ms"] / 1000 if t["last_event_ms"] else None, **lab)
        lag.add(t["lag"], **lab)
        docs.add(t["documents"], **lab)
        chunks.add(t["chunks"], **lab)
        profile.add(1, profile=t["profile"], **lab)
        snap_read.add(t["snapshot"]["rows_read"], **lab)
        src_rows.add(t["snapshot"]["source_rows"], **lab)
    b_limit = fam("cdcstream_embed_budget_tokens", "gauge",
                  "Embedding token budget per period, by table (table=\"*\": all tables together).")
    b_spent = fam("cdcstream_embed_budget_spent_tokens", "gauge", "Embedding tokens spent in the current period.")
    b_left = fam("cdcstream_embed_budget_remaining_tokens", "gauge", "Embedding tokens left in the current period.")
    b_warn = fam("cdcstream_embed_budget_warning", "gauge", "1 once 80% of the period's budget is spent.")
    q_chunks = fam("cdcstream_embed_queue_chunks", "gauge", "Chunks waiting in the queue for an embedding budget.")
    q_tokens = fam("cdcstream_embed_queue_tokens", "gauge", "Tokens of the chunks waiting in the queue.")
    budgets = [(t["id"], t.get("embed_budget")) for t in snapshot["tables"]] + [("*", snapshot.get("embed_budget"))]
    for table, b in budgets:
        if not b:
            continue
        b_spent.add(b["spent"], table=table, period=b["period"])
        q_chunks.add(b["queued_chunks"], table=table)
        q_tokens.add(b["queued_tokens"], table=table)
        if b["limit"] is not None:
            b_limit.add(b["limit"], table=table, period=b["period"])
            b_left.add(b["remaining"], table=table, period=b["period"])
            b_warn.add(b["warning"] is not None, table=table)
    up = fam("cdcstream_connector_state", "gauge", "1 for the connector's current state in Kafka Connect.")
    tasks = fam("cdcstream_connector_tasks", "gauge", "Connector tasks by state.")
    slot = fam("cdcstream_replication_slot_lag_bytes", "gauge", "WAL retained by the connector's replication slot.")
    slot_active = fam("cdcstream_replication_slot_active", "gauge", "1 when a walsender uses the slot.")
    for c in snapshot["connectors"]:
        for st in CONNECTOR_STATES:
            up.add(1 if c["state"] == st else 0, connector=c["name"], state=st)
        by_state: dict[str, int] = {}
        for task in c["tasks"]:
            by_state[task["state"]] = by_state.get(task["state"], 0) + 1
        for st, n in sorted(by_state.items()):
            tasks.add(n, connector=c["name"], state=st)
        s = c.get("slot")
        if isinstance(s, dict) and "lag_bytes" in s:
            slot.add(s["lag_bytes"], connector=c["name"], slot=s["slot"])
            slot_active.add(bool(s["active"]), connector=c["name"], slot=s["slot"])
    workers = fam("cdcstream_workers_live", "gauge", "Workers with a recent heartbeat.")
    workers.add(sum(1 for w in snapshot["workers"].values() if w.get("live")))
    rate = fam("cdcstream_events_per_second", "gauge", "Cluster-wide events/s over the last sample interval.")
    series = snapshot.get("series") or []
    if series and series[-1]["events_per_s"] is not None:
        rate.add(series[-1]["events_per_s"])
    flight = snapshot.get("in_flight") or {}
    if flight:
        fam("cdcstream_in_flight_messages", "gauge",
            "Events this worker has fetched and not yet committed.").add(flight["messages"])
        fam("cdcstream_in_flight_cap", "gauge",
            "The bound on in-flight events (read_ahead, batch_size, archive_max_records).").add(flight["cap"])
    blocked = fam("cdcstream_sink_blocked", "gauge",
                  "1 while this worker waits for a sink (operational error; nothing acked), by sink and reason.")
    for b in snapshot.get("blocked") or []:
        blocked.add(1, sink=b["sink"], reason=b["reason"])
    copied = fam("cdcstream_migration_copied_docs", "gauge",
                 "Documents copied so far into an index generation rebuilt for a column type change.")
    total = fam("cdcstream_migration_total_docs", "gauge", "Documents to copy in that rebuild.")
    for m in snapshot.get("migrations") or []:
        copied.add(m["copied"], index=m["index"])
        total.add(m["total"], index=m["index"])
    return "\n".join(line for f in fams for line in f.lines()) + "\n"
