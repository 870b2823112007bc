"""Shared pieces of the throughput-style benchmarks.

* ``DebeziumOrders``: realistic Debezium PostgreSQL change events (JsonConverter with
  schemas, the shape of tests/fixtures/debezium-postgres/kafka_connect_distributed), many
  keys, a c/u/d mix with the tombstone Debezium writes after every delete.
* ``preload``: a fresh topic named like a Debezium topic, filled before anything consumes.
* ``WorkerProc``: the real worker (``python -m cdcstream.cli worker``) on such a topic.
  The worker subscribes to every topic of its config that exists in Kafka
  (``cdcstream/runtime/app.py: create_app``), so no connector has to exist: the config only has to
  name a connector whose ``topic_prefix`` is the preloaded topic's prefix.
* Clean-up by exact name: topics, indices, consumer groups, objects (topics, free ports and the
  worker API client come from ``tests.support``, shared with the tests).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from tests.support import WorkerApi, free_port

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = "127.0.0.1:9092"


# --- the stack -----------------------------------------------------------------------------
def stack() -> dict[str, dict[str, Any]]:
    """Endpoints of the running local stack (``cdcstream stack status --json``)."""
    from cdcstream.stack.manager import Stack

    return {s.name: s.as_dict() for s in Stack().status()}


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


def median(xs: Sequence[float | None]) -> float:
    vals = [float(x) for x in xs if x is not None]
    return float(statistics.median(vals)) if vals else 0.0


# --- Debezium events -----------------------------------------------------------------------
def _f(typ: str, field_name: str, optional: bool, **extra: Any) -> dict[str, Any]:
    return {"type": typ, "optional": optional, **extra, "field": field_name}


def _row_fields() -> list[dict[str, Any]]:
    dec = {"name": "org.apache.kafka.connect.data.Decimal", "version": 1,
           "parameters": {"scale": "2", "connect.decimal.precision": "12"}}
    return [
        _f("int32", "id", False, default=0),
        _f("int32", "customer_id", False),
        _f("string", "customer", False),
        _f("string", "email", True),
        _f("string", "status", False, default="new"),
        _f("bytes", "amount", False, **dec),
        _f("int32", "qty", False),
        _f("int32", "rev", False),
        _f("int64", "ordered_at", False, name="io.debezium.time.MicroTimestamp", version=1, default=0),
        _f("string", "updated_tz", False, name="io.debezium.time.ZonedTimestamp", version=1,
           default="1970-01-01T00:00:00.000000Z"),
        _f("string", "attrs", True, name="io.debezium.data.Json", version=1),
        _f("string", "note", True),
    ]


_SOURCE_FIELDS = [
    _f("string", "version", False), _f("string", "connector", False), _f("string", "name", False),
    _f("int64", "ts_ms", False),
    _f("string", "snapshot", True, name="io.debezium.data.Enum", version=1,
       parameters={"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
       default="false"),
    _f("string", "db", False), _f("string", "sequence", True), _f("int64", "ts_us", True),
    _f("int64", "ts_ns", True), _f("string", "schema", False), _f("string", "table", False),
    _f("int64", "txId", True), _f("int64", "lsn", True), _f("int64", "xmin", True),
    _f("string", "origin", True), _f("int64", "origin_lsn", True),
]

STATUSES = ("new", "paid", "packed", "shipped", "delivered", "returned")
WORDS = ("fragile express gift invoice priority weekend warehouse courier pallet customs "
         "returned signature insured tracking").split()


def _decimal_b64(v: Decimal) -> str:
    unscaled = int(v.scaleb(2))
    n = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()


@dataclass
class Expected:
    """The final state the sink must show: live keys and the sum of their ``rev`` column."""

    records: int = 0  # Kafka records, tombstones included
    changes: dict[str, int] = field(default_factory=lambda: {"c": 0, "u": 0, "d": 0, "tombstone": 0})
    live: dict[int, int] = field(default_factory=dict)  # id -> rev of its last event

    @property
    def live_count(self) -> int:
        return len(self.live)

    @property
    def rev_sum(self) -> int:
        return sum(self.live.values())


class DebeziumOrders:
    """Change events of ``public.orders`` as Debezium 3.6 (pgoutput, JsonConverter, schemas on) writes them."""

    def __init__(self, prefix: str, seed: int = 1, db: str = "shop") -> None:
        self.prefix, self.db = prefix, db
        self.rng = random.Random(seed)  # noqa: S311 - test data
        name = f"{prefix}.public.orders"
        row = {"type": "struct", "fields": _row_fields(), "optional": True, "name": f"{name}.Value"}
        self.key_schema = {"type": "struct", "fields": [_f("int32", "id", False, default=0)], "optional": False,
                           "name": f"{name}.Key"}
        self.value_schema = {
            "type": "struct", "optional": False, "name": f"{name}.Envelope", "version": 2,
            "fields": [
                {**row, "field": "before"}, {**row, "field": "after"},
                {"type": "struct", "fields": _SOURCE_FIELDS, "optional": False,
                 "name": "io.debezium.connector.postgresql.Source", "version": 1, "field": "source"},
                {"type": "struct", "optional": True, "name": "event.block", "version": 1, "field": "transaction",
                 "fields": [_f("string", "id", False), _f("int64", "total_order", False),
                            _f("int64", "data_collection_order", False)]},
                _f("string", "op", False), _f("int64", "ts_ms", True), _f("int64", "ts_us", True),
                _f("int64", "ts_ns", True),
            ],
        }
        self.lsn = 40_000_000
        self.tx = 800

    @property
    def topic(self) -> str:
        return f"{self.prefix}.public.orders"

    def key(self, i: int) -> bytes:
        return json.dumps({"schema": self.key_schema, "payload": {"id": i}}, separators=(",", ":")).encode()

    def _row(self, i: int, rev: int, now_us: int) -> dict[str, Any]:
        r = self.rng
        cust = r.randrange(1, 5000)
        return {
            "id": i, "customer_id": cust, "customer": f"Customer {cust}", "email": f"c{cust}@example.com",
            "status": STATUSES[min(rev, len(STATUSES) - 1)],
            "amount": _decimal_b64(Decimal(r.randrange(1, 10_000_000)) / 100), "qty": r.randrange(1, 20),
            "rev": rev, "ordered_at": now_us - r.randrange(0, 86_400_000_000),
            "updated_tz": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now_us / 1e6)),
            "attrs": json.dumps({"gift": r.random() < 0.2, "tags": r.sample(WORDS, 2)}),
            "note": " ".join(r.choice(WORDS) for _ in range(r.randrange(4, 16))),
        }

    def _deleted_before(self, i: int) -> dict[str, Any]:
        # REPLICA IDENTITY DEFAULT: only the key; NOT NULL columns get their type's default.
        return {"id": i, "customer_id": 0, "customer": "", "email": None, "status": "", "amount": "AA==", "qty": 0,
                "rev": 0, "ordered_at": 0, "updated_tz": "1970-01-01T00:00:00.000000Z", "attrs": None, "note": None}

    def value(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> bytes:
        self.lsn += self.rng.randrange(80, 400)
        self.tx += 1
        now_us = int(time.time() * 1_000_000)
        payload = {
            "before": before, "after": after,
            "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": self.prefix,
                       "ts_ms": now_us // 1000, "snapshot": "false", "db": self.db,
                       "sequence": json.dumps([str(self.lsn - 200), str(self.lsn)]), "ts_us": now_us,
                       "ts_ns": now_us * 1000, "schema": "public", "table": "orders", "txId": self.tx,
                       "lsn": self.lsn, "xmin": None, "origin": None, "origin_lsn": None},
            "transaction": None, "op": op, "ts_ms": now_us // 1000 + 40, "ts_us": now_us + 40_000,
            "ts_ns": (now_us + 40_000) * 1000,
        }
        return json.dumps({"schema": self.value_schema, "payload": payload}, separators=(",", ":")).encode()

    def generate(self, n: int, keys: int | None = None, delete_share: float = 0.08,
                 expected: Expected | None = None) -> tuple[list[tuple[bytes, bytes | None]], Expected]:
        """``n`` records (tombstones included) over ``keys`` primary keys (default n/4): a key's
        first event is a create, then updates, sometimes a delete (+ tombstone) and a re-create."""
        keys = keys or max(1, n // 4)
        exp = expected or Expected()
        out: list[tuple[bytes, bytes | None]] = []
        rev: dict[int, int] = {}
        now_us = int(time.time() * 1_000_000)
        while len(out) < n:
            i = self.rng.randrange(1, keys + 1)
            k = self.key(i)
            if i not in exp.live:
                rev[i] = rev.get(i, 0) + 1
                after = self._row(i, rev[i], now_us)
                out.append((k, self.value("c", None, after)))
                exp.live[i] = rev[i]
                exp.changes["c"] += 1
            elif self.rng.random() < delete_share and len(out) + 2 <= n:
                out.append((k, self.value("d", self._deleted_before(i), None)))
                out.append((k, None))
                del exp.live[i]
                exp.changes["d"] += 1
                exp.changes["tombstone"] += 1
            else:
                rev[i] += 1
                out.append((k, self.value("u", None, self._row(i, rev[i], now_us))))
                exp.live[i] = rev[i]
                exp.changes["u"] += 1
        exp.records += len(out)
        return out, exp


# --- Kafka ---------------------------------------------------------------------------------
async def _admin() -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=30000)
    await admin.start()
    return admin


async def create_topic(name: str, partitions: int) -> None:
    from aiokafka.admin import NewTopic

    admin = await _admin()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(50):
            meta = await admin.describe_topics([name])
            if meta and len(meta[0].get("partitions", [])) == partitions:
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def produce(topic: str, records: Iterable[tuple[bytes, bytes | None]],
                  partition_of: Callable[[bytes], int] | None = None) -> None:
    """Send ``records`` keyed, with Kafka's default (murmur2) partitioner, as Debezium's producer does."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20, max_batch_size=1 << 20,
                         max_request_size=16 << 20, compression_type=None, acks=1)
    await p.start()
    try:
        futs = []
        for k, v in records:
            futs.append(await p.send(topic, v, key=k, partition=partition_of(k) if partition_of else None))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
        await p.flush()
    finally:
        await p.stop()


