"""A throw-away PKI for HTTPS tests: a CA and a server certificate for 127.0.0.1/localhost, made
with the openssl CLI (the same commands docs/operations.md shows)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients verify with
    cert: Path  # the server certificate, signed by ca, SAN localhost and 127.0.0.1
    key: Path  # its unencrypted private key (0600)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path, cn: str = "cdcstream test") -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", f"/CN={cn} CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", *ec, "-subj", f"/CN={cn} worker", "-keyout", "worker.key", "-out", "worker.csr", cwd=d)
    (d / "worker.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "worker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "worker.ext", "-out", "worker.pem", cwd=d)
    for name in ("ca.key", "worker.key"):
        (d / name).chmod(0o600)
    return Pki(d / "ca.pem", d / "worker.pem", d / "worker.key")
