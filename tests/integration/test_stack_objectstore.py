"""Smoke test of the stack's S3-compatible object store, with the credentials its status reports."""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from cdcstream.stack.manager import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store() -> dict[str, Any]:
    (state,) = Stack(only=["objectstore"]).status()
    if state.state != "running":
        pytest.fail(f"objectstore is {state.state}; start it with `cdcstream stack up`")
    return state.as_dict()


@pytest.fixture(scope="module")
def s3(store: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=store["endpoint"], aws_access_key_id=store["access_key"],
                        aws_secret_access_key=store["secret_key"], region_name=store["region"])


def test_archive_bucket_exists(s3: Any, store: dict[str, Any]) -> None:
    assert store["bucket"] in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_put_list_get_delete(s3: Any, store: dict[str, Any]) -> None:
    bucket = store["bucket"]
    prefix = f"smoke/{uuid.uuid4().hex}/"
    key = f"{prefix}events/part-0001.jsonl.gz"
    body = os.urandom(256 * 1024) + b"\x00\xff tail \xe9\xe8"
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip",
                  Metadata={"schema": "v1"})
    try:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(key, len(body))]

        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body
        assert got["ContentType"] == "application/gzip"
        assert got["Metadata"] == {"schema": "v1"}
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount") == 0
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key=key)
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound")


def test_wrong_secret_is_refused(store: dict[str, Any]) -> None:
    bad = boto3.client("s3", endpoint_url=store["endpoint"], aws_access_key_id=store["access_key"],
                       aws_secret_access_key="not-the-secret", region_name=store["region"])
    with pytest.raises(ClientError):
        bad.list_objects_v2(Bucket=store["bucket"])


def test_multipart_upload_round_trip(s3: Any, store: dict[str, Any]) -> None:
    bucket = store["bucket"]
    key = f"smoke/{uuid.uuid4().hex}/big.bin"
    body = os.urandom(12 * 1024 * 1024)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_fileobj(io.BytesIO(body), bucket, key, Config=cfg)
    try:
        assert s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-3")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
