"""A throwaway PostgreSQL server in a directory, from the machine's own PostgreSQL binaries.

For tests, benchmarks and the multi-replica demo: ``initdb`` into ``directory``, ``pg_ctl
start`` on a free loopback port with a Unix socket in the same directory, and ``stop`` (fast
shutdown) on exit. PostgreSQL refuses to run as root, so when this process is root the server
runs as the ``postgres`` system user (Debian's package creates it), in a private folder of its
own under the system temporary directory (which that user can reach, unlike a root-only test
folder); the folder is removed on stop.

    with TempPostgres(tmp / "pg") as pg:
        url = pg.create_database("gw1")   # postgresql+psycopg://...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresUnavailable", "TempPostgres", "find_bin_dir"]

SEARCH = ("/usr/lib/postgresql/*/bin",)
"""Where Debian's ``postgresql`` package puts the server binaries (one folder per version)."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the server would not start."""


def find_bin_dir() -> Path:
    """The newest PostgreSQL server bin folder (``NUMFED_PG_BIN`` overrides)."""
    env = os.environ.get("NUMFED_PG_BIN")
    if env:
        candidates = [env]
    else:
        candidates = sorted(
            (d for pattern in SEARCH for d in glob.glob(pattern)),
            key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
            reverse=True,
        )
    for d in candidates:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries found (install Debian's postgresql package)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """A private PostgreSQL server: start on enter, fast shutdown on exit."""

    def __init__(self, directory: Path, *, user: str = "numfed") -> None:
        self.bin = find_bin_dir()
        self._as_postgres = os.geteuid() == 0
        self._private = self._as_postgres
        if self._private:
            directory = Path(tempfile.mkdtemp(prefix="numfed-pg-"))
        self.directory = Path(directory).resolve()
        self.data = self.directory / "data"
        self.user = user
        self.port = 0

    @property
    def url(self) -> str:
        """The URL of the default database (``postgres``)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if res.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({res.returncode}): {res.stderr.strip()[-800:]}"
            )
        return res

    def start(self) -> TempPostgres:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root needs runuser to drop to postgres")
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable("running as root needs a postgres system user") from exc
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
        self.port = _free_port()
        opts = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                "-c max_connections=200",
                "-c shared_buffers=128MB",
                "-c fsync=on",
                "-c synchronous_commit=on",
            ]
        )
        log = self.directory / "server.log"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(log),
            "-o",
            opts,
            "-w",
            "start",
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return
            time.sleep(0.05)
        raise PostgresUnavailable(f"PostgreSQL did not listen on port {self.port}")

    def create_database(self, name: str) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url_for(name)

    def stop(self) -> None:
        if self.port:
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
            self.port = 0
        if self._private:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
