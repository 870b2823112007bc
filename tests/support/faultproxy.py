"""A loopback HTTP reverse proxy that injects faults, for the fault rounds (issue 16, test 8).

Between the worker and one HTTP server (Elasticsearch, the embeddings API, the object store)
it forwards every request unchanged, except while a fault is on: then it answers every
request with an HTTP status (401, 400, 500...) or resets the connection. Faults are switched
by hand (``set``) or by a seeded schedule of random windows (``chaos``). Runs its own event
loop in a thread; binds 127.0.0.1 only; ``close`` stops it.

Not Toxiproxy: it would have to be built from the Go module proxy for one feature (HTTP
statuses are not among its toxics anyway); this is 100 lines on aiohttp, which Faust
already brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.net import free_port

#: Hop-by-hop and length headers aiohttp sets itself.
_DROP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
FAULTS: tuple[int | str, ...] = (401, 400, 500, 503, "reset")


class FaultProxy:
    def __init__(self, target: str, name: str, extra_headers: dict[str, str] | None = None, *,
                 preserve_host: bool = False) -> None:
        self.target = target.rstrip("/")
        # S3 signs the Host header: forward the client's own, or the signature no longer matches.
        self.preserve_host = preserve_host
        self.name = name
        self.port = free_port()
        # Headers an injected answer carries so the client reads it as its server's own (the
        # Elasticsearch client checks X-Elastic-Product).
        self.extra_headers = extra_headers or {}
        self.fault: int | str | None = None
        # Faults for the next requests, whatever the windows say (see ``fail_next``).
        self._queued: list[int | str] = []
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.windows: list[tuple[float, float, int | str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{name}", daemon=True)
        self._chaos: threading.Thread | None = None
        self._chaos_stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"fault proxy {self.name} did not start")
        return self

    def close(self) -> None:
        self._chaos_stop.set()
        if self._chaos is not None:
            self._chaos.join(30)
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def set(self, fault: int | str | None) -> None:
        self.fault = fault

    def chaos(self, rng: random.Random, *, every_s: tuple[float, float] = (4, 12),
              lasting_s: tuple[float, float] = (1, 5), faults: tuple[int | str, ...] = FAULTS) -> None:
        """Switch random faults on for random windows until ``close`` (or ``calm``)."""

        def run() -> None:
            while not self._chaos_stop.wait(rng.uniform(*every_s)):
                fault, length = rng.choice(faults), rng.uniform(*lasting_s)
                start = time.monotonic()
                self.fault = fault
                self._chaos_stop.wait(length)
                self.fault = None
                self.windows.append((start, time.monotonic(), fault))

        self._chaos = threading.Thread(target=run, name=f"faultproxy-{self.name}-chaos", daemon=True)
        self._chaos.start()

    def fail_next(self, *faults: int | str) -> None:
        """Answer the next ``len(faults)`` requests with these faults, in order. The random windows
        are timed, and a service that is called in bursts (the object store, at archive cuts) can
        fall between all of them in a short run: this makes sure each sees some."""
        self._queued.extend(faults)

    def calm(self) -> None:
        """Stop the random faults (and any fault on)."""
        self._chaos_stop.set()
        if self._chaos is not None:
            self._chaos.join(30)
        self.fault = None

    # --- serving -------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, session)

        app.router.add_route("*", "/{tail:.*}", handle)
        # Bodies pass through as bytes both ways: the archive PUTs gzip with Content-Encoding set.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await session.close()

    async def _handle(self, request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
        fault = self._queued.pop(0) if self._queued else self.fault
        if fault == "reset":
            self.injected["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()  # never reaches the client: the connection is gone
        if isinstance(fault, int):
            self.injected[str(fault)] += 1
            body = {"error": {"type": "injected_fault", "reason": f"fault proxy {self.name}: HTTP {fault}",
                              "message": f"fault proxy {self.name}: HTTP {fault}"}, "status": fault}
            return web.json_response(body, status=fault, headers=self.extra_headers)
        data = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        if self.preserve_host and "Host" in request.headers:
            headers["Host"] = request.headers["Host"]
        async with session.request(request.method, self.target + request.path_qs, data=data, headers=headers,
                                   allow_redirects=False) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
            self.forwarded += 1
            return web.Response(body=payload, status=resp.status, headers=out)

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "forwarded": self.forwarded, "injected": dict(self.injected),
                "windows": len(self.windows)}


@contextlib.contextmanager
def fault_proxy(target: str, name: str, extra_headers: dict[str, str] | None = None, *,
                preserve_host: bool = False) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target, name, extra_headers, preserve_host=preserve_host).start()
    try:
        yield proxy
    finally:
        proxy.close()
