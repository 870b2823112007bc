"""Real load: PostgreSQL's ``pgbench`` (TPC-B-like) on tables mirrored ``index_only``.

Set-up: a throw-away database, role, connector and worker (tests/e2e/harness.py, worker
settings at their production defaults as in bench/latency.py). ``pgbench -i -s 1`` creates
and fills its four tables; the connector captures the three keyed ones
(``pgbench_accounts``, ``pgbench_branches``, ``pgbench_tellers``) with profile ``index_only``
and snapshots them (100,011 rows at scale 1); the load starts once the worker has committed
every snapshot record. ``pgbench_history`` is **not captured**: it has no primary key and no
unique column, so it has no row identity to mirror by (the pipeline would need ``id_columns``
and ``REPLICA IDENTITY FULL``); left out of the publication, its inserts never reach Debezium.

Load: ``pgbench -c 4 -T 60 -P 1 -b tpcb-like`` (smoke: 5 s on 1,000 accounts), per
transaction one UPDATE each of accounts, tellers and branches (three captured change events)
and one history INSERT (not captured).

Measured, sampled every second from Kafka with aiokafka (``OffsetSampler``):
* **captured**: the sum of the three topics' end offsets (Debezium's output);
* **processed**: the worker's committed offsets of its consumer group (the app id) on those
  topics; Faust commits after the sink has acknowledged, about every 3 s, so this side is
  late by up to one commit interval;
* **lag** = captured - processed.
``pgbench``'s per-second progress gives the source's rate; three change events per
transaction give what Debezium has to capture. **Catch-up** = from Debezium's last event
(the first sample at the final end offsets) to ``cdcstream verify TABLE --full`` clean for
all three tables; verify runs (the three tables in parallel) once the lag is 0 and again
until clean, so its own run time is included. CPU seconds of each component (the stack's
processes from /proc, pgbench from its rusage) over the load and the catch-up tell which
one the two cores went to.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers")
SECONDS = {"smoke": 5, "full": 60}
CLIENTS = 4
SCALE = 1
CHANGES_PER_TX = 3  # TPC-B-like: UPDATE accounts, tellers, branches (the history INSERT is not captured)
TARGET_CATCH_UP_S = 60.0
#: Smoke only: accounts kept after ``pgbench -i`` (scale 1 makes 100,000, whose snapshot alone
#: takes about 30 s here), with the TPC-B-like script drawing its account from them.
SMOKE_ACCOUNTS = 1000
# pgbench's built-in tpcb-like script (PostgreSQL 15), the account drawn from 1..:naccounts.
TPCB_SCRIPT = """\
\\set aid random(1, :naccounts)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
"""


def pgbench_exe() -> str:
    """Where the stack's PostgreSQL keeps its programs (Debian's versioned bindir), else PATH."""
    from cdcstream.stack.services.postgres import _bindir

    bindir = _bindir()
    if bindir is not None and (bindir / "pgbench").exists():
        return str(bindir / "pgbench")
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found: it comes with the stack's PostgreSQL server package "
                         "(postgresql-15 on Debian); run `cdcstream stack up`")
    return found


# --- Kafka sampling ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    captured: int  # sum of end offsets
    processed: int  # sum of the group's committed offsets

    @property
    def lag(self) -> int:
        return self.captured - self.processed


class OffsetSampler:
    """Samples, every ``every`` seconds on its own thread and event loop, the end offsets of
    ``topics`` and ``group``'s committed offsets on them. Topics not created yet count as 0."""

    def __init__(self, topics: list[str], group: str, every: float = 1.0) -> None:
        self.topics, self.group, self.every = topics, group, every
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._sample()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def series(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    async def _sample(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=common.BOOTSTRAP, enable_auto_commit=False)
        await consumer.start()
        admin = await common._admin()
        try:
            while not self._stop.is_set():
                t_next = time.monotonic() + self.every
                try:
                    tps = [TopicPartition(t, p) for t in self.topics for p in consumer.partitions_for_topic(t) or ()]
                    if len({tp.topic for tp in tps}) < len(self.topics):
                        await consumer._client.force_metadata_update()
                    ends = await consumer.end_offsets(tps) if tps else {}
                    committed = await admin.list_consumer_group_offsets(self.group, partitions=tps) if tps else {}
                    # No committed offset yet (-1): nothing of that partition processed.
                    done = sum(max(0, m.offset) for tp, m in committed.items() if tp in ends)
                    with self._lock:
                        self.samples.append(Sample(time.monotonic(), sum(ends.values()), done))
                except Exception:  # noqa: BLE001 - a missed sample is a gap in the series, not a failure
                    self.errors += 1
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        finally:
            await admin.close()
            await consumer.stop()


# --- CPU of the components -----------------------------------------------------------------
def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_with_reaped(pid: int) -> float:
    """``common.cpu_seconds`` plus what ``pid``'s children that have exited and been waited
    for used (cutime + cstime): pgbench's PostgreSQL backends end with pgbench, before the
    load's end is marked, and the postmaster reaps them."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        reaped = 0.0
    return common.cpu_seconds(pid) + reaped


class CpuLedger:
    """CPU seconds per component at named moments. PostgreSQL counts every backend (other
    engineers' too: the machine is shared), Connect every connector it runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, name: str, **extra: float) -> None:
        self.marks[name] = {k: _cpu_with_reaped(pid) for k, pid in self.pids.items()} | extra

    def per_event(self, name: str, start: str, end: str, events: int) -> float:
        return round((self.marks[end][name] - self.marks[start][name]) * 1e6 / max(events, 1), 1)

    def cores(self, start: str, end: str, seconds: float) -> dict[str, float]:
        a, b = self.marks[start], self.marks[end]
        return {k: round((b[k] - a[k]) / max(seconds, 1e-3), 2) for k in b if k in a}


# --- the run -------------------------------------------------------------------------------
_PROGRESS = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps")


def _pgbench(exe: str, p: Any, seconds: int, accounts: int | None) -> tuple[dict[str, Any], float]:
    """Run the load (the built-in script, or with ``accounts`` its copy on that many accounts);
    return pgbench's figures and its CPU seconds."""
    env = {**os.environ, "PGPASSWORD": p.password}
    script = ["-b", "tpcb-like"]
    if accounts is not None:
        path = p.tmp / "tpcb-like.sql"
        path.write_text(TPCB_SCRIPT)
        script = ["-f", str(path), "-D", f"naccounts={accounts}", "-s", str(SCALE)]
    args = [exe, "-h", p.pg["host"], "-p", str(p.pg["port"]), "-U", p.role, "-c", str(CLIENTS), "-T", str(seconds),
            "-P", "1", *script, p.db]
    cpu0 = _children_cpu()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 300, check=False)
    cpu = _children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = done.stdout + done.stderr

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        if m is None:
            raise RuntimeError(f"pgbench printed no {pattern!r}:\n{out[-3000:]}")
        return float(m.group(1))

    return {
        "tps": round(num(r"tps = ([\d.]+) \(without initial connection time\)"), 1),
        "transactions": int(num(r"number of transactions actually processed: (\d+)")),
        "failed": int(num(r"number of failed transactions: (\d+)")) if "failed transactions" in out else 0,
        "latency_avg_ms": num(r"latency average = ([\d.]+) ms"),
        "progress": [(float(a), float(b)) for a, b in _PROGRESS.findall(out)],
    }, cpu


def _verify_all(p: Any) -> dict[str, Any]:
    """``cdcstream verify public.T --full --json`` for the three tables at once, as a user runs it."""
    t = time.monotonic()
    procs = {tbl: subprocess.Popen([sys.executable, "-m", "cdcstream.cli", "verify", f"public.{tbl}", "--full",
                                    "--json"], env=p.env, cwd=common.ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
             for tbl in TABLES}
    reports: dict[str, Any] = {}
    for tbl, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        try:
            rep = json.loads(out)
            reports[tbl] = {"ok": bool(rep["ok"]) and proc.returncode == 0, "source_rows": rep["source_rows"],
                            "mirror_rows": rep["mirror_rows"], "drift": len(rep["drift"])}
        except (ValueError, KeyError):
            reports[tbl] = {"ok": False, "error": (err or out)[-500:]}
    return {"ok": all(r["ok"] for r in reports.values()), "seconds": round(time.monotonic() - t, 1),
            "tables": reports}


def _wait_snapshot(p: Any, sampler: OffsetSampler, rows: int, timeout: float) -> float:
    """Until the worker has committed every snapshot record; returns seconds taken."""
    t = time.monotonic()
    while True:
        s = sampler.latest()
        if s is not None and s.captured >= rows and s.lag == 0:
            return time.monotonic() - t
        if time.monotonic() - t > timeout:
            raise TimeoutError(f"snapshot of {rows} rows not processed in {timeout:.0f}s (last {s}):\n"
                               f"{p.worker_log()}")
        if p.worker is not None and p.worker.poll() is not None:
            raise RuntimeError(f"worker exited:\n{p.worker_log()}")
        time.sleep(0.5)


def _catch_up(p: Any, sampler: OffsetSampler, expected: int, timeout: float) -> dict[str, Any]:
    """After the load: wait for lag 0 with Debezium done (its end offsets at ``expected``, or
    still for 10 s), then verify until all three tables are clean."""
    t = time.monotonic()
    lag0: float | None = None
    rounds: list[dict[str, Any]] = []
    while True:
        now = time.monotonic()
        if now - t > timeout:
            raise TimeoutError(f"not clean {timeout:.0f}s after the load (last sample {sampler.latest()}, "
                               f"verify rounds {rounds})")
        if p.worker is not None and p.worker.poll() is not None:
            raise RuntimeError(f"worker exited:\n{p.worker_log()}")
        series = sampler.series()
        s = series[-1] if series else None
        still = [x for x in series if x.t >= now - 10]
        debezium_done = s is not None and (s.captured >= expected
                                           or (len(still) >= 8 and still[0].captured == s.captured))
        if s is not None and debezium_done and s.lag == 0:
            lag0 = lag0 or s.t
            v = _verify_all(p)
            rounds.append(v)
            if v["ok"]:
                return {"lag_zero_at": lag0, "clean_at": time.monotonic(), "verify_rounds": rounds}
        time.sleep(0.5)


def _last_event_at(series: list[Sample]) -> float:
    final = series[-1].captured
    return next(x.t for x in series if x.captured == final)


def _rates(series: list[Sample], t0: float, window: int = 5) -> list[dict[str, float]]:
    """Per-sample totals, lag and rates (changes/s) over the last ``window`` samples: Faust
    commits about every 3 s, so per-second differences of committed offsets jump between 0 and
    thousands. Times in seconds since the load started."""
    out = []
    for i, b in enumerate(series):
        a = series[max(0, i - window)]
        dt = b.t - a.t
        out.append({"t": round(b.t - t0, 2), "captured": b.captured, "processed": b.processed, "lag": b.lag,
                    "captured_per_s": round((b.captured - a.captured) / dt, 1) if dt > 0 else 0.0,
                    "processed_per_s": round((b.processed - a.processed) / dt, 1) if dt > 0 else 0.0})
    return out


def _run(size: str) -> dict[str, Any]:
    from tests.e2e.harness import pipeline

    seconds = SECONDS[size]
    exe = pgbench_exe()
    st = common.stack()
    load_start = os.getloadavg()
    tables = [{"name": f"public.{t}", "profile": "index_only"} for t in TABLES]
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as d, pipeline(
            Path(d), st["postgres"], st["elasticsearch"], st["embeddings"], tables) as p:
        common.production_worker_env(p.env)
        init = subprocess.run([exe, "-i", "-s", str(SCALE), "-q", "-h", p.pg["host"], "-p", str(p.pg["port"]),
                               "-U", p.role, p.db], env={**os.environ, "PGPASSWORD": p.password},
                              capture_output=True, text=True, timeout=600, check=False)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{init.stderr[-3000:]}")
        accounts = SMOKE_ACCOUNTS if size == "smoke" else None
        if accounts is not None:
            p.sql("DELETE FROM pgbench_accounts WHERE aid > %s", (accounts,))
        rows = sum(int(p.sql(f"SELECT count(*) FROM {t}")[0][0]) for t in TABLES)  # noqa: S608 - fixed names
        sampler = OffsetSampler([p.topic(t) for t in TABLES], p.env["CDCSTREAM_APP_ID"])
        try:
            t_apply = time.monotonic()
            p.apply()
            p.start_worker()
            sampler.start()
            snapshot_s = _wait_snapshot(p, sampler, rows, timeout=900)
            assert p.worker is not None
            cpu = CpuLedger({"worker": p.worker.pid, "connect (Debezium)": int(st["connect"]["pid"]),
                             "kafka": int(st["kafka"]["pid"]), "postgres": int(st["postgres"]["pid"]),
                             "elasticsearch": int(st["elasticsearch"]["pid"])})
            time.sleep(2)
            cpu.mark("start", pgbench=0.0)
            t0 = time.monotonic()
            bench, pgbench_cpu = _pgbench(exe, p, seconds, accounts)
            t_end = time.monotonic()
            cpu.mark("load_end", pgbench=pgbench_cpu)
            # BENCH_PGBENCH_PROFILE_S=N: the first N s after the load (it works through its backlog
            # flat out then, with the CPU to itself).
            profiler = common.profile_in_background(p.worker.pid, "BENCH_PGBENCH_PROFILE_S", p.tmp / "pgbench.pyspy")
            expected = rows + CHANGES_PER_TX * bench["transactions"]
            cu = _catch_up(p, sampler, expected, timeout=1800)
            cpu.mark("clean", pgbench=pgbench_cpu)
            stats = {t["name"]: t["stats"] for t in p.api("/api/tables")["tables"]}
            profile = profiler()
        except Exception:
            print(p.worker_log(), file=sys.stderr)
            raise
        finally:
            sampler.stop()
            p.kill_worker()
            common.delete_consumer_groups([p.env["CDCSTREAM_APP_ID"]])
    series = [x for x in sampler.series() if x.t >= t0 - 5]
    last_event = _last_event_at(series)
    load_s = t_end - t0
    during = [x for x in series if t0 <= x.t <= t_end]
    captured = series[-1].captured - rows
    captured_by_end = max((x.captured for x in during), default=rows) - rows
    processed_by_end = max((x.processed for x in during), default=rows) - rows
    return {
        "scenario": "pgbench", "size": size, "runs": 1, "clients": CLIENTS, "scale": SCALE, "seconds": seconds,
        "pgbench": exe, "script": "tpcb-like" if accounts is None else f"tpcb-like on {accounts} accounts",
        "partitions": 2, "snapshot_rows": rows, "snapshot_s": round(snapshot_s, 1),
        "connector_to_load_s": round(t0 - t_apply, 1),
        "tps": bench["tps"], "transactions": bench["transactions"], "failed_transactions": bench["failed"],
        "pgbench_latency_avg_ms": bench["latency_avg_ms"],
        "source_changes": CHANGES_PER_TX * bench["transactions"],
        "source_changes_per_s": round(CHANGES_PER_TX * bench["transactions"] / load_s, 1),
        "captured_changes": captured,
        "captured_per_s_during_load": round(captured_by_end / load_s, 1),
        "captured_per_s_overall": round(captured / max(last_event - t0, 1e-3), 1),
        "processed_by_load_end": processed_by_end,
        "worker_per_s_during_load": round(processed_by_end / load_s, 1),
        "worker_per_s_overall": round(captured / max(cu["lag_zero_at"] - t0, 1e-3), 1),
        "max_lag": max(x.lag for x in series if x.t >= t0),
        "lag_at_load_end": next((x.lag for x in reversed(during)), 0),
        "load_s": round(load_s, 1),
        "debezium_last_event_after_load_s": round(last_event - t_end, 1),
        "worker_caught_up_after_last_event_s": round(max(0.0, cu["lag_zero_at"] - last_event), 1),
        "catch_up_s": round(cu["clean_at"] - last_event, 1), "target_catch_up_s": TARGET_CATCH_UP_S,
        "clean_after_load_s": round(cu["clean_at"] - t_end, 1),
        "verify_rounds": cu["verify_rounds"],
        "cpu_cores_load": cpu.cores("start", "load_end", load_s),
        "cpu_cores_catch_up": cpu.cores("load_end", "clean", cu["clean_at"] - t_end),
        # CPU per captured change, load start to clean (the worker) or to the load's end plus
        # Debezium's few seconds behind (Connect; it idles afterwards).
        "worker_cpu_us_per_event": cpu.per_event("worker", "start", "clean", captured),
        "connect_cpu_us_per_event": cpu.per_event("connect (Debezium)", "start", "clean", captured),
        "worker_counters": stats, "sampler_errors": sampler.errors, "catch_up_profile": profile,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "progress": bench["progress"], "series": _rates(series, t0),
        "marks": {"load_end_s": round(load_s, 2), "last_event_s": round(last_event - t0, 2),
                  "lag_zero_s": round(cu["lag_zero_at"] - t0, 2), "clean_s": round(cu["clean_at"] - t0, 2)},
    }


def _markdown(r: dict[str, Any]) -> str:
    cores = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_cores_load"].items(), key=lambda kv: -kv[1]))
    cores_cu = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_cores_catch_up"].items(), key=lambda kv: -kv[1]))
    la0, la1 = r["loadavg_start"], r["loadavg_end"]
    last = r["verify_rounds"][-1]
    return "\n".join([
        f"### Real load: pgbench ({r['size']}: {r['script']}, scale {r['scale']}, {r['clients']} clients, "
        f"{r['seconds']} s; three keyed tables `index_only`, {r['partitions']} partitions; one run)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| pgbench tps | {r['tps']:,.0f} ({r['transactions']:,} transactions, {r['failed_transactions']} failed) |",
        f"| changes the source committed (3 per transaction) | {r['source_changes']:,} "
        f"({r['source_changes_per_s']:,.0f}/s over the load) |",
        f"| captured by Debezium (topic end offsets) | {r['captured_changes']:,} |",
        f"| captured changes/s during the load | {r['captured_per_s_during_load']:,.0f} |",
        f"| captured changes/s, load start to Debezium's last event | {r['captured_per_s_overall']:,.0f} |",
        f"| Debezium's last event after the load ended | {r['debezium_last_event_after_load_s']} s |",
        f"| worker events/s during the load (committed offsets) | {r['worker_per_s_during_load']:,.0f} |",
        f"| worker events/s, load start to lag 0 | {r['worker_per_s_overall']:,.0f} |",
        f"| consumer lag: at the load's end / max | {r['lag_at_load_end']:,} / {r['max_lag']:,} |",
        f"| worker at lag 0 after Debezium's last event | {r['worker_caught_up_after_last_event_s']} s |",
        f"| **catch-up**: Debezium's last event → `verify --full` clean, all three tables (target ≤ "
        f"{r['target_catch_up_s']:.0f} s) | **{r['catch_up_s']} s** (verify rounds: {len(r['verify_rounds'])}, "
        f"the last took {last['seconds']} s) |",
        f"| load end → clean | {r['clean_after_load_s']} s |",
        f"| CPU per captured change, load start to clean: worker / Connect (Debezium) | "
        f"{r['worker_cpu_us_per_event']} µs / {r['connect_cpu_us_per_event']} µs |",
        f"| CPU (cores) during the load | {cores} |",
        f"| CPU (cores) during the catch-up | {cores_cu} |",
        f"| load average (1, 5, 15 min) at start / end | {la0[0]}, {la0[1]}, {la0[2]} / {la1[0]}, {la1[1]}, "
        f"{la1[2]} |",
        "",
        f"Initial snapshot before the load: {r['snapshot_rows']:,} rows, processed {r['snapshot_s']} s after the "
        "connector was created. The machine was shared with other engineers' test runs (see the load "
        "average), so the absolute numbers are from a loaded machine.",
        "",
        *common.profile_lines(r.get("catch_up_profile"), "in the catch-up"),
        "![pgbench](img/bench-pgbench.png)",
        "",
    ])


def _plot(r: dict[str, Any]) -> list[Path]:
    plt = common.pyplot()
    path = common.plot_path("pgbench")
    s = r["series"]
    t = [x["t"] for x in s]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    prog = r["progress"]
    a1.step([x[0] for x in prog], [CHANGES_PER_TX * x[1] for x in prog], where="post", color="black",
            label="source: 3 × pgbench tps")
    a1.plot(t, [x["captured_per_s"] for x in s], color="#4c72b0", label="captured (end offsets), 5 s average")
    a1.plot(t, [x["processed_per_s"] for x in s], color="#dd8452", label="worker (committed offsets), 5 s average",
            alpha=0.8)
    a1.set_ylabel("changes/s")
    a1.legend(fontsize=8)
    a2.plot(t, [x["captured"] - r["snapshot_rows"] for x in s], color="#4c72b0", label="captured (cumulative)")
    a2.plot(t, [x["processed"] - r["snapshot_rows"] for x in s], color="#dd8452", label="worker committed")
    a2.plot(t, [x["lag"] for x in s], color="#c44e52", label="consumer lag")
    m = r["marks"]
    for key, label, style in (("load_end_s", "load ends", "--"), ("last_event_s", "Debezium's last event", ":"),
                              ("clean_s", "verify clean", "-.")):
        for ax in (a1, a2):
            ax.axvline(m[key], color="grey", linestyle=style, label=label if ax is a2 else None)
    a2.set_xlabel("seconds since the load started")
    a2.set_ylabel("changes")
    a2.legend(fontsize=8)
    return common.save_plot(plt, fig, path, f"pgbench TPC-B-like, scale {r['scale']}, {r['clients']} clients, "
                            f"{r['seconds']} s: {r['tps']:,.0f} tps; catch-up {r['catch_up_s']} s "
                            "(loaded 2-core machine)")


def _run_sized(size: str, events: int | None = None) -> dict[str, Any]:
    if events is not None:
        raise SystemExit("pgbench runs for a fixed time (smoke 5 s, full 60 s); --events does not apply")
    return _run(size)


class PgBench:
    """``python -m bench pgbench [--size smoke|full]``"""

    run = staticmethod(_run_sized)
    markdown = staticmethod(_markdown)
    plot = staticmethod(_plot)
