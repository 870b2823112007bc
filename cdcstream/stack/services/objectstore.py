"""An S3-compatible object store for the archive: versitygw built from the Go module proxy.

versitygw (Apache-2.0) serves a plain directory tree over the S3 API: buckets are
top-level directories, objects are files, metadata lives in extended attributes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, run

VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
ACCESS_KEY = "cdcstream"  # local dev server on loopback only; real deployments use Vault
SECRET_KEY = "cdcstream-dev-secret"
REGION = "us-east-1"
BUCKET = "cdcstream-archive"


def _xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    try:
        probe.touch()
        os.setxattr(probe, "user.cdcstream", b"1")
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class ObjectStoreService(Service):
    name = "objectstore"
    version = VERSITYGW_VERSION
    ports = (9000,)
    start_timeout = 30.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.url, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
                "region": REGION, "bucket": BUCKET}

    @property
    def binary(self) -> Path:
        return self.artifacts / "bin" / "versitygw"

    def install(self) -> None:
        go = shutil.which("go")
        if go is None:
            raise StackError("objectstore: `go` not found; install Go 1.25+ to build versitygw")
        with building(self.artifacts) as tmp:
            run([go, "install", "-trimpath", f"-ldflags=-X main.Version={VERSITYGW_VERSION}",
                 f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"],
                env={"GOBIN": str(tmp / "bin"), "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"},
                what="objectstore: go install versitygw", timeout=1800)
            self.mark_complete(tmp)

    def installed(self) -> bool:
        return super().installed() and self.binary.is_file()

    @property
    def root(self) -> Path:
        return self.data / "buckets"

    @property
    def sidecar(self) -> Path:
        return self.data / "meta"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        backend = ["posix"]
        # Object metadata goes to xattrs; filesystems without user xattrs (older tmpfs, some
        # overlays) get a sidecar directory instead.
        if not _xattrs_supported(self.root):
            self.sidecar.mkdir(parents=True, exist_ok=True)
            backend += ["--sidecar", str(self.sidecar)]
        return [str(self.binary), "--port", f"127.0.0.1:{self.ports[0]}", "--region", REGION,
                "--quiet",  # no access log line per request: the archive writes many objects
                *backend, str(self.root)]

    def env(self) -> dict[str, str]:
        # Through the environment so the secret does not show in `ps`.
        return {"ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"}),
        )

    def healthy(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def post_start(self) -> None:
        from botocore.exceptions import ClientError

        s3 = self.client()
        try:
            s3.head_bucket(Bucket=BUCKET)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise StackError(f"objectstore: HEAD bucket {BUCKET} failed: {e}") from e
        try:
            s3.create_bucket(Bucket=BUCKET)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StackError(f"objectstore: creating bucket {BUCKET} failed: {e}") from e
