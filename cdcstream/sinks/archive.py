"""The object-store archive: every change event, as gzip JSON Lines, chosen by URL.

Objects are named by source topic partition and first-last source offset::

    <connector>/<schema>.<table>/dt=<event date UTC>/<partition>-<first>-<last>.jsonl.gz

Flush boundaries depend only on the records (count, bytes, event date), and gzip is
written with a fixed header, so a replay after a crash rewrites byte-identical objects
under the same names: the archive holds each change exactly once by position.
A wall-clock flush (``archive_max_wait_s``) cuts quiet partitions too; every cut is recorded
before its object is written (``cdcstream/pipeline/archive.py``), so replays cut the same objects.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cdcstream.sinks.base import ArchiveObject, ArchiveStore


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
