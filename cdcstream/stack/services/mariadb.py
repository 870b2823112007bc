"""MariaDB from Debian's packages, our own datadir with a row-based binlog for Debezium."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, run
from cdcstream.stack.services.postgres import apt_install

MARIADB_SERIES = "10.11"  # Debian bookworm's MariaDB; Debezium's MariaDB connector supports 10.6+.
ADMIN_USER = "root"
ADMIN_PASS = "mariadb"  # local dev server on loopback only; real deployments use Vault
#: Kernel limit for sun_path is 108 bytes including the NUL.
_SOCKET_PATH_MAX = 107

_SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


def _which(prog: str) -> str | None:
    # /usr/sbin is often missing from a non-root PATH.
    found = shutil.which(prog)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d) / prog
        if p.is_file():
            return str(p)
    return None


class MariaDBService(Service):
    name = "mariadb"
    version = MARIADB_SERIES
    ports = (3306,)
    unprivileged = True
    start_timeout = 60.0

    @property
    def url(self) -> str:
        return f"mysql://{ADMIN_USER}@127.0.0.1:{self.ports[0]}/"

    def info(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.ports[0], "user": ADMIN_USER, "password": ADMIN_PASS}

    # --- install ---------------------------------------------------------------
    def install(self) -> None:
        if _which("mariadbd") is None or _which("mariadb-install-db") is None or _which("mariadb") is None:
            apt_install("mariadb-server", "mariadb-client")
        with building(self.artifacts) as tmp:
            self.mark_complete(tmp)

    def installed(self) -> bool:
        return super().installed() and _which("mariadbd") is not None

    def _bin(self, prog: str) -> str:
        path = _which(prog)
        if path is None:
            raise StackError(f"mariadb: {prog} missing; run `cdcstream stack up` to install mariadb-server")
        return path

    # --- layout ----------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.data / "datadir"

    @property
    def socket(self) -> Path:
        # The server always opens a unix socket; a deep clone path would overflow sun_path, so fall
        # back to a per-clone name in the temp dir.
        local = self.data / "mariadbd.sock"
        if len(str(local)) <= _SOCKET_PATH_MAX - 8:
            return local
        digest = hashlib.sha256(str(self.data).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"cdcstream-mariadb-{digest}.sock"

    @property
    def init_file(self) -> Path:
        return self.data / "init.sql"

    # --- lifecycle -------------------------------------------------------------
    def prepare(self) -> None:
        # Run by the server itself at every start, before it accepts connections: the admin
        # account exists by the time healthy() answers, with no socket or OS-user auth involved.
        # sql_log_bin=0 keeps these grants out of the binlog that Debezium reads.
        self.init_file.write_text(
            "SET sql_log_bin=0;\n"
            f"CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{ADMIN_PASS}';\n"
            f"ALTER USER '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{ADMIN_PASS}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
        )
        self.init_file.chmod(0o644)
        if (self.datadir / "mysql").is_dir():
            return
        if self.datadir.exists():
            # A previous mariadb-install-db died half way: start clean.
            shutil.rmtree(self.datadir)
        run([self._bin("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve"],
            user=self.user, what="mariadb: mariadb-install-db", timeout=300)

    def command(self) -> list[str]:
        return [
            self._bin("mariadbd"),
            "--no-defaults",  # ignore /etc/mysql: its socket, datadir and bind-address are the system server's
            f"--datadir={self.datadir}",
            f"--port={self.ports[0]}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.data / 'mariadbd.pid'}",
            f"--init-file={self.init_file}",
            "--skip-name-resolve",  # host part of accounts is the IP, so 'root'@'127.0.0.1' always matches TCP
            "--log-bin=mariadb-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--server-id=1",
            "--binlog-expire-logs-seconds=259200",  # 3 days: room for a stopped connector to catch up
            "--max-allowed-packet=64M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-flush-log-at-trx-commit=2",  # a throwaway dev server; faster test runs
            "--sync-binlog=0",
        ]

    def sql(self, statement: str, timeout: float = 10.0) -> str:
        return run([self._bin("mariadb"), "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1",
                    "-P", str(self.ports[0]), "-u", ADMIN_USER, "--connect-timeout=2", "-N", "-B",
                    "-e", statement], env={"MYSQL_PWD": ADMIN_PASS}, timeout=timeout, what="mariadb")

    def healthy(self) -> bool:
        try:
            return self.sql("SELECT 1", timeout=5).strip() == "1"
        except (StackError, OSError, subprocess.TimeoutExpired):
            return False

    def post_start(self) -> None:
        out = self.sql("SELECT @@log_bin, @@binlog_format, @@binlog_row_image").split()
        if out != ["1", "ROW", "FULL"]:
            raise StackError(f"mariadb: binlog settings are {out}, expected log_bin=1 binlog_format=ROW "
                             "binlog_row_image=FULL")
