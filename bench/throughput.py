"""Throughput of the real worker vs a plain consumer loop on the same preloaded Debezium topic.

Scenarios (``python -m bench <name>``):

* ``index-only-throughput``: table profile ``index_only``; baseline = aiokafka -> json.loads ->
  bulk (500) -> Elasticsearch (bench/baselines.py). Done = the index shows the final state of
  every key: as many documents as live keys and the sum of their ``rev`` column equal to the
  sum of each live key's last ``rev`` (a search after ``_refresh``, every 0.25 s).
* ``archive-throughput``: table profile ``archive`` to the object store (s3://, versitygw);
  baseline = aiokafka -> json.loads -> gzip JSON Lines per partition -> put_object. Done = for
  every partition, the object ending at its last change event is stored (listing every 0.25 s).
  Objects are cut every ``max_records`` change events of a partition (cdcstream's record-count
  boundary; both pipelines use the same M), and each partition's event count is padded with
  inserts to a multiple of M, so both pipelines flush everything without a wall-clock timer.
* ``scale-out``: ``index-only`` with one worker vs two workers of the same app (same topic,
  4 partitions split 2+2).

One topic is preloaded once per invocation (N records, Kafka's default partitioner on the
Debezium key, 4 partitions); every run uses a fresh index/prefix and a fresh app id, so each
consumes the whole topic from the beginning. Runs alternate which pipeline goes first.
Rates are Kafka records per second (tombstones included: both pipelines read them).
Two rates per pipeline: ``wall`` = from process start (worker: supervisor, Faust start-up,
partition assignment) to the final state; ``steady`` = from the first document/object
visible to the final state (start-up excluded).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import common
from bench.common import DebeziumOrders, Es, Expected, WorkerProc, median
from tests.support import delete_topics, topics_starting

PARTITIONS = 4
TARGET = 0.8


def _sizes(size: str, events: int | None, full: int = 50_000) -> tuple[int, int]:
    # Full size fits "a few minutes" on the shared 2-core machine; --events N for more.
    n = events or (full if size == "full" else 2_000)
    runs = 3 if size == "full" else 1
    return n, runs


# --- workload ------------------------------------------------------------------------------
def _workload(prefix: str, n: int, archive_every: int | None) -> tuple[list[tuple[bytes, bytes | None]], Expected,
                                                                       dict[int, int]]:
    gen = DebeziumOrders(prefix, seed=7)
    records, exp = gen.generate(n)
    last_event: dict[int, int] = {}
    if archive_every:
        # Pad every partition's change-event count (tombstones are not archived) to a multiple of M.
        events = dict.fromkeys(range(PARTITIONS), 0)
        for k, v in records:
            if v is not None:
                events[common.partition_for(k, PARTITIONS)] += 1
        new_id = max(1, n // 4) + 1
        while any(c % archive_every for c in events.values()):
            k = gen.key(new_id)
            p = common.partition_for(k, PARTITIONS)
            if events[p] % archive_every:
                records.append((k, gen.value("c", None, gen._row(new_id, 1, int(time.time() * 1e6)))))
                exp.live[new_id] = 1
                exp.changes["c"] += 1
                exp.records += 1
                events[p] += 1
            new_id += 1
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for k, v in records:
        p = common.partition_for(k, PARTITIONS)
        if v is not None:
            last_event[p] = offsets[p]
        offsets[p] += 1
    return records, exp, last_event


# --- progress checks -----------------------------------------------------------------------
def _es_progress(es: Es, index: str, exp: Expected) -> Callable[[], tuple[int, bool]]:
    def check() -> tuple[int, bool]:
        n, s = es.count_and_sum(index)
        return n, (n == exp.live_count and s == exp.rev_sum)
    return check


class S3:
    def __init__(self, objectstore: dict[str, Any]) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = objectstore["bucket"]
        self.endpoint = objectstore["endpoint"]
        self.ak, self.sk = objectstore["access_key"], objectstore["secret_key"]
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=objectstore.get("region"),
                                   aws_access_key_id=self.ak, aws_secret_access_key=self.sk,
                                   config=BotoConfig(s3={"addressing_style": "path"}))

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/"):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def lines(self, prefix: str) -> int:
        import gzip

        return sum(len(gzip.decompress(self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read())
                       .splitlines()) for k in self.keys(prefix))

    def delete(self, prefix: str) -> int:
        keys = self.keys(prefix)
        for i in range(0, len(keys), 500):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 500]], "Quiet": True})
        return len(keys)


def _s3_progress(s3: S3, prefix: str, last_event: dict[int, int]) -> Callable[[], tuple[int, bool]]:
    def check() -> tuple[int, bool]:
        # Units: records (offsets) covered by the stored objects; objects of one partition are
        # contiguous in offsets, so the first object starts at 0 and each next one after the last.
        done: dict[int, int] = {}
        covered = 0
        for k in s3.keys(prefix):
            p, first, last = k.rsplit("/", 1)[1].removesuffix(".jsonl.gz").split("-")
            done[int(p)] = max(done.get(int(p), -1), int(last))
            covered += int(last) - int(first) + 1
        return covered, all(done.get(p, -1) >= off for p, off in last_event.items())
    return check


# --- one pipeline run ----------------------------------------------------------------------
def _rates(records: int, vis: common.Visibility, units_are_records: bool) -> dict[str, Any]:
    """``steady`` counts the records processed after the first visible result: exact for the
    archive (objects name their offset ranges); for the index it includes the first bulk
    (<= 500 records, the same for both pipelines)."""
    assert vis.done_s is not None
    first = vis.first_s or 0.0
    steady = vis.done_s - first
    after_first = records - (vis.first_units if units_are_records else 0)
    return {"wall_s": round(vis.done_s, 2), "first_visible_s": round(first, 2), "steady_s": round(steady, 2),
            "wall_rate": round(records / vis.done_s, 1),
            "steady_rate": round(after_first / steady, 1) if steady > 0.5 else None}


def _run_baseline(kind: str, args: list[str], progress: Callable[[], tuple[int, bool]], records: int,
                  env: dict[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bench.baselines", kind, *args, "--records", str(records)],
                            cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meter = common.CpuMeter(progress, lambda: proc.pid)
    try:
        vis = common.watch(meter, t0, timeout, alive=lambda: proc.poll() in (None, 0))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed: {err.decode()[-2000:]}")
    consumed = int(json.loads(out.decode().strip().splitlines()[-1])["consumed"])
    return {**_rates(records, vis, kind == "archive"), "consumed": consumed,
            "cpu_us_per_record": meter.us_per_record(_steady_records(records, vis, kind == "archive"))}


def _steady_records(records: int, vis: common.Visibility, units_are_records: bool) -> int:
    return records - (vis.first_units if units_are_records else 0)


def _run_workers(tmp: Path, app_id: str, env: dict[str, str], progress: Callable[[], tuple[int, bool]], records: int,
                 workers: int = 1, timeout: float = 1800, profile_s: float = 0,
                 units_are_records: bool = False, stall_s: float | None = None) -> dict[str, Any]:
    procs = [WorkerProc(tmp, app_id, env, name=f"w{i + 1}") for i in range(workers)]
    t0 = time.monotonic()
    for w in procs:
        w.start()
    profile: str | None = None
    try:
        if profile_s:
            import threading

            holder: dict[str, str | None] = {}

            def prof() -> None:
                # Steady state only: start when the first results are visible (start-up excluded).
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    with contextlib.suppress(Exception):
                        if progress()[0] > 0:
                            break
                    time.sleep(0.5)
                holder["raw"] = common.profile_worker(procs[0].proc.pid if procs[0].proc else 0, profile_s,
                                                      tmp / f"{app_id}.pyspy")
            th = threading.Thread(target=prof, daemon=True)
            th.start()
        # CPU of every worker process (supervisor and worker) over the steady span.
        meter = common.CpuMeter(progress, lambda: procs[0].proc.pid if procs[0].proc else 0)
        try:
            vis = common.watch(meter, t0, timeout, alive=lambda: all(w.alive() for w in procs), stall_s=stall_s)
        except common.Stalled as e:
            # Reported, not raised: a stalled run is a result (scale-out), with what Kafka says.
            import asyncio

            return {"stalled": True, "stalled_at_progress": e.progress, "stalled_at_s": round(e.at_s, 1),
                    "stall_s": stall_s, "wall_rate": None, "steady_rate": None,
                    "committed_offsets": asyncio.run(_committed(app_id)), **_worker_counters(procs[0])}
        # Every worker's CPU from its start to the final state (start-up and rebalances included):
        # how the work spreads over the workers, and what it costs in all.
        cpu_each = [round(common.cpu_seconds(w.proc.pid), 2) if w.proc else 0.0 for w in procs]
        counters = _worker_counters(procs[0])
        if profile_s:
            th.join(profile_s + 90)
            profile = holder.get("raw")
    except Exception:
        for w in procs:
            print(w.tail(), file=sys.stderr)
        raise
    finally:
        for w in procs:
            w.stop()
    out = {**_rates(records, vis, units_are_records), **counters, "cpu_s_per_worker": cpu_each,
           "cpu_us_per_record_whole_run": round(sum(cpu_each) * 1e6 / records, 1)}
    if workers == 1:
        out["cpu_us_per_record"] = meter.us_per_record(_steady_records(records, vis, units_are_records))
    if profile:
        out["profile"] = common.summarize_profile(profile)
    return out


async def _committed(group: str) -> dict[str, int]:
    admin = await common._admin()
    try:
        offs = await admin.list_consumer_group_offsets(group)
        return {f"{tp.topic}[{tp.partition}]": o.offset for tp, o in sorted(offs.items()) if ".public." in tp.topic}
    finally:
        await admin.close()


def _worker_counters(w: WorkerProc, settle_s: float = 15) -> dict[str, Any]:
    """The worker's own counters (the cluster-wide stats GlobalTable, which lags the sinks by its
    changelog round trip), summed over its tables, once two reads a second apart agree."""
    def read() -> dict[str, int]:
        total: dict[str, int] = {}
        for t in w.api("/api/tables")["tables"]:
            for k, v in t.get("stats", {}).items():
                if isinstance(v, int) and not k.endswith("_ms"):
                    total[k] = total.get(k, 0) + v
        return total

    last: dict[str, int] | None = None
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        try:
            now = read()
        except Exception:  # noqa: BLE001 - counters are informative only
            now = {}
        if now and now == last:
            break
        last = now
        time.sleep(1.0)
    return {"worker_counters": last or {}}


# --- scenarios -----------------------------------------------------------------------------
def _scenario(kind: str, size: str, events: int | None) -> dict[str, Any]:
    n, runs = _sizes(size, events, 30_000 if kind == "scale" else 50_000)
    st = common.stack()
    es = Es(st["elasticsearch"]["url"])
    tag = common.new_tag()
    prefix = f"bench-{tag}"
    archive_every = (2000 if size == "full" else 250) if kind == "archive" else None
    records, exp, last_event = _workload(prefix, n, archive_every)
    topic = f"{prefix}.public.orders"
    s3 = S3(st["objectstore"]) if kind == "archive" else None
    result: dict[str, Any] = {
        "scenario": f"{kind}-throughput" if kind != "scale" else "scale-out", "size": size, "runs": runs,
        "records": exp.records, "change_events": {k: v for k, v in exp.changes.items()}, "keys_live": exp.live_count,
        "partitions": PARTITIONS, "topic_bytes": sum(len(k) + len(v or b"") for k, v in records),
    }
    if archive_every:
        result["archive_max_records"] = archive_every
    groups: list[str] = []
    try:
        result["preload_s"] = round(common.preload(topic, PARTITIONS, records), 1)
        del records
        ends = __import__("asyncio").run(common.end_offsets(topic))
        result["records_in_topic"] = sum(ends.values())
        result["partition_ends"] = {str(p): n for p, n in sorted(ends.items())}
        base_runs: list[dict[str, Any]] = []
        cdc_runs: list[dict[str, Any]] = []
        two_runs: list[dict[str, Any]] = []
        four_runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="bench-") as d:
            tmp = Path(d)
            for r in range(runs):
                app_id = f"{prefix}-r{r}"
                groups.append(app_id)
                cfg = tmp / f"{app_id}.json"
                order: list[tuple[str, Callable[[], dict[str, Any]]]]
                if kind == "archive":
                    assert s3 is not None and archive_every is not None
                    base_prefix, cdc_prefix = f"{prefix}/base-r{r}", f"{prefix}/cdc-r{r}"
                    common.worker_config(cfg, app_id, prefix, [{"name": "public.orders", "profile": "archive"}])
                    env = common.worker_env(app_id, cfg, PARTITIONS, archive_url=s3.url(cdc_prefix),
                                            archive_access_key="env:BENCH_S3_ACCESS_KEY",
                                            archive_secret_key="env:BENCH_S3_SECRET_KEY",
                                            archive_max_records=str(archive_every), elasticsearch_url="")
                    env.update({"BENCH_S3_ACCESS_KEY": s3.ak, "BENCH_S3_SECRET_KEY": s3.sk})
                    order = [
                        ("base", partial(_run_baseline, "archive", ["--topic", topic, "--url", s3.url(base_prefix),
                                                                    "--max-records", str(archive_every)],
                                         _s3_progress(s3, base_prefix, last_event), exp.records, env=env)),
                        ("cdc", partial(_run_workers, tmp, app_id, env, _s3_progress(s3, cdc_prefix, last_event),
                                        exp.records, units_are_records=True)),
                    ]
                else:
                    es_url = st["elasticsearch"]["url"]
                    base_index, cdc_index = f"{prefix}-base-r{r}", f"{prefix}-cdc-r{r}"
                    common.worker_config(cfg, app_id, prefix, [{"name": "public.orders", "profile": "index_only",
                                                                "index": cdc_index}])
                    env = common.worker_env(app_id, cfg, PARTITIONS, elasticsearch_url=es_url.replace("http://",
                                                                                                      "es://"))
                    cdc = partial(_run_workers, tmp, app_id, env, _es_progress(es, cdc_index, exp), exp.records)
                    if kind == "scale":
                        # One worker vs two and four workers of one app (an app id each, so each
                        # starts from offset 0).
                        # A stall (no progress for 90 s) ends a run with a recorded result instead of
                        # waiting out the timeout: it happened with two workers (see docs/benchmarks.md).
                        order = [("one", partial(cdc, stall_s=90))]
                        for name, count in (("two", 2), ("four", 4)):
                            app_n = f"{prefix}-r{r}-{name}"
                            groups.append(app_n)
                            cfg_n = tmp / f"{app_n}.json"
                            idx_n = f"{prefix}-{name}-r{r}"
                            common.worker_config(cfg_n, app_n, prefix, [{"name": "public.orders",
                                                                         "profile": "index_only", "index": idx_n}])
                            env_n = {**env, "CDCSTREAM_APP_ID": app_n, "CDCSTREAM_CONFIG": str(cfg_n)}
                            order.append((name, partial(_run_workers, tmp, app_n, env_n, _es_progress(es, idx_n, exp),
                                                        exp.records, workers=count, stall_s=90)))
                    else:
                        # The worker creates its index with 1 shard, 0 replicas: so does the baseline.
                        es.req("PUT", f"/{base_index}", {"settings": {"number_of_shards": 1,
                                                                      "number_of_replicas": 0}})
                        order = [("base", partial(_run_baseline, "index", ["--topic", topic, "--index", base_index,
                                                                           "--es", es_url],
                                                  _es_progress(es, base_index, exp), exp.records)),
                                 ("cdc", cdc)]
                if r % 2:
                    order.reverse()
                for name, fn in order:
                    res = fn()
                    print(f"run {r + 1}/{runs} {name}: {res.get('steady_rate')} rec/s steady, "
                          f"{res['wall_rate']} rec/s wall{' STALLED' if res.get('stalled') else ''}",
                          file=sys.stderr)
                    {"base": base_runs, "cdc": cdc_runs, "one": cdc_runs, "two": two_runs,
                     "four": four_runs}[name].append(res)
            if kind == "archive":
                assert s3 is not None
                result["archived_lines"] = {"baseline": s3.lines(f"{prefix}/base-r0"),
                                            "cdcstream": s3.lines(f"{prefix}/cdc-r0")}
            result["events_expected_archived"] = exp.changes["c"] + exp.changes["u"] + exp.changes["d"]
        if kind == "scale":
            result["one_worker"] = cdc_runs
            result["two_workers"] = two_runs
            result["four_workers"] = four_runs
            # Medians over the runs that completed; stalled runs are counted and shown separately.
            by = {"one": cdc_runs, "two": two_runs, "four": four_runs}
            result["stalled_runs"] = {k: sum(1 for x in v if x.get("stalled")) for k, v in by.items()}
            for key in ("wall_rate", "steady_rate", "cpu_us_per_record_whole_run"):
                for k, v in by.items():
                    result[f"median_{k}_{key}"] = median([x.get(key) for x in v])
            for k in ("two", "four"):
                for key in ("wall_rate", "steady_rate"):
                    one, n = result[f"median_one_{key}"], result[f"median_{k}_{key}"]
                    result[f"speedup_{k}_{key}"] = round(n / one, 3) if one and n else None
            # Older key names, kept for results already written.
            result["speedup_steady_rate"] = result["speedup_two_steady_rate"]
            result["speedup_wall_rate"] = result["speedup_two_wall_rate"]
        else:
            result["baseline"] = base_runs
            result["cdcstream"] = cdc_runs
            for key in ("wall_rate", "steady_rate"):
                b = median([x[key] for x in base_runs])
                c = median([x[key] for x in cdc_runs])
                result[f"median_baseline_{key}"] = b
                result[f"median_cdcstream_{key}"] = c
                result[f"ratio_{key}"] = round(c / b, 3) if b and c else None
            result["target_ratio"] = TARGET
            result["ratio_median_of_runs"] = round(median([c["steady_rate"] / b["steady_rate"]
                                                           for b, c in zip(base_runs, cdc_runs, strict=True)
                                                           if b["steady_rate"] and c["steady_rate"]]), 3)
        if kind != "scale" and size == "full" and (result.get("ratio_steady_rate") or 1) < TARGET:
            result["profile_note"] = "py-spy profile of one extra (not counted) worker run"
            result["profile"] = _profile_run(kind, tmp_prefix=prefix, st=st, es=es, s3=s3, exp=exp,
                                             last_event=last_event, topic=topic, groups=groups,
                                             archive_every=archive_every)
    finally:
        _cleanup(prefix, es, s3, groups)
    return result


def _profile_run(kind: str, *, tmp_prefix: str, st: dict[str, Any], es: Es, s3: S3 | None, exp: Expected,
                 last_event: dict[int, int], topic: str, groups: list[str], archive_every: int | None) -> Any:
    app_id = f"{tmp_prefix}-prof"
    groups.append(app_id)
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        tmp = Path(d)
        cfg = tmp / "prof.json"
        if kind == "archive":
            assert s3 is not None
            cp = f"{tmp_prefix}/prof"
            common.worker_config(cfg, app_id, tmp_prefix, [{"name": "public.orders", "profile": "archive"}])
            env = common.worker_env(app_id, cfg, PARTITIONS, archive_url=s3.url(cp),
                                    archive_access_key="env:BENCH_S3_ACCESS_KEY",
                                    archive_secret_key="env:BENCH_S3_SECRET_KEY",
                                    archive_max_records=str(archive_every), elasticsearch_url="")
            env.update({"BENCH_S3_ACCESS_KEY": s3.ak, "BENCH_S3_SECRET_KEY": s3.sk})
            progress = _s3_progress(s3, cp, last_event)
        else:
            idx = f"{tmp_prefix}-prof"
            common.worker_config(cfg, app_id, tmp_prefix, [{"name": "public.orders", "profile": "index_only",
                                                            "index": idx}])
            env = common.worker_env(app_id, cfg, PARTITIONS,
                                    elasticsearch_url=st["elasticsearch"]["url"].replace("http://", "es://"))
            progress = _es_progress(es, idx, exp)
        res = _run_workers(tmp, app_id, env, progress, exp.records, profile_s=20,
                           units_are_records=kind == "archive")
    return {"steady_rate_while_profiled": res.get("steady_rate"), "buckets": res.get("profile")}


def _cleanup(prefix: str, es: Es, s3: S3 | None, groups: list[str]) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        es.delete_matching(f"{prefix}-*")
    if s3 is not None:
        with contextlib.suppress(Exception):
            s3.delete(prefix)
    with contextlib.suppress(Exception):
        delete_topics(topics_starting(prefix))
    common.delete_consumer_groups(groups)


# --- entry points --------------------------------------------------------------------------
class IndexOnly:
    name = "index-only-throughput"

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        return _scenario("index-only", size, events)

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return _markdown(r, "Index-only throughput", "aiokafka → json.loads → bulk(500) → Elasticsearch")

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        return [_plot(r, "index-only-throughput", "index_only: cdcstream worker vs plain consumer loop")]


class Archive:
    name = "archive-throughput"

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        return _scenario("archive", size, events)

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return _markdown(r, "Archive throughput",
                         "aiokafka → json.loads → gzip JSON Lines per partition → S3 put_object")

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        return [_plot(r, "archive-throughput", "archive (s3:// versitygw): cdcstream worker vs plain loop")]


class ScaleOut:
    name = "scale-out"

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        return _scenario("scale", size, events)

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        def rate(x: float | None) -> str:
            return f"{x:.0f}" if x else "n/a"

        def speed(x: float | None) -> str:
            return f"{x:.2f}×" if x else "n/a"

        def run_txt(x: dict[str, Any]) -> str:
            if x.get("stalled"):
                offs = ", ".join(f"p{k.rsplit('[', 1)[1].rstrip(']')}={v}" for k, v in x["committed_offsets"].items())
                return (f"**stalled** (no progress for {x['stall_s']:.0f} s, {x['stalled_at_progress']} documents; "
                        f"committed offsets {offs})")
            return f"{x['steady_rate']:.0f} steady / {x['wall_rate']:.0f} wall"

        st = r.get("stalled_runs", {"one": 0, "two": 0, "four": 0})
        ends = ", ".join(f"p{p}={n}" for p, n in sorted(r.get("partition_ends", {}).items()))
        kinds = [k for k in ("one", "two", "four") if r.get(f"{k}_worker" if k == "one" else f"{k}_workers")]
        runs_of = {k: r[f"{k}_worker" if k == "one" else f"{k}_workers"] for k in kinds}
        heads = {"one": "one worker", "two": "two workers", "four": "four workers"}

        def cpu_txt(x: dict[str, Any]) -> str:
            each = x.get("cpu_s_per_worker")
            return " + ".join(f"{c:.1f}" for c in each) + " s" if each else "n/a"

        rows = [
            f"### Scale-out: one vs {' vs '.join(heads[k].split()[0] for k in kinds[1:])} workers ({r['size']}: "
            f"{r['records']} records, {r['partitions']} partitions, index_only; median of the completed runs out of "
            f"{r['runs']})", "",
            "| measure (median of completed runs) | " + " | ".join(heads[k] for k in kinds) + " |",
            "|---|" + "---|" * len(kinds),
            "| steady rate (records/s) | " + " | ".join(
                rate(r.get(f"median_{k}_steady_rate")) + (f" ({speed(r.get(f'speedup_{k}_steady_rate'))})"
                                                          if k != "one" else "") for k in kinds) + " |",
            "| wall rate incl. start-up (records/s) | " + " | ".join(
                rate(r.get(f"median_{k}_wall_rate")) + (f" ({speed(r.get(f'speedup_{k}_wall_rate'))})"
                                                        if k != "one" else "") for k in kinds) + " |",
            "| CPU per record, all workers, start → final state (µs) | " + " | ".join(
                rate(r.get(f"median_{k}_cpu_us_per_record_whole_run")) for k in kinds) + " |",
            "| runs that stalled | " + " | ".join(f"{st.get(k, 0)} of {r['runs']}" for k in kinds) + " |",
            "",
            "Per run (records/s steady / wall; CPU seconds of each worker, start → final state): " + "; ".join(
                f"run {i + 1}: " + ", ".join(f"{heads[k]} {run_txt(runs_of[k][i])} ({cpu_txt(runs_of[k][i])})"
                                             for k in kinds if i < len(runs_of[k]))
                for i in range(r["runs"])) + ".",
            f"Partition end offsets: {ends}." if ends else "",
            "",
            "![scale-out](img/bench-scale-out.png)", "",
        ]
        return "\n".join(rows)

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        plt = common.pyplot()
        path = common.plot_path("scale-out")
        fig, ax = plt.subplots(figsize=(6, 3.2))
        kinds = [k for k in ("one", "two", "four") if r.get(f"{k}_worker" if k == "one" else f"{k}_workers")]
        labels = [f"{k} worker{'s' if k != 'one' else ''}" for k in kinds]
        vals = [r.get(f"median_{k}_steady_rate") or 0 for k in kinds]
        ax.bar(labels, vals, color=["#4c72b0", "#55a868", "#dd8452"][:len(kinds)])
        for i, k in enumerate(kinds):
            runs = r[f"{k}_worker" if k == "one" else f"{k}_workers"]
            done = [x["steady_rate"] for x in runs if x.get("steady_rate")]
            ax.scatter([i] * len(done), done, color="black", s=12, zorder=3)
            stalled = sum(1 for x in runs if x.get("stalled"))
            if stalled:
                ax.annotate(f"{stalled} run(s) stalled", (i, max(vals) * 0.05 + 1), ha="center", color="#c44e52",
                            fontsize=8)
        ax.set_ylabel("records/s (steady)")
        ax.set_title(f"scale-out, {r['records']} records, median of completed runs of {r['runs']} (dots: runs)",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


def _markdown(r: dict[str, Any], title: str, baseline: str) -> str:
    ch = r["change_events"]
    per_run = ", ".join(f"{c['steady_rate'] / b['steady_rate']:.2f}" if b["steady_rate"] and c["steady_rate"]
                        else "n/a" for b, c in zip(r["baseline"], r["cdcstream"], strict=True))
    lines = [
        f"### {title} ({r['size']}: {r['records']} records, {r['partitions']} partitions; median of {r['runs']} "
        f"run(s))", "",
        f"Workload: one preloaded Debezium topic, {ch['c']} c / {ch['u']} u / {ch['d']} d + {ch['tombstone']} "
        f"tombstones over {r['keys_live']} live keys at the end, {r['topic_bytes'] / r['records']:.0f} bytes per "
        f"record (JsonConverter with schemas). Baseline: {baseline}.", "",
        "| measure (median) | baseline | cdcstream | ratio (target ≥ 0.8) |", "|---|---|---|---|",
        f"| steady rate, first visible → final state (records/s) | {r['median_baseline_steady_rate']:.0f} | "
        f"{r['median_cdcstream_steady_rate']:.0f} | {r['ratio_steady_rate']:.2f} |",
        f"| wall rate, process start → final state (records/s) | {r['median_baseline_wall_rate']:.0f} | "
        f"{r['median_cdcstream_wall_rate']:.0f} | {r['ratio_wall_rate']:.2f} |",
        f"| start-up, process start → first visible (s) | {median([x['first_visible_s'] for x in r['baseline']]):.1f}"
        f" | {median([x['first_visible_s'] for x in r['cdcstream']]):.1f} | |",
    ]
    bcpu = median([x["cpu_us_per_record"] for x in r["baseline"] if x.get("cpu_us_per_record")] or [0])
    ccpu = median([x["cpu_us_per_record"] for x in r["cdcstream"] if x.get("cpu_us_per_record")] or [0])
    if bcpu and ccpu:
        lines.append(f"| CPU per record, steady span (µs; worker: supervisor + worker process) | {bcpu:.0f} | "
                     f"{ccpu:.0f} | {bcpu / ccpu:.2f} |")
    lines += [
        "",
        f"Per-run steady ratios: {per_run} (median {r['ratio_median_of_runs']:.2f}).",
    ]
    if r.get("archived_lines"):
        lines.append(f"Archived lines checked after run 1: baseline {r['archived_lines']['baseline']}, cdcstream "
                     f"{r['archived_lines']['cdcstream']} (change events: {r['events_expected_archived']}); "
                     f"objects every {r['archive_max_records']} events per partition.")
    prof = r.get("profile")
    if prof and prof.get("buckets"):
        lines += ["", f"Where the worker's time goes (py-spy, 20 s of one extra run at "
                      f"{prof.get('steady_rate_while_profiled')} records/s, share of samples):", "",
                  "| where | share |", "|---|---|"]
        lines += [f"| {k} | {v:.0%} |" for k, v in prof["buckets"]]
    slug = r["scenario"]
    lines += ["", f"![{slug}](img/bench-{slug}.png)", ""]
    return "\n".join(lines)


def _plot(r: dict[str, Any], slug: str, title: str) -> Path:
    plt = common.pyplot()
    path = common.plot_path(slug)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = ["baseline", "cdcstream"]
    for ax, key, what in ((a1, "steady_rate", "steady"), (a2, "wall_rate", "wall incl. start-up")):
        vals = [r[f"median_baseline_{key}"], r[f"median_cdcstream_{key}"]]
        ax.bar(labels, vals, color=["#8c8c8c", "#4c72b0"])
        for i, runs in enumerate((r["baseline"], r["cdcstream"])):
            ax.scatter([i] * len(runs), [x[key] for x in runs], color="black", s=12, zorder=3)
        ax.set_ylabel("records/s")
        ax.set_title(f"{what}: ratio {r[f'ratio_{key}']:.2f}", fontsize=9)
    fig.suptitle(f"{title}\n{r['records']} records, median of {r['runs']} run(s) (dots: runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
