"""docs/operations.md, "Running it exposed", run as written on the real stack.

The marked blocks run in order in bash: the refusal (bound to 0.0.0.0 without a token: it must
exit before binding), the tokens, the worker (started in the background), the checks from a
second shell and the rotation. One change: the worker binds 127.0.0.1 with protect_reads
(tests bind nothing else; it is the same check), on a free port instead of 6066, with its own
app id, an empty config and a temporary HOME.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import ROOT
from tests.support import delete_topics, free_port, topics_starting, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BLOCK = re.compile(r"^<!-- test: exposed -->\n```sh\n(.*?)^```", re.M | re.S)


def test_running_it_exposed_walkthrough(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    require("kafka")
    refusal, tokens, checks, rotation = BLOCK.findall((ROOT / "docs" / "operations.md").read_text())
    port = free_port()
    app_id = f"docs-exposed-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "cdcstream.yaml"
    config.write_text("connectors: []\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CDCSTREAM_")},
           "HOME": str(home), "CDCSTREAM_APP_ID": app_id, "CDCSTREAM_CONFIG": str(config),
           "CDCSTREAM_DATA_DIR": str(tmp_path / "worker"), "CDCSTREAM_WEB_PORT": str(port)}

    def bash(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    # 1. No token, bound beyond loopback: refused before binding (and before reading its config).
    r = bash(refusal)
    assert r.returncode == 0 and r.stdout.strip() == "refused: exit 2", r.stdout + r.stderr
    assert "refusing to start: web_host '0.0.0.0' is not a loopback address" in r.stderr, r.stderr
    assert not (tmp_path / "worker").exists()

    # 2. Tokens, then the worker: everything before its line runs first, the line in the background.
    worker_line = next(line for line in tokens.splitlines() if line.endswith("cdcstream.cli worker"))
    head = tokens.replace(worker_line, "")
    assert "export CDCSTREAM_WEB_HOST=0.0.0.0" in head
    head = head.replace("export CDCSTREAM_WEB_HOST=0.0.0.0",
                        "export CDCSTREAM_WEB_HOST=127.0.0.1 CDCSTREAM_PROTECT_READS=true")
    r = bash(head)
    assert r.returncode == 0, r.stdout + r.stderr
    token_dir = home / ".config" / "cdcstream"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in token_dir.iterdir()} == {
        "admin.token": "0o600", "read.token": "0o600"}
    read_token = (token_dir / "read.token").read_text()
    exports = "\n".join(line for line in head.splitlines() if line.startswith("export "))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"{exports}\nexec {worker_line}"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200, 120,
                   what="the worker's /healthz",
                   abort=lambda: None if worker.poll() is None else f"worker exited {worker.returncode}",
                   detail=lambda: (tmp_path / "worker.log").read_text(errors="replace")[-3000:])

        # 3. The checks, as written except the port.
        r = bash(checks.replace("6066", str(port)))
        assert r.returncode == 0, r.stdout + r.stderr
        # healthz, no token, HEAD without a token, the read token, the read token replaying.
        assert r.stdout.splitlines() == ["ok", "401", "401", "200", "403"], r.stdout
        assert (token_dir / "read.header").read_text() == f"Authorization: Bearer {read_token}\n"

        # 4. Rotation without a restart: the old header is refused within seconds.
        r = bash(f"W=http://127.0.0.1:{port}\n" + rotation)
        assert r.returncode == 0 and r.stdout.strip() == "401", r.stdout + r.stderr
        new = (token_dir / "read.token").read_text()
        assert new != read_token
        ok = requests.get(f"http://127.0.0.1:{port}/api/tables", headers={"Authorization": f"Bearer {new}"},
                          timeout=10)
        assert ok.status_code == 200, ok.text
        assert worker.poll() is None
        text = (tmp_path / "worker.log").read_text(errors="replace")
        assert read_token not in text and new not in text, text[-2000:]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(30)
        log.close()
        delete_topics(topics_starting(app_id))
