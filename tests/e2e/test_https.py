"""The worker API over HTTPS (issue 18, item 6): docs/operations.md, "HTTPS", run as written.

The marked blocks run in bash: the certificates (openssl, made now), the worker (in the
background), the client checks. Changes, as in test_docs_exposed.py: the worker binds
127.0.0.1 with protect_reads on a free port, with its own app id, an empty config and a
temporary HOME holding the tokens of the "Running it exposed" section. Python then checks what
curl cannot show as plainly: the certificate verifies against the test CA and against nothing
else, a token works over HTTPS, plain HTTP to the port fails, the login cookie is Secure.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import ROOT, stop_process
from tests.support import delete_topics, free_port, topics_starting, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BLOCK = re.compile(r"^<!-- test: https -->\n```sh\n(.*?)^```", re.M | re.S)


def _env(tmp: Path, port: int, app_id: str) -> dict[str, str]:
    config = tmp / "cdcstream.yaml"
    config.write_text("connectors: []\n")
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CDCSTREAM_") and k != "REQUESTS_CA_BUNDLE"},
            "HOME": str(tmp / "home"), "CDCSTREAM_APP_ID": app_id, "CDCSTREAM_CONFIG": str(config),
            "CDCSTREAM_DATA_DIR": str(tmp / "worker"), "CDCSTREAM_WEB_PORT": str(port)}


def _bash(script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_https_walkthrough(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    require("kafka")
    pki, worker_block, checks = BLOCK.findall((ROOT / "docs" / "operations.md").read_text())
    port, app_id = free_port(), f"docs-https-{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path, port, app_id)
    # The tokens of "Running it exposed" (that walkthrough is tests/e2e/test_docs_exposed.py).
    conf = tmp_path / "home" / ".config" / "cdcstream"
    conf.mkdir(parents=True, mode=0o700)
    read_token, admin_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    for name, text in (("read.token", read_token), ("admin.token", admin_token),
                       ("read.header", f"Authorization: Bearer {read_token}\n")):
        (conf / name).write_text(text)
        (conf / name).chmod(0o600)
    # The worker's shell has the tokens of that section; the second shell (the checks) exports its own.
    worker_env = {**env, "CDCSTREAM_API_TOKEN": f"file:{conf}/admin.token",
                  "CDCSTREAM_API_READ_TOKEN": f"file:{conf}/read.token", "CDCSTREAM_WEB_HOST": "127.0.0.1",
                  "CDCSTREAM_PROTECT_READS": "true"}

    # 1. The certificates, made now.
    r = _bash(pki, env)
    assert r.returncode == 0, r.stdout + r.stderr
    tls = conf / "tls"
    ca = tls / "ca.pem"
    assert {n: oct((tls / n).stat().st_mode & 0o777) for n in ("ca.key", "worker.key")} == {
        "ca.key": "0o600", "worker.key": "0o600"}

    # 2. The worker, in the background (its exports first).
    worker_line = next(line for line in worker_block.splitlines() if line.endswith("cdcstream.cli worker"))
    exports = "\n".join(line for line in worker_block.splitlines() if line.startswith("export "))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"{exports}\nexec {worker_line}"], cwd=ROOT,
                              env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", verify=str(ca), timeout=5).status_code == 200, 120,
                   what="the worker's /healthz over HTTPS",
                   abort=lambda: None if worker.poll() is None else f"worker exited {worker.returncode}",
                   detail=lambda: (tmp_path / "worker.log").read_text(errors="replace")[-3000:])

        # 3. From Python: verified against the test CA only; the token works; plain HTTP fails.
        assert requests.get(f"{url}/healthz", verify=str(ca), timeout=10).text.strip() == "ok"
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get(f"{url}/healthz", timeout=10)  # the system's CAs do not know the test CA
        auth = {"Authorization": f"Bearer {read_token}"}
        ok = requests.get(f"{url}/api/tables", headers=auth, verify=str(ca), timeout=10)
        assert ok.status_code == 200 and ok.json()["tables"] == [], ok.text
        assert requests.get(f"{url}/api/tables", verify=str(ca), timeout=10).status_code == 401
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        login = requests.post(f"{url}/login", data={"token": read_token}, verify=str(ca), timeout=10,
                              allow_redirects=False)
        assert login.status_code == 303 and "; Secure" in login.headers["Set-Cookie"], login.headers

        # 4. The client checks as written (curl and the CLI), on this port.
        r = _bash(checks.replace("6066", str(port)), env)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert lines[:2] == ["ok", "200"], r.stdout
        assert re.fullmatch(r"plain HTTP: no answer \(curl exit (52|56)\)", lines[2]), r.stdout
        assert lines[3] == "unknown CA: refused (curl exit 60)", r.stdout
        assert lines[4:] == ["[]", "[]"], r.stdout + r.stderr  # REQUESTS_CA_BUNDLE, then CDCSTREAM_WORKER_CA

        # 5. The CLI with the worker's settings (https from web_tls_cert) but without a CA says what to set.
        r = _bash(f"{exports}\n{sys.executable} -m cdcstream.cli profiles show", worker_env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert (f"TLS with the worker at {url} failed ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
                in r.stderr), r.stderr
        assert "set CDCSTREAM_WORKER_CA (or REQUESTS_CA_BUNDLE)" in r.stderr
        assert worker.poll() is None
    finally:
        stop_process(worker)
        log.close()
        delete_topics(topics_starting(app_id))
    text = (tmp_path / "worker.log").read_text(errors="replace")
    assert read_token not in text and "PRIVATE KEY" not in text, text[-2000:]


def test_a_bad_key_stops_the_worker_naming_the_file(tmp_path: Path) -> None:
    """Checked before the worker binds or reads its config: exit 2 and the file's name."""
    from tests.support.tls import make_pki

    pki = make_pki(tmp_path / "tls")
    env = _env(tmp_path, free_port(), "docs-https-bad")
    (tmp_path / "home").mkdir()
    for key, why in ((tmp_path / "tls" / "missing.key", "no such file"),
                     (tmp_path / "tls" / "ca.key", "not an unencrypted PEM private key matching")):
        r = subprocess.run([sys.executable, "-m", "cdcstream.cli", "worker"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False,
                           env={**env, "CDCSTREAM_WEB_TLS_CERT": str(pki.cert), "CDCSTREAM_WEB_TLS_KEY": str(key)})
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"cdcstream worker: cannot serve HTTPS: web_tls_key {'file:' if 'matching' in why else ''}{key}" \
               f"" in r.stderr and why in r.stderr, r.stderr
        assert not (tmp_path / "worker").exists()
