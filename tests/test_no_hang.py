"""No test may hang: every test runs under a timeout, and a stuck one fails with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HANGS = """
import asyncio, threading

def test_blocks_in_a_join():
    t = threading.Thread(target=threading.Event().wait, daemon=True)
    t.start()
    t.join()

async def test_awaits_forever():
    await asyncio.Event().wait()
"""


def test_every_test_has_a_ceiling(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("timeout_method") == "signal"


@pytest.mark.timeout(60)
def test_a_stuck_test_fails_within_its_timeout(tmp_path: Path) -> None:
    (tmp_path / "test_hangs.py").write_text(HANGS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\ntimeout = 2\ntimeout_method = signal\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 failed" in run.stdout, run.stdout
    assert run.stdout.count("Timeout (>2.0s)") >= 2, run.stdout
