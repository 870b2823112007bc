"""The contract every locally run server follows, and the helpers they share.

A service installs its artifacts once into the user-level cache (so a fresh clone
reuses them), keeps data, logs and its PID under the clone's ``.stack/`` and is
awaited until healthy. ``manager.py`` orders and runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

#: Servers that refuse to run as root (PostgreSQL, Elasticsearch, MariaDB) run as this user.
SERVICE_USER = "cdcstream"


class StackError(RuntimeError):
    """A server could not be installed or started; the message names it."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cdcstream"


@dataclass(frozen=True)
class StackPaths:
    """Where artifacts (user-level cache) and state (per clone) live."""

    cache: Path = field(default_factory=cache_root)
    state: Path = field(default_factory=lambda: Path(os.environ.get("CDCSTREAM_STACK_DIR", ".stack")).resolve())


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_get(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET returning (status, body); (0, b"") when nothing answers."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0,
              headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return 0, str(e)


def run(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        user: str | None = None, timeout: float = 3600, what: str = "") -> str:
    """Run a setup command; on failure raise StackError quoting its output's tail."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        user=user if user and os.geteuid() == 0 else None,
        group=primary_group(user) if user and os.geteuid() == 0 else None,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise StackError(f"{what or cmd[0]} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return proc.stdout


def ensure_service_user() -> str | None:
    """Create the unprivileged user servers run as, when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        run(["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            what="creating the service user")
    return SERVICE_USER


def primary_group(user: str | None) -> int | None:
    return None if user is None else pwd.getpwnam(user).pw_gid


def chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for n in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


@contextlib.contextmanager
def building(target: Path) -> Iterator[Path]:
    """Build into a temporary sibling and rename it into place only when complete.

    A half-finished install (killed build, failed download) must never look cached.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


class Service(ABC):
    """One server of the local stack.

    Subclasses set ``name``, ``version`` and ``ports`` and implement ``install``,
    ``command`` and ``healthy``. ``install`` must be idempotent and write only into
    ``self.artifacts`` (the user-level cache); everything else goes under ``self.data``.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    ports: ClassVar[tuple[int, ...]]
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: Run the server as an unprivileged user (servers that refuse root).
    unprivileged: ClassVar[bool] = False
    #: Seconds to wait for health after spawning.
    start_timeout: ClassVar[float] = 120.0

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths

    # --- locations -------------------------------------------------------------
    @property
    def artifacts(self) -> Path:
        return self.paths.cache / f"{self.name}-{self.version}"

    @property
    def data(self) -> Path:
        return self.paths.state / "data" / self.name

    @property
    def log(self) -> Path:
        return self.paths.state / "logs" / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.paths.state / "pids" / f"{self.name}.pid"

    @property
    def user(self) -> str | None:
        return ensure_service_user() if self.unprivileged else None

    # --- lifecycle -------------------------------------------------------------
    def installed(self) -> bool:
        return (self.artifacts / ".complete").exists()

    @abstractmethod
    def install(self) -> None:
        """Fetch or build artifacts into ``self.artifacts`` (use ``building``) and mark them complete."""

    def prepare(self) -> None:
        """Initialise ``self.data`` before the first start (initdb, storage format...)."""

    @abstractmethod
    def command(self) -> list[str]:
        """The server's foreground command line."""

    def env(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def healthy(self) -> bool:
        """True once the server answers real requests."""

    def post_start(self) -> None:
        """Idempotent setup after the server is healthy (buckets, users, engines)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where clients connect."""

    def info(self) -> dict[str, Any]:
        """Extra connection facts for ``stack status --json`` (credentials of local dev servers)."""
        return {}

    def mark_complete(self, tmp: Path) -> None:
        (tmp / ".complete").write_text(json.dumps({"name": self.name, "version": self.version,
                                                   "built_at": time.time()}))
