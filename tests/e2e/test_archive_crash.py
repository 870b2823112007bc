"""kill -9 between storing an archive object and committing its offsets: the replay rewrites the
same objects byte for byte, and every change event is archived exactly once by position."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from tests.e2e.harness import Pipeline, pipeline
from tests.support import CONNECTION_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TABLES = [{"name": "public.audit_log", "profile": "archive"}]
#: The object store not answering (yet) is botocore's own ConnectionError family, not an OSError.
S3_NOT_YET = (*CONNECTION_ERRORS, botocore.exceptions.ConnectionError)


@pytest.fixture
def s3(require: Callable[[str], dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    info = require("objectstore")
    client = boto3.client("s3", endpoint_url=info["endpoint"], aws_access_key_id=info["access_key"],
                          aws_secret_access_key=info["secret_key"], region_name=info["region"])
    return client, info


@pytest.fixture
def pipe(tmp_path: Path, require: Callable[[str], dict[str, Any]], s3: tuple[Any, dict[str, Any]]
         ) -> Iterator[Pipeline]:
    for svc in ("kafka", "connect"):
        require(svc)
    _, info = s3
    with pipeline(tmp_path, require("postgres"), require("elasticsearch"), require("embeddings"), TABLES) as p:
        p.env.update({
            "CDCSTREAM_ARCHIVE_URL": f"s3://{info['bucket']}/e2e-{p.tag}?endpoint={info['endpoint']}",
            "CDCSTREAM_ARCHIVE_ACCESS_KEY": "env:E2E_S3_ACCESS", "CDCSTREAM_ARCHIVE_SECRET_KEY": "env:E2E_S3_SECRET",
            "E2E_S3_ACCESS": info["access_key"], "E2E_S3_SECRET": info["secret_key"],
        })
        yield p


def objects(client: Any, bucket: str, prefix: str) -> dict[str, tuple[bytes, Any]]:
    out = {}
    for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        out[o["Key"]] = (body, o["LastModified"])
    return out


def test_crash_after_archive_put_replays_identical_objects(pipe: Pipeline, s3: tuple[Any, dict[str, Any]]) -> None:
    p = pipe
    client, info = s3
    prefix = f"e2e-{p.tag}/"
    p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'login' FROM generate_series(1, 20) g")
    p.apply()
    p.env["CDCSTREAM_CRASH_POINT"] = "after_archive_put"
    p.start_worker()
    p.wait("crash after the first object", lambda: p.worker is not None and p.worker.poll() is not None,
           worker_may_exit=True)
    before = objects(client, info["bucket"], prefix)
    assert len(before) == 1, sorted(before)

    del p.env["CDCSTREAM_CRASH_POINT"]
    p.start_worker()
    # 20 snapshot rows over 2 partitions, objects of 4 records: at least 4 complete objects.
    p.wait("replayed objects", lambda: len(objects(client, info["bucket"], prefix)) >= 4, retry_on=S3_NOT_YET)
    after = objects(client, info["bucket"], prefix)
    # The crashed batch was never acked, so the restarted worker re-read those events and cut
    # the same object again: same name, same bytes.
    for key, (body, _) in before.items():
        assert after[key][0] == body, f"{key} differs after the replay"
    positions = []
    for key, (body, _) in after.items():
        lines = [json.loads(x) for x in gzip.decompress(body).splitlines()]
        positions += [(x["kafka"]["partition"], x["kafka"]["offset"]) for x in lines]
        first, last = key.rsplit("/", 1)[1].removesuffix(".jsonl.gz").split("-")[1:]
        assert lines[0]["kafka"]["offset"] == int(first) and lines[-1]["kafka"]["offset"] == int(last)
    assert len(positions) == len(set(positions)), "an event was archived twice"


def test_regression_archive_max_wait_s_flushes_a_quiet_partition(pipe: Pipeline, s3: tuple[Any, dict[str, Any]]
                                                                  ) -> None:
    """Bug: the documented archive_max_wait_s was never acted on (nothing called
    ArchiveBuffer.expire), so a quiet partition's partial object waited for more events forever."""
    p = pipe
    client, info = s3
    p.env.update({"CDCSTREAM_ARCHIVE_MAX_RECORDS": "1000", "CDCSTREAM_ARCHIVE_MAX_WAIT_S": "2"})
    p.sql("INSERT INTO audit_log SELECT g, 'user' || g, 'login' FROM generate_series(1, 5) g")
    p.apply()
    p.start_worker()
    p.wait("the partial objects stored by time", lambda: sum(
        len(gzip.decompress(body).splitlines()) for body, _ in objects(client, info["bucket"], f"e2e-{p.tag}/").values()
    ) == 5, retry_on=S3_NOT_YET)