def preload(topic: str, partitions: int, records: list[tuple[bytes, bytes | None]]) -> float:
    """Create ``topic`` and fill it; return seconds taken."""
    t0 = time.monotonic()

    async def go() -> None:
        await create_topic(topic, partitions)
        await produce(topic, records)

    asyncio.run(go())
    return time.monotonic() - t0


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key bytes), as the Java producer computes it."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def end_offsets(topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        ends = await c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await c.stop()


def delete_consumer_groups(groups: list[str]) -> None:
    """aiokafka's admin has no delete_consumer_groups: send DeleteGroups to each coordinator."""
    from aiokafka.protocol.admin import DeleteGroupsRequest

    async def go() -> None:
        admin = await _admin()
        try:
            for g in groups:
                with contextlib.suppress(Exception):
                    coord = await admin.find_coordinator(g)
                    await admin._send_request(DeleteGroupsRequest([g]), coord)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(go())


# --- Elasticsearch -------------------------------------------------------------------------
class Es:
    def __init__(self, url: str = "http://127.0.0.1:9200") -> None:
        self.url = url.rstrip("/")
        self.s = requests.Session()

    def req(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        r = self.s.request(method, f"{self.url}{path}", json=body, timeout=timeout)
        return r.json() if r.content else None

    def count_and_sum(self, index: str, field_name: str = "rev") -> tuple[int, int]:
        """Documents and the sum of ``field_name`` as searches see them right now (refreshed first)."""
        self.req("POST", f"/{index}/_refresh")
        r = self.req("POST", f"/{index}/_search", {"size": 0, "track_total_hits": True,
                                                   "aggs": {"s": {"sum": {"field": field_name}}}})
        if not r or "hits" not in r:
            return 0, 0
        return int(r["hits"]["total"]["value"]), int(r["aggregations"]["s"]["value"])

    def delete_matching(self, pattern: str) -> list[str]:
        """Delete every index matching ``pattern``, by name (wildcard deletes are refused)."""
        got = self.req("GET", f"/{pattern}") or {}
        names = [n for n in got if isinstance(got.get(n), dict) and "settings" in got[n]]
        if names:
            self.req("DELETE", "/" + ",".join(names))
        return names


@dataclass
class Visibility:
    """When the sink first showed data and when it showed the final state."""

    first_s: float | None = None
    first_units: int = 0
    done_s: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, progress)


