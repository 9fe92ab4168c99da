"""No test may hang: every test runs under a timeout, and a stuck one fails with a traceback;
nor leave a grpc channel open or a server running (see tests/conftest.py)."""

from __future__ import annotations

import os
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


def with_our_conftest(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest on the tests in ``tmp_path`` with this suite's conftest as a plugin."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        capture_output=True,
        text=True,
        timeout=50,
    )


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


STUCK_WHERE_NO_SIGNAL_GETS_THROUGH = """
import signal, time

def test_blocks_the_timeout_signal():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(4)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
"""


def test_a_test_past_its_ceiling_dumps_every_stack_even_if_the_signal_cannot_stop_it(
    pytestconfig: pytest.Config, tmp_path: Path
) -> None:
    """faulthandler dumps from a C thread a little after the ceiling, so even a test stuck
    where pytest-timeout's signal is never handled says where it stands."""
    ceiling = float(pytestconfig.getini("timeout"))
    assert ceiling < float(pytestconfig.getini("faulthandler_timeout")) <= ceiling * 1.5
    (tmp_path / "test_stuck.py").write_text(STUCK_WHERE_NO_SIGNAL_GETS_THROUGH)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntimeout = 1\ntimeout_method = signal\nfaulthandler_timeout = 2\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Timeout (0:00:02)!" in run.stderr, run.stderr
    assert "in test_blocks_the_timeout_signal" in run.stderr, run.stderr


SWALLOWS_ITS_TIMEOUT = """
import asyncio

import pytest


@pytest.fixture
async def stuck_at_teardown():
    yield
    await asyncio.Event().wait()  # a teardown that never ends, after the test failed


async def _swallows():
    while True:
        try:
            await asyncio.sleep(3600)
        except BaseException:  # what a task does with what the alarm's handler raised in it
            pass


async def test_swallows_the_timeout(stuck_at_teardown):
    await asyncio.get_running_loop().create_task(_swallows())


def test_after_it():
    pass
"""


@pytest.mark.timeout(60)
def test_a_test_whose_timeout_is_swallowed_ends_the_run(tmp_path: Path) -> None:
    """The signal's failure lands in an asyncio task that catches it: the test would wait for
    good. The backstop (tests/conftest.py) names it, dumps the stacks and ends the run."""
    (tmp_path / "test_swallows.py").write_text(SWALLOWS_ITS_TIMEOUT)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "timeout = 1\ntimeout_method = signal\n"
    )
    run = with_our_conftest(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "test_swallows_the_timeout is still running 3 s after it started" in run.stdout, (
        run.stdout + run.stderr
    )
    assert "in pytest_runtest_teardown" in run.stdout  # the stacks say where it stood
    assert "test_after_it" not in run.stdout


LEAKS = """
import grpc

async def test_leaves_a_channel_open():
    grpc.aio.insecure_channel("127.0.0.1:1")

async def test_leaves_a_server_running():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()

async def test_closes_what_it_opens():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel("127.0.0.1:1"):
        pass
    await server.stop(0)
"""


@pytest.mark.timeout(60)
def test_a_test_that_leaves_a_channel_open_or_a_server_running_fails(tmp_path: Path) -> None:
    (tmp_path / "test_leaks.py").write_text(LEAKS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    run = with_our_conftest(tmp_path)
    # Each test's call passes; the two that leak fail at teardown.
    assert "3 passed, 2 errors" in run.stdout, run.stdout + run.stderr
    assert "channel opened at test_leaks.py:5 (test_leaves_a_channel_open)" in run.stdout
    assert "server opened at test_leaks.py:10 (test_leaves_a_server_running)" in run.stdout


@pytest.mark.timeout(60)
def test_a_timed_out_async_test_shows_its_tasks(tmp_path: Path) -> None:
    """A test stuck in an event loop shows only the loop's select in its thread stacks; the
    timeout's dump names every task and where it waits."""
    (tmp_path / "test_hangs.py").write_text(HANGS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "timeout = 2\ntimeout_method = signal\n"
    )
    run = with_our_conftest(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "asyncio task" in run.stdout, run.stdout
    assert "in test_awaits_forever" in run.stdout, run.stdout
