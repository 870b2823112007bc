"""PostgreSQL from Debian's packages, our own cluster with ``wal_level=logical``."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, run

PG_MAJOR = "15"  # Debian bookworm's PostgreSQL; Debezium 3.6 supports 10+ with pgoutput.
SUPERUSER = "postgres"
SUPERPASS = "postgres"  # local dev server on loopback only; real deployments use Vault


def _bindir() -> Path | None:
    hits = sorted(glob.glob(f"/usr/lib/postgresql/{PG_MAJOR}/bin/postgres"))
    return Path(hits[-1]).parent if hits else None


def apt_install(*packages: str) -> None:
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not found; install {' '.join(packages)} with your package manager")
    run(["apt-get", "update", "-q"], what="apt-get update", env={"DEBIAN_FRONTEND": "noninteractive"})
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], what=f"apt-get install {packages}",
        env={"DEBIAN_FRONTEND": "noninteractive"})


class PostgresService(Service):
    name = "postgres"
    version = PG_MAJOR
    ports = (5432,)
    unprivileged = True
    start_timeout = 60.0

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.ports[0]}/postgres"

    def info(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.ports[0], "user": SUPERUSER, "password": SUPERPASS}

    def install(self) -> None:
        if _bindir() is None:
            apt_install(f"postgresql-{PG_MAJOR}", f"postgresql-client-{PG_MAJOR}")
        with building(self.artifacts) as tmp:
            self.mark_complete(tmp)

    def installed(self) -> bool:
        return super().installed() and _bindir() is not None

    def _bin(self, prog: str) -> str:
        bindir = _bindir()
        if bindir is None:
            raise StackError("postgres: server binaries missing; run `cdcstream stack up` to install them")
        return str(bindir / prog)

    def prepare(self) -> None:
        pgdata = self.data / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        pwfile = self.data / ".pw"
        pwfile.write_text(SUPERPASS + "\n")
        pwfile.chmod(0o644)
        run([self._bin("initdb"), "-D", str(pgdata), "-U", SUPERUSER, "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            user=self.user, what="postgres: initdb")
        pwfile.unlink()
        # Debezium connects over TCP as an ordinary replication role.
        with (pgdata / "pg_hba.conf").open("a") as f:
            f.write("host replication all 127.0.0.1/32 scram-sha-256\n")

    def command(self) -> list[str]:
        return [
            self._bin("postgres"), "-D", str(self.data / "pgdata"), "-p", str(self.ports[0]),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",  # TCP only: no socket path limits, no stray sockets
            "-c", "wal_level=logical",
            "-c", "max_wal_senders=20",
            "-c", "max_replication_slots=20",
            "-c", "fsync=off",  # a throwaway dev cluster; faster test runs
            "-c", "synchronous_commit=off",
        ]

    def healthy(self) -> bool:
        try:
            run([self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.ports[0]), "-t", "2"], timeout=5)
        except (StackError, OSError):
            return False
        return True

    def psql(self, sql: str, db: str = "postgres") -> str:
        return run([self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", SUPERUSER, "-d", db,
                    "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], env={"PGPASSWORD": SUPERPASS}, what="psql")

    def post_start(self) -> None:
        level = self.psql("SHOW wal_level").strip()
        if level != "logical":
            raise StackError(f"postgres: wal_level is {level!r}, expected 'logical'")