class Stalled(RuntimeError):
    """The sink showed no progress for ``stall_s`` while the pipeline was still running."""

    def __init__(self, progress: int, at_s: float, stall_s: float) -> None:
        super().__init__(f"no progress for {stall_s:.0f}s (stuck at {progress} at {at_s:.0f}s)")
        self.progress, self.at_s = progress, at_s


def watch(progress: Callable[[], tuple[int, bool]], t0: float, timeout: float, every: float = 0.25,
          alive: Callable[[], bool] | None = None, stall_s: float | None = None) -> Visibility:
    """Poll ``progress`` (-> (units done, final state reached)) until final or ``timeout``;
    with ``stall_s``, raise ``Stalled`` once the units have not changed for that long after the
    first visible result."""
    v = Visibility()
    last_n, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic() - t0
        try:
            n, done = progress()
        except Exception:  # noqa: BLE001 - the sink may not exist yet
            n, done = 0, False
        v.samples.append((round(now, 3), n))
        if n > 0 and v.first_s is None:
            v.first_s, v.first_units = now, n
        if done:
            v.done_s = now
            return v
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif stall_s is not None and v.first_s is not None and time.monotonic() - last_change > stall_s:
            raise Stalled(n, now, stall_s)
        if now > timeout:
            raise TimeoutError(f"sink did not reach the final state within {timeout:.0f}s (last progress {n})")
        if alive is not None and not alive():
            raise RuntimeError("the pipeline under test exited before reaching the final state")
        time.sleep(every)


