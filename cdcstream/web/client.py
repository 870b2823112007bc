"""Talking to a running worker over its HTTP API (the CLI and ``connectors apply --reset-profiles``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdcstream.core.config import ConnectorSpec


# --- live profiles (drift) ------------------------------------------------------------
# The YAML only seeds a table's processing profile. A change made through the worker's
# API lives in the ``profiles`` GlobalTable and wins over the YAML from then on (an
# operator switched a table to ``archive`` during an incident: a routine `apply` must not
# silently undo that). `plan` shows the difference as drift; `apply --reset-profiles`
# sends the YAML's profile back through the control topic.
@dataclass
class ProfileDrift:
    connector: str
    table: str  # schema.table as in the YAML
    key: str  # TableId.key, the worker's table key
    yaml: str
    live: str

    def __str__(self) -> str:
        return f"{self.table}: live profile {self.live}, YAML says {self.yaml}"


class WorkerUnreachable(RuntimeError):
    """The worker's HTTP API did not answer; live profiles could not be checked."""


def tls_reason(e: Exception) -> str:
    """The certificate problem of a requests ``SSLError`` (e.g. ``CERTIFICATE_VERIFY_FAILED``), without the URL."""
    import re

    m = re.search(r"\[SSL: ([A-Z_]+)\][^(')]*", str(e))
    return m.group(0).strip() if m else type(e).__name__


def live_profiles(web_url: str, token: str | None = None, timeout: float = 3.0,
                  verify: str | bool = True) -> dict[str, str]:
    """Table key -> the profile the running worker applies (``GET /api/tables``); ``verify`` as for
    requests (``Settings.worker_verify``: the worker CA for an https worker)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = requests.get(f"{web_url.rstrip('/')}/api/tables", headers=headers, timeout=timeout, verify=verify)
        resp.raise_for_status()
        body = resp.json()
    except requests.exceptions.SSLError as e:
        raise WorkerUnreachable(f"worker API {web_url}: TLS failed ({tls_reason(e)}); set CDCSTREAM_WORKER_CA (or "
                                f"REQUESTS_CA_BUNDLE) to the CA of its certificate") from None
    except (requests.RequestException, ValueError) as e:
        raise WorkerUnreachable(f"worker API {web_url} did not answer ({type(e).__name__})") from None
    return {str(r["table"]): str(r["profile"]) for r in body.get("tables", []) if "table" in r and "profile" in r}


def profile_drift(spec: ConnectorSpec, live: dict[str, str]) -> list[ProfileDrift]:
    """Tables whose running profile differs from the YAML (tables the worker does not know are skipped)."""
    out = []
    for t in spec.tables:
        key = spec.table_id(t).key
        if key in live and live[key] != t.profile.value:
            out.append(ProfileDrift(spec.name, t.name, key, t.profile.value, live[key]))
    return out


def reset_profiles(drift: list[ProfileDrift], *, app_id: str, kafka_bootstrap: str, web_url: str,
                   token: str | None = None, timeout: float = 60.0, verify: str | bool = True) -> list[str]:
    """Send each table's YAML profile through the worker's control topic and wait until the API shows it.

    The command is the one ``cdcstream.runtime.control.request_profile`` sends; a plain JSON value on
    the 1-partition control topic is what its Faust agent decodes.
    """
    import asyncio
    import time

    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for d in drift:
                cmd = {"type": "set_profile", "table": d.key, "profile": d.yaml, "version": time.time_ns(),
                       "drop_index": False}
                await producer.send_and_wait(f"{app_id}-control", json.dumps(cmd).encode(), key=d.key.encode())
        finally:
            await producer.stop()

    if not drift:
        return []
    asyncio.run(send())
    deadline = time.monotonic() + timeout
    pending = list(drift)
    while pending:
        live = live_profiles(web_url, token, verify=verify)
        pending = [d for d in pending if live.get(d.key) != d.yaml]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("profile reset not applied by the worker within "
                               f"{timeout:.0f}s: {', '.join(str(d) for d in pending)}")
        time.sleep(0.5)
    return [f"profile of {d.connector} {d.table}: {d.live} -> {d.yaml} (reset to the YAML)" for d in drift]

