"""A throwaway PostgreSQL server in a directory, from the machine's own PostgreSQL binaries.

For tests, benchmarks and the multi-replica demo: ``initdb`` into ``directory``, ``pg_ctl
start`` on a free loopback port with a Unix socket in the same directory, and ``stop`` (immediate
shutdown) on exit. PostgreSQL refuses to run as root, so when this process is root the server
runs as the ``postgres`` system user (Debian's package creates it), in a private folder of its
own under the system temporary directory (which that user can reach, unlike a root-only test
folder); the folder is removed on stop.

The server never outlives the process that started it: a watchdog process holds the read end of
a pipe whose write end only this process has. When this process ends in any way (``stop``, an
exception, SIGKILL), the pipe closes, and the watchdog stops the server (immediate shutdown) and
removes its folder. A killed test run leaves no PostgreSQL behind.

    with TempPostgres(tmp / "pg") as pg:
        url = pg.create_database("gw1")   # postgresql+psycopg://...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresUnavailable", "TempPostgres", "find_bin_dir"]

SEARCH = ("/usr/lib/postgresql/*/bin",)
"""Where Debian's ``postgresql`` package puts the server binaries (one folder per version)."""


_WATCHDOG = """
import shutil, subprocess, sys
pg_ctl, data, private, as_postgres = sys.argv[1:5]
sys.stdin.buffer.read()  # returns when the starting process closes the pipe or dies
cmd = [pg_ctl, "-D", data, "-m", "immediate", "stop"]
if as_postgres == "1":
    cmd = ["runuser", "-u", "postgres", "--", *cmd]
subprocess.run(cmd, capture_output=True, timeout=60, check=False)
if private:
    shutil.rmtree(private, ignore_errors=True)
"""
"""Runs beside the server: waits for EOF on stdin, then stops the server (see module doc)."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the server would not start."""


def _major_version(bin_dir: str) -> int:
    """The PostgreSQL major version a ``.../<version>/bin`` folder names (0 if none)."""
    name = Path(bin_dir).parent.name
    return int(name) if re.fullmatch(r"[0-9]{1,4}", name) else 0


def find_bin_dir() -> Path:
    """The newest PostgreSQL server bin folder (``NUMFED_PG_BIN`` overrides)."""
    env = os.environ.get("NUMFED_PG_BIN")
    if env:
        candidates = [env]
    else:
        candidates = sorted(
            (d for pattern in SEARCH for d in glob.glob(pattern)),
            key=_major_version,
            reverse=True,
        )
    for d in candidates:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries found (install Debian's postgresql package)"
    )


def _free_port() -> int:
    from numfed.federation import free_ports

    return free_ports(1)[0]


class TempPostgres:
    """A private PostgreSQL server: start on enter, immediate shutdown on exit (it is thrown
    away, so nothing needs flushing: a fast shutdown spent half a minute on a checkpoint)."""

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
        self._watchdog: subprocess.Popen[bytes] | None = None

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
        self._start_watchdog()
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

    def _start_watchdog(self) -> None:
        """Start the process that stops the server once this one is gone (see module doc)."""
        if self._watchdog is not None:
            return
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(self.bin / "pg_ctl"),
                str(self.data),
                str(self.directory) if self._private else "",
                "1" if self._as_postgres else "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run must not stop it before cleanup
        )

    def _stop_watchdog(self) -> None:
        dog, self._watchdog = self._watchdog, None
        if dog is None:
            return
        assert dog.stdin is not None
        dog.stdin.close()
        try:
            dog.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dog.kill()

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
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
            self.port = 0
        self._stop_watchdog()
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