# --- CPU time -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (/proc; 0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


class CpuMeter:
    """Wraps a progress check: the CPU seconds of ``pid`` when the sink first shows data and when
    it shows the final state, so ``us_per_record`` is the steady span's CPU per record (the same
    span as the steady rate; start-up excluded)."""

    def __init__(self, progress: Callable[[], tuple[int, bool]], pid: Callable[[], int]) -> None:
        self.progress, self.pid = progress, pid
        self.first: float | None = None
        self.done: float | None = None
        self.last = 0.0

    def __call__(self) -> tuple[int, bool]:
        n, done = self.progress()
        # Read on every poll: a baseline may have exited (its /proc gone) by the time the sink
        # shows the final state, and its last reading is then the closest one.
        now = cpu_seconds(self.pid()) or self.last
        self.last = now
        if n > 0 and self.first is None:
            self.first = now
        if done and self.done is None:
            self.done = now
        return n, done

    def us_per_record(self, records: int) -> float | None:
        if self.first is None or self.done is None or records <= 0:
            return None
        return round((self.done - self.first) * 1e6 / records, 1)


# --- the real worker -----------------------------------------------------------------------
@dataclass
class WorkerProc:
    """One ``cdcstream worker`` process (the supervisor, as in production) on preloaded topics."""

    tmp: Path
    app_id: str
    env: dict[str, str]
    name: str = "w1"
    web_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.app_id}-{self.name}.log"

    def start(self, extra: dict[str, str] | None = None, argv_prefix: list[str] | None = None) -> None:
        self.web_port = free_port()
        env = {**self.env, "CDCSTREAM_WEB_PORT": str(self.web_port),
               "CDCSTREAM_DATA_DIR": str(self.tmp / f"{self.app_id}-{self.name}-data"), **(extra or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*(argv_prefix or []), sys.executable, "-m", "cdcstream.cli", "worker"],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, path: str) -> Any:
        """GET ``path`` of this worker's HTTP API, decoded."""
        return WorkerApi(self.web_port, timeout=10).json(path)

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def worker_config(path: Path, connector: str, prefix: str, tables: list[dict[str, Any]]) -> None:
    """A config whose connector's topic prefix is the preloaded topics' prefix. The connection is
    never used by the worker's data path (only by `connectors apply` and the status page)."""
    cfg = {"connectors": [{
        "name": connector, "topic_prefix": prefix,
        "connection": {"kind": "postgres", "host": "127.0.0.1", "port": 5432, "database": "bench_unused",
                       "user": "bench_unused", "password": "env:CDCSTREAM_BENCH_UNUSED_PASSWORD",
                       "tls": {"mode": "disable"}},
        "tables": tables,
    }]}
    path.write_text(json.dumps(cfg, indent=2))


