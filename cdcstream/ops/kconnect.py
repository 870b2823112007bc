"""A Kafka Connect REST client.

Blocking (``requests``): call it from the CLI, or from Faust through an executor.
Errors quote Connect's own message; 409 (a rebalance in progress) is retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from cdcstream.core.masking import mask_text
from cdcstream.core.secrets import MASK


class ConnectError(RuntimeError):
    def __init__(self, status: int, message: str, what: str) -> None:
        super().__init__(f"Kafka Connect: {what}: HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class ValidationResult:
    error_count: int
    errors: dict[str, list[str]] = field(default_factory=dict)  # property -> messages

    @property
    def ok(self) -> bool:
        return self.error_count == 0


@dataclass
class ConnectorStatus:
    name: str
    state: str  # RUNNING | PAUSED | STOPPED | FAILED | UNASSIGNED | RESTARTING
    worker: str
    tasks: list[dict[str, Any]]
    trace: str | None = None

    @property
    def failed_tasks(self) -> list[int]:
        return [int(t["id"]) for t in self.tasks if t.get("state") == "FAILED"]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ConnectorStatus:
        c = body.get("connector", {})
        return cls(body["name"], c.get("state", "UNKNOWN"), c.get("worker_id", ""), body.get("tasks", []),
                   c.get("trace"))


class ConnectClient:
    def __init__(self, url: str = "http://127.0.0.1:8083", timeout: float = 30.0, retries: int = 10,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.http = session or requests.Session()
        self.writes = 0  # count of write requests sent: `apply` proves idempotence with it

    def _call(self, method: str, path: str, what: str, body: Any = None, ok: tuple[int, ...] = (200,),
              params: dict[str, str] | None = None) -> Any:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                resp = self.http.request(method, self.url + path, json=body, params=params, timeout=self.timeout)
            except requests.ConnectionError as e:
                if attempt == self.retries:
                    raise ConnectError(0, f"cannot reach {self.url} ({type(e).__name__})", what) from None
                time.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            if method != "GET":
                self.writes += 1
            # 409, or 500 "...rebalance is expected": the worker group is rebalancing; retry.
            rebalancing = resp.status_code == 409 or (resp.status_code == 500 and "rebalance" in resp.text)
            if rebalancing and attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            if resp.status_code not in ok:
                try:
                    msg = resp.json().get("message", resp.text)
                except ValueError:
                    msg = resp.text
                raise ConnectError(resp.status_code, str(msg)[:2000], what)
            if resp.status_code == 204 or not resp.content:
                return None
            return resp.json()
        raise AssertionError("unreachable")

    @staticmethod
    def _n(name: str) -> str:
        return quote(name, safe="")

    # --- reads ---------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        return dict(self._call("GET", "/", "version"))

    def plugins(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/connector-plugins", "list plugins"))

    def names(self) -> list[str]:
        return list(self._call("GET", "/connectors", "list connectors"))

    def list_with_status(self) -> dict[str, ConnectorStatus]:
        body = self._call("GET", "/connectors", "list connectors", params={"expand": "status"})
        return {n: ConnectorStatus.parse(v["status"]) for n, v in body.items()}

    def get_config(self, name: str) -> dict[str, str] | None:
        try:
            return dict(self._call("GET", f"/connectors/{self._n(name)}/config", f"get config of {name}"))
        except ConnectError as e:
            if e.status == 404:
                return None
            raise

    def status(self, name: str) -> ConnectorStatus:
        return ConnectorStatus.parse(self._call("GET", f"/connectors/{self._n(name)}/status", f"status of {name}"))

    def topics(self, name: str) -> list[str]:
        body = self._call("GET", f"/connectors/{self._n(name)}/topics", f"topics of {name}")
        return list(body.get(name, {}).get("topics", []))

    def offsets(self, name: str) -> list[dict[str, Any]]:
        body = self._call("GET", f"/connectors/{self._n(name)}/offsets", f"offsets of {name}")
        return list(body.get("offsets", []))

    # --- writes --------------------------------------------------------------------
    def put_config(self, name: str, config: dict[str, str]) -> dict[str, Any]:
        """Create or update (PUT is both in Connect's API)."""
        return dict(self._call("PUT", f"/connectors/{self._n(name)}/config", f"put config of {name}", body=config,
                               ok=(200, 201)))

    def create_stopped(self, name: str, config: dict[str, str]) -> None:
        """Create ``name`` in the STOPPED state (Connect >= 3.7, KIP-980): it never runs a task.

        The only way to reach the offsets of a connector that was deleted without resetting
        them: Connect keeps offsets after a DELETE, and answers for them only while a
        connector of that name exists.
        """
        self._call("POST", "/connectors", f"create {name} (stopped)", ok=(201,),
                   body={"name": name, "config": config, "initial_state": "STOPPED"})

    def pause(self, name: str) -> None:
        self._call("PUT", f"/connectors/{self._n(name)}/pause", f"pause {name}", ok=(202,))

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{self._n(name)}/resume", f"resume {name}", ok=(202,))

    def stop(self, name: str) -> None:
        self._call("PUT", f"/connectors/{self._n(name)}/stop", f"stop {name}", ok=(202, 204))

    def restart(self, name: str, include_tasks: bool = True, only_failed: bool = False) -> None:
        self._call("POST", f"/connectors/{self._n(name)}/restart", f"restart {name}", ok=(200, 202, 204),
                   params={"includeTasks": str(include_tasks).lower(), "onlyFailed": str(only_failed).lower()})

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/connectors/{self._n(name)}", f"delete {name}", ok=(204, 200))

    def reset_offsets(self, name: str) -> None:
        """Forget where the connector was (it must be STOPPED)."""
        self._call("DELETE", f"/connectors/{self._n(name)}/offsets", f"reset offsets of {name}", ok=(200,))

    def validate(self, connector_class: str, config: dict[str, str]) -> ValidationResult:
        plugin = connector_class.rsplit(".", 1)[-1]
        body = self._call("PUT", f"/connector-plugins/{self._n(plugin)}/config/validate",
                          f"validate {plugin}", body={"connector.class": connector_class, **config})
        errors: dict[str, list[str]] = {}
        for c in body.get("configs", []):
            v = c.get("value") or {}  # Debezium's internal.* properties come back with "value": null
            if v.get("errors"):
                errors[v["name"]] = list(v["errors"])
        return ValidationResult(int(body.get("error_count", 0)), errors)

    # --- waiting -------------------------------------------------------------------
    def wait_state(self, name: str, states: tuple[str, ...] = ("RUNNING",), tasks: bool = True,
                   timeout: float = 60.0) -> ConnectorStatus:
        deadline = time.monotonic() + timeout
        last: ConnectorStatus | None = None
        while time.monotonic() < deadline:
            try:
                last = self.status(name)
            except ConnectError as e:
                if e.status != 404:
                    raise
            else:
                if last.state in states and (not tasks or (last.tasks and all(
                        t.get("state") in states for t in last.tasks)) or last.state == "STOPPED"):
                    return last
                # A failure ends a wait for RUNNING; a wait for STOPPED (stop before delete or an
                # offset reset) must outlast it: stopping is how a failed connector is cleaned up.
                if "RUNNING" in states and (last.state == "FAILED" or last.failed_tasks):
                    trace = last.trace or next((t.get("trace") for t in last.tasks if t.get("trace")), "")
                    raise ConnectError(200, f"{name} FAILED: {(trace or '').splitlines()[0:1]}", "wait")
            time.sleep(0.5)
        raise ConnectError(0, f"{name} not in {states} after {timeout:.0f}s (last: "
                              f"{last.state if last else 'absent'})", "wait")


def secret_property(name: str) -> bool:
    """Whether a connector property holds a secret: any name with password/secret/token/
    credentials, a JAAS config (it carries a password inline), or a name whose last part is
    a key (``ssl.key``, ``aws.secret.access.key``, ``api.key``, ``*.apikey``). Names where
    "key" is a qualifier (``key.converter``, ``message.key.columns``) are not secrets."""
    n = name.lower()
    if any(w in n for w in ("password", "passwd", "secret", "token", "credentials", "jaas.config")):
        return True
    return "key" in n.replace("_", ".").replace("-", ".").rsplit(".", 1)[-1]


def mask_config(config: dict[str, str]) -> dict[str, str]:
    """A config safe to print: every secret property masked (``${...}`` placeholders kept:
    they name a file or a provider, not the secret), and secrets inside other values (a URL's
    ``user:password@``, a ``password=`` pair) masked in place."""
    out = {}
    for k, v in config.items():
        v = str(v)
        if secret_property(k):
            out[k] = v if v.startswith("${") and v.endswith("}") else MASK
        else:
            out[k] = mask_text(v)
    return out
