"""Initial snapshot of a large table, then kill -9 and restart of the worker holding its state.

One run, two results (issue items 6 and 5):

* **snapshot**: a PostgreSQL table of N rows (full: 1,000,000) captured by the real Debezium
  connector. Debezium's rate is rows over the span from its first to its last snapshot
  record in Kafka; the pipeline's is rows over the span from Debezium's first record until
  Elasticsearch counts all N. The pipeline is "never the bottleneck" when it finishes within
  a few seconds of Debezium (ratio of the spans ≈ 1).
* **recovery**: with the worker holding row state for all N rows, ``kill -9`` it, change 100
  rows, restart it, and time until all 100 changes are searchable; once with the local
  RocksDB intact (the normal restart) and once with the data directory deleted (a lost
  disk: state rebuilt from the changelog topic). Worker RSS is read from /proc after the
  snapshot and after each recovery, and its peak sampled at every poll (0.5 s) throughout.

CPU per row over the snapshot (user + system seconds from /proc, ``pgbench.CpuLedger``): the
worker's from the connector's creation until every row is searchable, Connect's (Debezium)
until its last snapshot record is in Kafka; both divided by the rows. Connect counts every
connector it runs (the stack is shared), so its figure is an upper bound. The load averages
at the start and end say how busy the shared machine was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import common
from bench.pgbench import CpuLedger
from tests.support import CONNECTION_ERRORS, removal_spec, teardown_connector, topics_starting, wait_until

ROWS = {"smoke": 5_000, "full": 1_000_000}
CHANGED = 100


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children (the supervisor and the Faust worker), in MiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
    return round(total / 1024, 1)


async def _end_offsets(topic: str) -> int:
    offs = await common.end_offsets(topic)
    return sum(offs.values())


class Run:
    def __init__(self, rows: int) -> None:
        st = common.stack()
        self.pg = st["postgres"]
        self.tag = common.new_tag()
        self.rows = rows
        self.name = f"bench-{self.tag}"
        self.role = self.db = f"bench_{self.tag}"
        self.password = f"pw-{self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="cdcstream-bench-recovery-"))
        self.config = self.tmp / "cdcstream.yaml"
        self.es = common.Es()
        self.alias = f"{self.name}-public-items"
        self.topic = f"{self.name}.public.items"
        self.app_id = f"bench-rec-{self.tag}"
        self.worker: common.WorkerProc | None = None
        self.rss_peak_mb = 0.0

    def rss(self) -> float:
        """The worker's RSS now, in MiB; the peak so far is kept (a snapshot's high-water mark
        can come before the state is complete, e.g. in a changelog burst)."""
        assert self.worker is not None and self.worker.proc is not None
        now = _rss_mb(self.worker.proc.pid)
        self.rss_peak_mb = max(self.rss_peak_mb, now)
        return now

    def su(self) -> Any:
        return psycopg.connect(host=self.pg["host"], port=self.pg["port"], user=self.pg["user"],
                               password=self.pg["password"], dbname="postgres", autocommit=True)

    def src(self) -> Any:
        return psycopg.connect(host=self.pg["host"], port=self.pg["port"], user=self.role, password=self.password,
                               dbname=self.db, autocommit=True)

    def setup(self) -> float:
        with self.su() as c:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(self.role), sql.Literal(self.password)))
            c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(self.db),
                                                                    sql.Identifier(self.role)))
        t = time.monotonic()
        with self.src() as c:
            c.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, sku TEXT NOT NULL, qty INT NOT NULL, "
                      "price NUMERIC(10,2) NOT NULL, updated_at TIMESTAMP NOT NULL DEFAULT now())")
            c.execute("INSERT INTO items SELECT g, 'sku-' || g, g %% 100, (g %% 10000) / 100.0, now() "
                      "FROM generate_series(1, %s) g", (self.rows,))
        os.environ[f"BENCH_PW_{self.tag}"] = self.password
        self.config.write_text(json.dumps({"connectors": [{
            "name": self.name,
            "connection": {"kind": "postgres", "host": self.pg["host"], "port": self.pg["port"], "database": self.db,
                           "user": self.role, "password": f"env:BENCH_PW_{self.tag}", "tls": {"mode": "disable"}},
            "partitions": 4, "heartbeat_interval_ms": 5000,
            "tables": [{"name": "public.items", "profile": "index_only"}]}]}))
        return time.monotonic() - t

    def env(self) -> dict[str, str]:
        env = common.worker_env(self.app_id, self.config, 4)
        env[f"BENCH_PW_{self.tag}"] = self.password
        return env

    def snapshot(self) -> dict[str, Any]:
        import asyncio

        from cdcstream.core.config import load_config
        from cdcstream.core.resolver import Resolver
        from cdcstream.ops.kconnect import ConnectClient
        from cdcstream.ops.lifecycle import apply

        # The worker is up and subscribed before the snapshot starts, so its start-up is not
        # counted against its rate: the topic is created first, as Connect would create it.
        asyncio.run(common.create_topic(self.topic, 4))
        self.worker = common.WorkerProc(self.tmp, self.app_id, self.env())
        worker = self.worker
        worker.start()
        # An answer without "tables" ({"error": ...} while starting) is "not ready yet" too.
        wait_until(lambda: worker.api("/api/tables")["tables"], 120, what="the worker ready",
                   retry_on=(*CONNECTION_ERRORS, KeyError), detail=worker.tail,
                   abort=lambda: None if worker.alive() else f"worker exited:\n{worker.tail()}")
        time.sleep(3)
        st = common.stack()
        assert worker.proc is not None
        cpu = CpuLedger({"worker": worker.proc.pid, "connect": int(st["connect"]["pid"]),
                         "kafka": int(st["kafka"]["pid"]), "elasticsearch": int(st["elasticsearch"]["pid"])})
        self.rss_peak_mb = 0.0
        cpu.mark("start")
        t0 = time.monotonic()
        apply(load_config(self.config), ConnectClient(), Resolver(), common.BOOTSTRAP, log_fn=lambda _m: None)
        # BENCH_SNAPSHOT_PROFILE_S=N: a py-spy profile of the worker's first N s of the snapshot.
        profiler = common.profile_in_background(worker.proc.pid, "BENCH_SNAPSHOT_PROFILE_S",
                                                self.tmp / "snapshot.pyspy")
        dbz_first = dbz_done = es_first = es_done = None
        samples: list[tuple[float, int, int, float]] = []
        deadline = t0 + max(600.0, self.rows / 500)
        while es_done is None:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"snapshot not mirrored within {deadline - t0:.0f}s:\n{self.worker.tail()}")
            if not self.worker.alive():
                raise RuntimeError(f"worker exited:\n{self.worker.tail()}")
            produced = 0
            with contextlib.suppress(Exception):
                produced = asyncio.run(_end_offsets(self.topic))
            docs = 0
            with contextlib.suppress(Exception):
                docs = int(self.es.req("GET", f"/{self.alias}/_count")["count"])
            rss = self.rss()
            samples.append((round(now - t0, 2), produced, docs, rss))
            if produced and dbz_first is None:
                dbz_first = now
            if produced >= self.rows and dbz_done is None:
                dbz_done = now
                cpu.mark("debezium_done")
            if docs and es_first is None:
                es_first = now
            if docs >= self.rows:
                es_done = now
                cpu.mark("pipeline_done")
            time.sleep(0.5)
        assert dbz_first is not None and dbz_done is not None
        dbz_span = max(dbz_done - dbz_first, 0.5)
        pipe_span = max(es_done - dbz_first, 0.5)
        time.sleep(3)
        whole = es_done - t0
        return {"profile": profiler(), "rows": self.rows, "debezium_rows_per_s": round(self.rows / dbz_span),
                "pipeline_rows_per_s": round(self.rows / pipe_span), "ratio": round(dbz_span / pipe_span, 3),
                "pipeline_finished_after_debezium_s": round(es_done - dbz_done, 1),
                "connector_to_first_record_s": round(dbz_first - t0, 1),
                "worker_rss_mb": self.rss(), "worker_rss_peak_mb": self.rss_peak_mb,
                "worker_cpu_us_per_row": cpu.per_event("worker", "start", "pipeline_done", self.rows),
                "connect_cpu_us_per_row": cpu.per_event("connect", "start", "debezium_done", self.rows),
                "kafka_cpu_us_per_row": cpu.per_event("kafka", "start", "pipeline_done", self.rows),
                "elasticsearch_cpu_us_per_row": cpu.per_event("elasticsearch", "start", "pipeline_done", self.rows),
                "cores_until_debezium_done": cpu.cores("start", "debezium_done", dbz_done - t0),
                "cores_until_pipeline_done": cpu.cores("start", "pipeline_done", whole),
                "samples": samples[:: max(1, len(samples) // 200)]}

    def recover(self, lose_disk: bool) -> dict[str, Any]:
        assert self.worker is not None and self.worker.proc is not None
        os.killpg(self.worker.proc.pid, signal.SIGKILL)
        self.worker.proc.wait(30)
        if lose_disk:
            shutil.rmtree(self.tmp / f"{self.app_id}-{self.worker.name}-data", ignore_errors=True)
        marker = int(time.time())
        with self.src() as c:
            c.execute("UPDATE items SET qty = %s WHERE id <= %s", (marker % 1_000_000, CHANGED))
        t0 = time.monotonic()
        self.worker.start()
        self.rss_peak_mb = 0.0
        first = None
        while True:
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"changes not mirrored 600 s after the restart:\n{self.worker.tail()}")
            if not self.worker.alive():
                raise RuntimeError(f"worker exited:\n{self.worker.tail()}")
            n = 0
            with contextlib.suppress(Exception):
                self.es.req("POST", f"/{self.alias}/_refresh")
                r = self.es.req("POST", f"/{self.alias}/_count", {"query": {"bool": {"filter": [
                    {"range": {"id": {"lte": CHANGED}}}, {"term": {"qty": marker % 1_000_000}}]}}})
                n = int(r["count"])
            if n and first is None:
                first = time.monotonic() - t0
            self.rss()
            if n >= CHANGED:
                done = time.monotonic() - t0
                break
            time.sleep(0.25)
        time.sleep(2)
        return {"lose_disk": lose_disk, "first_change_visible_s": round(first or done, 2),
                "all_changes_visible_s": round(done, 2), "worker_rss_mb": self.rss(),
                "worker_rss_peak_mb": self.rss_peak_mb}

    def cleanup(self) -> None:
        from cdcstream.ops.credentials import Credentials

        if self.worker is not None:
            self.worker.stop()
        # Connector, slot, publication and its topics, then the worker's topics (app id).
        teardown_connector(removal_spec(self.name, "postgres", self.db, host=self.pg["host"], port=self.pg["port"]),
                           Credentials(self.pg["user"], self.pg["password"]),
                           also_topics=topics_starting(self.name, self.app_id))
        with contextlib.suppress(Exception):
            self.es.delete_matching(f"{self.name}-*")
        with contextlib.suppress(Exception):
            common.delete_consumer_groups([self.app_id])
        with contextlib.suppress(Exception), self.su() as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db)))
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role)))
        shutil.rmtree(self.tmp, ignore_errors=True)


def _cores(s: dict[str, Any], key: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s.get(key, {}).items(), key=lambda kv: -kv[1])) or "–"


def _load(r: dict[str, Any], key: str) -> str:
    return ", ".join(str(x) for x in r.get(key, [])) or "–"


class SnapshotRecovery:
    """``python -m bench snapshot-recovery [--size smoke|full] [--events ROWS]``"""

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        rows = events or ROWS[size]
        load_start = os.getloadavg()
        r = Run(rows)
        try:
            load_s = r.setup()
            snap = r.snapshot()
            warm = r.recover(lose_disk=False)
            cold = r.recover(lose_disk=True)
        finally:
            r.cleanup()
        return {"scenario": "snapshot-recovery", "size": size, "rows": rows, "source_load_s": round(load_s, 1),
                "snapshot": snap, "recovery": [warm, cold], "changed_rows": CHANGED, "runs": 1,
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()]}

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        s = r["snapshot"]
        warm, cold = r["recovery"]
        return "\n".join([
            f"### Initial snapshot ({r['rows']:,} rows, index_only, 4 partitions; one run)",
            "",
            "| measure | value |",
            "|---|---|",
            f"| Debezium snapshot rate (first to last record in Kafka) | {s['debezium_rows_per_s']:,} rows/s |",
            f"| pipeline rate (Debezium's first record to all rows searchable) | {s['pipeline_rows_per_s']:,} rows/s |",
            f"| ratio of the spans (target ≥ 1: never the bottleneck) | {s['ratio']} |",
            f"| pipeline finished after Debezium | {s['pipeline_finished_after_debezium_s']} s |",
            f"| worker RSS holding state for all rows (target ≤ 1 GiB) | {s['worker_rss_mb']} MiB |",
            f"| worker RSS peak during the snapshot | {s.get('worker_rss_peak_mb', '–')} MiB |",
            f"| worker CPU per row (connector created → all searchable) | {s.get('worker_cpu_us_per_row', '–')} µs |",
            f"| Connect (Debezium) CPU per row (connector created → last record) "
            f"| {s.get('connect_cpu_us_per_row', '–')} µs |",
            f"| CPU (cores), connector created → Debezium's last record | {_cores(s, 'cores_until_debezium_done')} |",
            f"| CPU (cores), connector created → all rows searchable | {_cores(s, 'cores_until_pipeline_done')} |",
            f"| load average (1, 5, 15 min) at start / end | {_load(r, 'loadavg_start')} / {_load(r, 'loadavg_end')} |",
            "",
            *common.profile_lines(s.get("profile"), "in the snapshot"),
            "![snapshot](img/bench-snapshot.png)",
            "",
            f"### Recovery after kill -9 ({r['rows']:,} rows of state; {r['changed_rows']} rows changed while down)",
            "",
            "| restart | first change searchable | all changes searchable | target | RSS after / peak |",
            "|---|---|---|---|---|",
            f"| local state intact | {warm['first_change_visible_s']} s | {warm['all_changes_visible_s']} s "
            f"| ≤ 30 s | {warm['worker_rss_mb']} / {warm.get('worker_rss_peak_mb', '–')} MiB |",
            f"| data dir lost (state from the changelog) | {cold['first_change_visible_s']} s "
            f"| {cold['all_changes_visible_s']} s | ≤ 60 s | {cold['worker_rss_mb']} / "
            f"{cold.get('worker_rss_peak_mb', '–')} MiB |",
            "",
            "The restart time includes starting the Python process, joining the consumer group "
            "(the killed member's session must expire first: `session_timeout_s`, 15 s) and, for "
            "the lost disk, reading the row-state changelog back.",
        ])

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        plt = common.pyplot()
        xs = [s[0] for s in r["snapshot"]["samples"]]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(xs, [s[1] for s in r["snapshot"]["samples"]], label="Debezium: records in Kafka")
        ax.plot(xs, [s[2] for s in r["snapshot"]["samples"]], label="pipeline: documents searchable")
        ax.set_xlabel("seconds since the connector was created")
        ax.set_ylabel("rows")
        ax.set_title(f"Initial snapshot of {r['rows']:,} rows")
        ax.legend(loc="upper left")
        samples = r["snapshot"]["samples"]
        if samples and len(samples[0]) > 3:
            rss_ax = ax.twinx()
            rss_ax.plot(xs, [s[3] for s in samples], color="#999999", linestyle=":", label="worker RSS (MiB)")
            rss_ax.set_ylabel("worker RSS, MiB")
            rss_ax.legend(loc="lower right")
        fig.tight_layout()
        out = common.plot_path("snapshot")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return [out]


def main() -> None:  # pragma: no cover - manual runs
    size = sys.argv[1] if len(sys.argv) > 1 else "smoke"
    print(json.dumps(SnapshotRecovery.run(size), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
