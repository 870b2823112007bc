"""Run the Faust worker, and supervise it.

``cdcstream worker`` is a small supervisor: it runs the worker in a child process and
starts it again when the worker exits with ``EXIT_RESTART`` — which the worker does when
the set of topics it should consume changed (``apply`` added a table, Debezium created
its topic). A restart costs one rebalance, the same as a live resubscribe would, without
depending on faust-streaming's private subscription internals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from cdcstream.core.config import Config, load_config
from cdcstream.core.settings import Settings
from cdcstream.core.tls import TLSConfigError, server_ssl_context
from cdcstream.runtime.app import EXIT_RESTART, create_app

log = logging.getLogger("cdcstream.runtime.worker")

WATCH_EVERY_S = 5.0


class StartupError(RuntimeError):
    pass


async def list_topics(settings: Settings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def preflight(settings: Settings, config: Config) -> set[str]:
    """Create/check the internal topics; refuse to start when any topic disagrees with the code."""
    from cdcstream.runtime import topics

    await topics.apply(settings)
    problems = [f"{c.spec.name}: {p}" for c in await topics.check(settings, config) for p in c.problems]
    if problems:
        raise StartupError("topics disagree with their definition (see `cdcstream topics plan`):\n  "
                           + "\n  ".join(problems))
    return await list_topics(settings)


def exposure_refusal(settings: Settings) -> str | None:
    """Why the worker must not start, checked before anything binds: a web server reachable
    from other machines with no token would serve every mirrored row to anyone."""
    if settings.web_exposed and not settings.has_api_token:
        return (f"refusing to start: web_host {settings.web_host!r} is not a loopback address and no API token is "
                "configured, so every row of every mirrored table would be readable by anyone who can reach "
                f"port {settings.web_port}. Set CDCSTREAM_API_TOKEN (admin) and/or CDCSTREAM_API_READ_TOKEN to a "
                "secret reference (env:NAME, file:/path, vault:mount/path#key), or bind 127.0.0.1 "
                "(CDCSTREAM_WEB_HOST) and put a reverse proxy in front; see docs/operations.md, "
                "\"Running it exposed\".")
    return None


def tls_problem(settings: Settings) -> str | None:
    """Why the configured certificate or key cannot serve HTTPS (naming the file), checked before
    anything starts; None when they can, or when TLS is off."""
    try:
        server_ssl_context(settings)
    except TLSConfigError as e:
        return f"cannot serve HTTPS: {e}"
    return None


def plaintext_warning(settings: Settings) -> str | None:
    """Beyond loopback without TLS the bearer tokens and session cookies cross the network in clear:
    allowed (a TLS-terminating proxy in front, a container's 0.0.0.0), but said at every start."""
    if settings.web_exposed and not settings.web_tls:
        return (f"warning: web_host {settings.web_host!r} is not a loopback address and the API is served over "
                "plain HTTP: API tokens and session cookies cross the network in clear. Set CDCSTREAM_WEB_TLS_CERT "
                "and CDCSTREAM_WEB_TLS_KEY, or keep a TLS-terminating proxy in front (docs/operations.md, "
                "\"Running it exposed\").")
    return None


def startup_refusal(settings: Settings) -> str | None:
    """The first reason the worker must not start at all (exposure without a token, unusable TLS files)."""
    return exposure_refusal(settings) or tls_problem(settings)


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one worker process until it stops (exit code EXIT_RESTART asks for a restart)."""
    from faust.worker import Worker

    refusal = startup_refusal(settings)
    if refusal:
        print(f"cdcstream worker: {refusal}", file=sys.stderr)
        sys.exit(2)
    warning = plaintext_warning(settings)
    if warning:
        print(f"cdcstream worker: {warning}", file=sys.stderr)
    config = load_config(settings.config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        existing = asyncio.run(preflight(settings, config))
    except StartupError as e:
        print(f"cdcstream worker: {e}", file=sys.stderr)
        sys.exit(2)
    app, pipe = create_app(settings, config, existing)
    subscribed = set(pipe.data_topics)
    restart = {"wanted": False}

    @app.task  # type: ignore[untyped-decorator]
    async def quiet_root_logger() -> None:
        # `-l warn` leaves the root logger at DEBUG: ~7% CPU goes to building discarded records.
        logging.getLogger().setLevel(getattr(logging, loglevel.upper().replace("WARN", "WARNING"), 30))

    @app.timer(WATCH_EVERY_S)  # type: ignore[untyped-decorator]
    async def watch_topics() -> None:
        try:
            cfg = load_config(settings.config)
            now = await list_topics(settings)
        except Exception as e:  # noqa: BLE001 - a bad edit of the config must not stop a running worker
            log.warning("topic watch: %s", e)
            return
        want = {t for t in cfg.topic_map() if t in now}
        if want != subscribed:
            added, removed = sorted(want - subscribed), sorted(subscribed - want)
            log.warning("captured topics changed (added %s, removed %s): restarting the worker", added, removed)
            restart["wanted"] = True
            os.kill(os.getpid(), signal.SIGTERM)

    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if restart["wanted"]:
            sys.exit(EXIT_RESTART)
        raise


def supervise(argv: list[str], max_fast_failures: int = 5) -> int:
    """Run ``python -m cdcstream.runtime.worker`` and restart it on EXIT_RESTART. Returns the final exit code."""
    # Checked here too, so that no worker process starts at all (the worker checks again for
    # those who run it without the supervisor).
    refusal = startup_refusal(Settings())
    if refusal:
        print(f"cdcstream worker: {refusal}", file=sys.stderr)
        return 2
    fast_failures = 0
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "cdcstream.runtime.worker", *argv])
        code = child.wait()
        if code != EXIT_RESTART:
            return code
        fast_failures = fast_failures + 1 if time.monotonic() - started < 10 else 0
        if fast_failures >= max_fast_failures:
            print("cdcstream worker: restarting too often; giving up", file=sys.stderr)
            return 1
        print("cdcstream worker: restarting (captured topics changed)", file=sys.stderr)


if __name__ == "__main__":
    lvl = sys.argv[1] if len(sys.argv) > 1 else "warn"
    run_worker(Settings(), loglevel=lvl)
