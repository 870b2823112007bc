"""The plain pipelines cdcstream is compared with, run as their own process (as the worker is).

``python -m bench.baselines index --topic T --index I --records N``
    aiokafka consumer (no group, all partitions assigned) -> json.loads -> bulk of ~500
    index/delete actions (id = primary key) -> Elasticsearch, one bulk in flight at a time.
``python -m bench.baselines archive --topic T --url s3://bucket/prefix?endpoint=... --max-records M``
    aiokafka consumer -> json.loads -> per-partition gzip JSON Lines objects of M change
    events -> S3 put_object (boto3), named like cdcstream's objects.

Both stop when they have consumed N records (the topic is preloaded, N is known).
Nothing here does what cdcstream adds: no per-row state, no external versions, no stats,
no schema-driven type decoding, no offset commits.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlparse

from aiokafka import AIOKafkaConsumer, TopicPartition

BOOTSTRAP = "127.0.0.1:9092"


async def _consumer(topic: str) -> AIOKafkaConsumer:
    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, group_id=None,
                         auto_offset_reset="earliest", max_partition_fetch_bytes=16 << 20,
                         fetch_max_bytes=64 << 20)
    await c.start()
    parts = c.partitions_for_topic(topic)
    if not parts:
        await c._client.force_metadata_update()
        parts = c.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    return c


async def index(topic: str, index_name: str, records: int, es_url: str, bulk: int = 500) -> int:
    from elasticsearch import AsyncElasticsearch

    es = AsyncElasticsearch(es_url, request_timeout=60)
    c = await _consumer(topic)
    seen = 0
    ops: list[dict[str, Any]] = []
    n_ops = 0

    async def flush() -> None:
        nonlocal ops, n_ops
        if ops:
            resp = await es.bulk(operations=ops)
            if resp.get("errors"):
                bad = [i for i in resp["items"] if next(iter(i.values())).get("status", 500) >= 300
                       and next(iter(i.values())).get("status") != 404]
                if bad:
                    raise RuntimeError(f"bulk errors: {bad[:2]}")
        ops, n_ops = [], 0

    try:
        while seen < records:
            got = await c.getmany(timeout_ms=500, max_records=bulk)
            for recs in got.values():
                for r in recs:
                    seen += 1
                    if r.value is None:
                        continue  # tombstone
                    p = json.loads(r.value)["payload"]
                    key = json.loads(r.key)["payload"]
                    doc_id = str(next(iter(key.values())))
                    if p["op"] == "d":
                        ops.append({"delete": {"_index": index_name, "_id": doc_id}})
                    else:
                        ops += [{"index": {"_index": index_name, "_id": doc_id}}, p["after"]]
                    n_ops += 1
            if n_ops >= bulk or seen >= records:
                await flush()
        await flush()
    finally:
        await c.stop()
        await es.close()
    return seen


async def archive(topic: str, url: str, records: int, max_records: int, access_key: str, secret_key: str) -> int:
    import boto3
    from botocore.config import Config as BotoConfig

    u = urlparse(url)
    q = {k: v[0] for k, v in parse_qs(u.query).items()}
    bucket, prefix = u.netloc, u.path.strip("/")
    s3 = boto3.client("s3", endpoint_url=q.get("endpoint"), region_name=q.get("region", "us-east-1"),
                      aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                      config=BotoConfig(s3={"addressing_style": "path"}))
    c = await _consumer(topic)
    loop = asyncio.get_running_loop()
    buf: dict[int, list[bytes]] = {}
    first: dict[int, int] = {}
    seen = 0
    try:
        while seen < records:
            got = await c.getmany(timeout_ms=500, max_records=2000)
            for tp, recs in got.items():
                for r in recs:
                    seen += 1
                    if r.value is None:
                        continue
                    p = json.loads(r.value)["payload"]
                    line = json.dumps({"key": json.loads(r.key)["payload"], "op": p["op"], "before": p["before"],
                                       "after": p["after"], "source": p["source"], "ts_ms": p["ts_ms"]},
                                      separators=(",", ":")).encode() + b"\n"
                    lines = buf.setdefault(tp.partition, [])
                    if not lines:
                        first[tp.partition] = r.offset
                    lines.append(line)
                    if len(lines) >= max_records:
                        name = f"{prefix}/{tp.partition:04d}-{first[tp.partition]:020d}-{r.offset:020d}.jsonl.gz"
                        body = gzip.compress(b"".join(lines), compresslevel=6, mtime=0)
                        del buf[tp.partition]
                        await loop.run_in_executor(None, partial(s3.put_object, Bucket=bucket, Key=name, Body=body))
    finally:
        await c.stop()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.baselines")
    ap.add_argument("kind", choices=["index", "archive"])
    ap.add_argument("--topic", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--index")
    ap.add_argument("--es", default="http://127.0.0.1:9200")
    ap.add_argument("--url")
    ap.add_argument("--max-records", type=int, default=5000)
    a = ap.parse_args()
    if a.kind == "index":
        n = asyncio.run(index(a.topic, a.index, a.records, a.es))
    else:
        n = asyncio.run(archive(a.topic, a.url, a.records, a.max_records, os.environ["BENCH_S3_ACCESS_KEY"],
                                os.environ["BENCH_S3_SECRET_KEY"]))
    print(json.dumps({"consumed": n}))


if __name__ == "__main__":
    main()
