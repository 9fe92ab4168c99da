"""The throwaway PostgreSQL server never outlives the process that started it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numfed.pgtemp import PostgresUnavailable, find_bin_dir

_STARTER = """
import json, sys, time
from pathlib import Path
from numfed.pgtemp import TempPostgres
pg = TempPostgres(Path(sys.argv[1])).start()
print(json.dumps({"port": pg.port, "directory": str(pg.directory)}), flush=True)
time.sleep(600)
"""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def _wait_until(check: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(120)
def test_server_stops_when_the_starting_process_is_killed(tmp_path: Path) -> None:
    try:
        find_bin_dir()
    except PostgresUnavailable as exc:
        if os.environ.get("NUMFED_REQUIRE_POSTGRES", "") not in ("", "0"):
            pytest.fail(f"PostgreSQL is required here: {exc}")
        pytest.skip(str(exc))
    proc = subprocess.Popen(
        [sys.executable, "-c", _STARTER, str(tmp_path / "pg")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else "no output"
        started = json.loads(line)
        port, directory = int(started["port"]), Path(started["directory"])
        assert _listening(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _wait_until(lambda: not _listening(port), 30), "PostgreSQL outlived its starter"
        assert _wait_until(lambda: not (directory / "data" / "postmaster.pid").exists(), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
