"""Bring the local stack up and down, and tell its state.

``up`` installs what is missing (in parallel: the cache makes this a no-op when warm),
then starts every server whose dependencies are healthy, in parallel too, so a warm
``up`` costs about as long as the slowest server's start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cdcstream.stack.base import Service, StackError, StackPaths, chown_tree, port_in_use, primary_group, tail
from cdcstream.stack.services import SERVICES


@dataclass
class ServiceState:
    name: str
    version: str
    url: str
    state: str  # running | stopped | unhealthy | not-installed
    pid: int | None
    info: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "url": self.url, "state": self.state,
                "pid": self.pid, **self.info}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return False
    return True


class Stack:
    def __init__(self, paths: StackPaths | None = None, only: Iterable[str] | None = None,
                 with_dependencies: bool = True) -> None:
        self.paths = paths or StackPaths()
        selected = set(only) if only else set(SERVICES)
        unknown = selected - set(SERVICES)
        if unknown:
            raise StackError(f"unknown service(s): {', '.join(sorted(unknown))}; known: {', '.join(SERVICES)}")
        # Starting pulls in what the selection depends on; stopping must not (restarting
        # Connect alone is a fault test and an operator's move: Kafka stays up).
        todo = list(selected) if with_dependencies else []
        while todo:
            for dep in SERVICES[todo.pop()].depends_on:
                if dep not in selected:
                    selected.add(dep)
                    todo.append(dep)
        self.services: dict[str, Service] = {n: cls(self.paths) for n, cls in SERVICES.items() if n in selected}

    # --- state -----------------------------------------------------------------
    def pid(self, svc: Service) -> int | None:
        try:
            pid = int(svc.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def state(self, svc: Service) -> ServiceState:
        pid = self.pid(svc)
        if pid is None:
            st = "stopped" if svc.installed() else "not-installed"
        else:
            st = "running" if svc.healthy() else "unhealthy"
        return ServiceState(svc.name, svc.version, svc.url, st, pid, svc.info())

    def status(self) -> list[ServiceState]:
        with ThreadPoolExecutor(max_workers=len(self.services)) as pool:
            return list(pool.map(self.state, self.services.values()))

    # --- up --------------------------------------------------------------------
    def up(self, log: Any = print) -> list[ServiceState]:
        for d in ("data", "logs", "pids"):
            (self.paths.state / d).mkdir(parents=True, exist_ok=True)
        to_start: list[Service] = []
        for svc in self.services.values():
            pid = self.pid(svc)
            if pid is not None:
                log(f"{svc.name}: already running (pid {pid})")
                continue
            busy = [p for p in svc.ports if port_in_use(p)]
            if busy:
                raise StackError(f"{svc.name}: port {', '.join(map(str, busy))} on 127.0.0.1 is already in use by "
                                 f"a process this stack did not start; stop it or free the port")
            to_start.append(svc)
        errors: list[str] = []
        lock = threading.Lock()
        done = {n: threading.Event() for n in self.services}
        failed: set[str] = set()
        for svc in self.services.values():
            if svc not in to_start:
                done[svc.name].set()

        # Services that share artifacts (elasticsearch and elasticsearch-secure) must not build
        # the same cache directory at once: the second rename would delete the first's tree.
        install_locks: dict[str, threading.Lock] = {str(s.artifacts): threading.Lock() for s in to_start}

        def bring_up(svc: Service) -> None:
            try:
                with install_locks[str(svc.artifacts)]:
                    if not svc.installed():
                        t0 = time.monotonic()
                        log(f"{svc.name}: installing {svc.version} into {svc.artifacts}")
                        svc.install()
                        log(f"{svc.name}: installed in {time.monotonic() - t0:.0f}s")
                for dep in svc.depends_on:
                    done[dep].wait()
                    if dep in failed:
                        raise StackError(f"{svc.name}: not started because {dep} failed")
                self._start(svc, log)
            except Exception as e:  # noqa: BLE001 - every failure is reported with the service name
                with lock:
                    failed.add(svc.name)
                    msg = str(e)
                    errors.append(msg if msg.startswith(svc.name) else f"{svc.name}: {msg}")
            finally:
                done[svc.name].set()

        if to_start:
            with ThreadPoolExecutor(max_workers=len(to_start)) as pool:
                list(pool.map(bring_up, to_start))
        if errors:
            raise StackError("\n\n".join(errors))
        return self.status()

    def _start(self, svc: Service, log: Any) -> None:
        svc.data.mkdir(parents=True, exist_ok=True)
        user = svc.user
        chown_tree(svc.data, user)
        svc.prepare()
        t0 = time.monotonic()
        svc.log.parent.mkdir(parents=True, exist_ok=True)
        with svc.log.open("ab") as out:
            out.write(f"\n--- cdcstream stack: starting {svc.name} {svc.version} at {time.ctime()}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                svc.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **svc.env()}, cwd=svc.data, start_new_session=True, user=user,
                group=primary_group(user), extra_groups=[] if user else None,
            )
        svc.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + svc.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{svc.name}: exited with code {proc.returncode} during start; last lines of "
                                 f"{svc.log}:\n{tail(svc.log)}")
            if svc.healthy():
                break
            time.sleep(0.5)
        else:
            self._kill(svc, proc.pid)
            raise StackError(f"{svc.name}: not healthy after {svc.start_timeout:.0f}s; last lines of "
                             f"{svc.log}:\n{tail(svc.log)}")
        svc.post_start()
        log(f"{svc.name}: healthy at {svc.url} in {time.monotonic() - t0:.1f}s (pid {proc.pid})")

    # --- down ------------------------------------------------------------------
    def _kill(self, svc: Service, pid: int, grace: float = 20.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            # Each server leads its own session (start_new_session), so the group is exactly it
            # and its children.
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # Reap if it is our child (same process that started it).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        svc.pidfile.unlink(missing_ok=True)

    def down(self, log: Any = print) -> None:
        # Dependents first: Connect before Kafka, and so on.
        order = list(self.services.values())
        order.sort(key=lambda s: -self._depth(s))
        for svc in order:
            pid = self.pid(svc)
            if pid is None:
                svc.pidfile.unlink(missing_ok=True)
                continue
            self._kill(svc, pid)
            log(f"{svc.name}: stopped (pid {pid})")

    def _depth(self, svc: Service) -> int:
        return 1 + max((self._depth(self.services[d]) for d in svc.depends_on if d in self.services), default=0)
