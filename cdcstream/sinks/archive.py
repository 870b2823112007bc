"""The object-store archive: every change event, as gzip JSON Lines, chosen by URL.

Objects are named by source topic partition and first-last source offset::

    <connector>/<schema>.<table>/dt=<event date UTC>/<partition>-<first>-<last>.jsonl.gz

Flush boundaries depend only on the records (count, bytes, event date), and gzip is
written with a fixed header, so a replay after a crash rewrites byte-identical objects
under the same names: the archive holds each change exactly once by position.
A wall-clock flush (``max_wait_s``) is an opt-in latency setting: with it, a replay
may cut objects at other offsets, so an event can then be in two objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from cdcstream.events import ChangeEvent
from cdcstream.sinks.documents import change_record


@dataclass(slots=True)
class ArchiveObject:
    name: str
    body: bytes
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int


@dataclass
class _Buffer:
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    first: int = -1
    last: int = -1
    day: str = ""
    prefix: str = ""
    opened_at: float = 0.0


class ArchiveBuffer:
    """Buffers per topic-partition and cuts objects at record-determined boundaries."""

    def __init__(self, max_records: int = 5000, max_bytes: int = 8 << 20, remember_keys: int = 50_000) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.remember_keys = remember_keys
        self._buf: dict[tuple[str, int], _Buffer] = {}
        # Per partition, the newest (version, op) archived or buffered per key, most recent last.
        self._seen: dict[tuple[str, int], OrderedDict[str, tuple[int, str]]] = {}

    def duplicate(self, ev: ChangeEvent) -> bool:
        """True for an event already archived by source position: Debezium delivers at least
        once, and after a Connect or broker restart re-sends what it produced since its last
        offset flush, under new Kafka offsets. Within a partition a key's changes arrive in
        source order, so anything not newer than the last one seen is such a re-send.

        Remembered per partition for the last ``remember_keys`` keys (a re-send covers at
        most Connect's offset-flush interval) and forgotten with the partition's buffer, so
        a replay after a revoke or a crash is never mistaken for one.
        """
        assert ev.origin is not None
        seen = self._seen.setdefault((ev.origin.topic, ev.origin.partition), OrderedDict())
        key = ev.doc_id
        mark = (ev.position.version, ev.op.value)
        last = seen.get(key)
        if last is not None and (mark[0] < last[0] or mark == last):
            return True
        seen[key] = mark
        seen.move_to_end(key)
        if len(seen) > self.remember_keys:
            seen.popitem(last=False)
        return False

    @staticmethod
    def _day(ev: ChangeEvent) -> str:
        return dt.datetime.fromtimestamp((ev.ts_source_ms or ev.ts_event_ms) / 1000, dt.UTC).strftime("%Y-%m-%d")

    def add(self, ev: ChangeEvent, now: float = 0.0) -> list[ArchiveObject]:
        """Buffer ``ev``; return the objects its arrival completed (at most two)."""
        assert ev.origin is not None, "archived events need their Kafka origin"
        tp = (ev.origin.topic, ev.origin.partition)
        out: list[ArchiveObject] = []
        day = self._day(ev)
        b = self._buf.get(tp)
        if b is not None and b.lines and b.day != day:
            out.append(self._cut(tp))
            b = None
        if b is None:
            b = self._buf[tp] = _Buffer(day=day, prefix=f"{ev.table.connector}/{ev.table.short}", opened_at=now)
        line = json.dumps(change_record(ev), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if not b.lines:
            b.first = ev.origin.offset
            b.opened_at = now
        b.lines.append(line)
        b.size += len(line)
        b.last = ev.origin.offset
        if len(b.lines) >= self.max_records or b.size >= self.max_bytes:
            out.append(self._cut(tp))
        return out

    def _cut(self, tp: tuple[str, int]) -> ArchiveObject:
        b = self._buf.pop(tp)
        name = f"{b.prefix}/dt={b.day}/{tp[1]:04d}-{b.first:020d}-{b.last:020d}.jsonl.gz"
        # mtime=0 and no file name in the header: identical input gives identical bytes.
        body = gzip.compress(b"".join(b.lines), compresslevel=6, mtime=0)
        return ArchiveObject(name, body, tp[0], tp[1], b.first, b.last, len(b.lines))

    def expire(self, now: float, max_wait_s: float) -> list[ArchiveObject]:
        """Opt-in wall-clock flush of buffers older than ``max_wait_s`` (weaker replay guarantee)."""
        old = [tp for tp, b in self._buf.items() if b.lines and now - b.opened_at >= max_wait_s]
        return [self._cut(tp) for tp in old]

    def drop_partitions(self, tps: set[tuple[str, int]]) -> None:
        """Forget buffers of revoked partitions: their events were never acked and will be replayed."""
        for tp in list(self._buf):
            if tp in tps:
                del self._buf[tp]
        for tp in list(self._seen):
            if tp in tps:
                del self._seen[tp]

    def pending(self) -> dict[tuple[str, int], int]:
        """First buffered offset per topic-partition (not yet durable)."""
        return {tp: b.first for tp, b in self._buf.items() if b.lines}


class ArchiveStore(Protocol):
    url: str

    async def put(self, obj: ArchiveObject) -> None: ...

    async def list(self, prefix: str = "") -> list[str]: ...

    async def get(self, name: str) -> bytes: ...


class FileStore:
    """``file:///path``: objects as files; written to a temp file and renamed, so never half-visible."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = Path(urlparse(url).path)

    def _put(self, obj: ArchiveObject) -> None:
        dest = self.root / obj.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(obj.body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    async def put(self, obj: ArchiveObject) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._put, obj)

    async def list(self, prefix: str = "") -> list[str]:
        def _ls() -> list[str]:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.jsonl.gz")
                          if str(p.relative_to(self.root)).startswith(prefix))
        return await asyncio.get_running_loop().run_in_executor(None, _ls)

    async def get(self, name: str) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, (self.root / name).read_bytes)


class S3Store:
    """``s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1`` through boto3 (in an executor)."""

    def __init__(self, url: str, access_key: str | None = None, secret_key: str | None = None) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        u = urlparse(url)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        self.url = f"s3://{u.netloc}{u.path}"
        self.bucket = u.netloc
        self.prefix = u.path.strip("/")
        self.client = boto3.client(
            "s3", endpoint_url=q.get("endpoint"), region_name=q.get("region", "us-east-1"),
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=BotoConfig(retries={"max_attempts": 10, "mode": "adaptive"}, s3={"addressing_style": "path"}),
        )

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def put(self, obj: ArchiveObject) -> None:
        await self._run(lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(obj.name), Body=obj.body, ContentType="application/x-ndjson",
            ContentEncoding="gzip"))

    async def list(self, prefix: str = "") -> list[str]:
        def _ls() -> list[str]:
            out: list[str] = []
            pag = self.client.get_paginator("list_objects_v2")
            for page in pag.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                out += [o["Key"][len(self._key("")):] for o in page.get("Contents", [])]
            return sorted(out)
        return list(await self._run(_ls))

    async def get(self, name: str) -> bytes:
        return bytes(await self._run(lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._key(name))["Body"].read()))


def open_store(url: str, access_key: str | None = None, secret_key: str | None = None) -> ArchiveStore:
    scheme = urlparse(url).scheme
    if scheme == "file":
        return FileStore(url)
    if scheme == "s3":
        return S3Store(url, access_key, secret_key)
    raise ValueError(f"archive URL {url!r}: scheme must be file:// or s3://")
