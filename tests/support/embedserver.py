"""A private instance of the stack's embeddings server (``cdcstream/stack/embedserver.py``) on a
free loopback port, from the stack's embeddings venv: its ``dimensions`` support may be newer
than the shared instance (which other engineers use and which is not restarted for a test),
and its counters are the caller's alone."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from cdcstream.stack.base import StackPaths
from cdcstream.stack.services.embeddings import EmbeddingsService
from tests.support.net import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "cdcstream" / "stack" / "embedserver.py"


@contextlib.contextmanager
def private_embedserver(threads: int = 1) -> Iterator[str]:
    """Yields the server's base URL (``http://127.0.0.1:PORT``; the API under ``/v1``, counters
    at ``/stats``). Needs the stack's embeddings service installed."""
    python = EmbeddingsService(StackPaths()).python
    port = free_port()
    proc = subprocess.Popen([str(python), str(SCRIPT), "--host", "127.0.0.1", "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "embedserver did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # our own process, by its handle
        proc.wait(timeout=10)