def worker_env(app_id: str, config: Path, partitions: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDCSTREAM_")}
    env.update({"CDCSTREAM_APP_ID": app_id, "CDCSTREAM_CONFIG": str(config), "CDCSTREAM_PARTITIONS": str(partitions),
                "CDCSTREAM_BENCH_UNUSED_PASSWORD": "unused", "CDCSTREAM_EMBED_URL": ""})
    env.update({f"CDCSTREAM_{k.upper()}": v for k, v in settings.items()})
    # Worker settings to try without editing the scenario: BENCH_CDCSTREAM_BATCH_SIZE=2000 -> CDCSTREAM_BATCH_SIZE.
    env.update({k.removeprefix("BENCH_"): v for k, v in os.environ.items() if k.startswith("BENCH_CDCSTREAM_")})
    return env


def production_worker_env(env: dict[str, str]) -> dict[str, str]:
    """The e2e harness's worker env (``tests/e2e/harness.py``) with the production defaults back
    (not its faster batch wait or tiny archive objects and chunks), plus ``BENCH_CDCSTREAM_*``
    overrides; changed in place and returned."""
    for k in ("CDCSTREAM_BATCH_WAIT_S", "CDCSTREAM_ARCHIVE_MAX_RECORDS", "CDCSTREAM_CHUNK_TOKENS"):
        env.pop(k, None)
    env.update({k.removeprefix("BENCH_"): v for k, v in os.environ.items() if k.startswith("BENCH_CDCSTREAM_")})
    return env


def profile_worker(pid: int, seconds: float, out: Path) -> str | None:
    """A py-spy sampling profile (raw collapsed stacks) of ``pid`` and its children, or None."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return None
    try:
        subprocess.run([str(exe), "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds)),
                        "--rate", "50", "--format", "raw", "--output", str(out), "--nonblocking"],
                       capture_output=True, timeout=seconds + 60, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    if not out.exists():
        return None
    keep = ROOT / "bench" / "results" / f"profile-{out.stem}.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(out.read_text())
    return out.read_text()


PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("start-up (imports)", ("<frozen importlib",)),
    ("Faust tables: changelog writes (Kafka producer), reads", ("aiokafka/producer", "faust/transport/producer",
                                                                 "faust/tables/base.py", "faust/tables/table.py")),
    ("Debezium decode (json.loads + schema conversion)", ("cdcstream/pipeline/decode.py",)),
    ("row documents", ("cdcstream/sinks/documents.py",)),
    ("Elasticsearch client (bulk body, HTTP)", ("elasticsearch/", "elastic_transport/")),
    ("archive (JSON lines, gzip, S3 client)", ("cdcstream/sinks/archive.py", "boto", "gzip.py")),
    ("routing, row state, branch", ("cdcstream/core/route.py", "cdcstream/pipeline/processor.py",
                                    "cdcstream/core/events.py")),
    ("Faust table stores (RocksDB)", ("faust/stores",)),
    ("Kafka consumer (fetch, unpack)", ("aiokafka/consumer", "aiokafka/record", "faust/transport/consumer",
                                        "faust/transport/conductor")),
    ("Kafka client I/O (other)", ("aiokafka/",)),
    # Before Faust's bucket: the agent body runs inside faust/agents frames.
    ("batch loop: agent body, checkpoint, profile/state lookups", ("agents/changes.py", "cdcstream/runtime/context",
                                                                    "cdcstream/runtime/checkpoint")),
    ("Faust streams/agents/acks, mode services", ("faust/", "mode/")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
]


def profile_in_background(pid: int, env_var: str, out: Path) -> Callable[[], list[tuple[str, float]] | None]:
    """With ``<env_var>=N`` set, a py-spy profile of ``pid`` over the next N s, started now in a
    thread; returns a function that waits for it and gives its 'where time goes' shares (None
    when the variable is unset or py-spy could not run)."""
    seconds = float(os.environ.get(env_var) or 0)
    if not seconds:
        return lambda: None
    holder: dict[str, str | None] = {}
    th = threading.Thread(target=lambda: holder.update(raw=profile_worker(pid, seconds, out)), daemon=True)
    th.start()

    def result() -> list[tuple[str, float]] | None:
        th.join(seconds + 90)
        raw = holder.get("raw")
        return summarize_profile(raw) if raw else None

    return result


def profile_lines(profile: list[tuple[str, float]] | None, during: str) -> list[str]:
    """The markdown sentence giving a profile's shares, or nothing without one."""
    if not profile:
        return []
    shares = ", ".join(f"{name} {share:.0%}" for name, share in profile)
    return [f"Where the worker's time went {during} (py-spy, on-CPU samples): {shares}.", ""]


def summarize_profile(raw: str, top: int = 12) -> list[tuple[str, float]]:
    """Share of on-CPU samples per 'where time goes' bucket, from py-spy raw (collapsed) output.
    A sample goes to the first bucket of PROFILE_BUCKETS (most specific first) any of its frames matches."""
    total = 0
    counts: dict[str, int] = {}
    for line in raw.splitlines():
        stack_s, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        c = int(n)
        total += c
        frames = stack_s.split(";")[2:]  # past the process/thread header frames
        hit = next((name for name, pats in PROFILE_BUCKETS if any(p in f for f in frames for p in pats)), "other")
        counts[hit] = counts.get(hit, 0) + c
    if not total:
        return []
    return sorted(((k, round(v / total, 3)) for k, v in counts.items()), key=lambda kv: -kv[1])[:top]


# --- plots ---------------------------------------------------------------------------------
def plot_path(scenario: str, suffix: str = "") -> Path:
    return ROOT / "docs" / "img" / f"bench-{scenario}{suffix}.png"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(plt: Any, fig: Any, path: Path, title: str, dpi: int = 100) -> list[Path]:
    """Title, lay out, write and close ``fig``; the scenario's ``plot`` returns the list."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return [path]
