"""Test-wide settings and the database backends every store test runs on.

Under CI, hypothesis runs derandomized so a run is reproducible.

``db_url`` gives each test a fresh, empty database, once on SQLite and once on a real
PostgreSQL server that the session starts itself from the machine's PostgreSQL binaries
(:mod:`numfed.pgtemp`). Without those binaries the PostgreSQL half is skipped — unless
``NUMFED_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_timeout  # type: ignore[import-untyped]
from hypothesis import settings

from numfed.pgtemp import PostgresUnavailable, TempPostgres
from numfed.testing import leaks

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    """Initialise grpc's asyncio layer once for the whole test process.

    grpc shuts that layer down when its last aio object is garbage-collected, and the shutdown
    can hang joining its poller thread (grpc/grpc#22365) when that happens in the middle of a
    run, e.g. while pytest drops a test's fixtures. Holding one reference from the start means
    the shutdown never runs mid-run; the process exit ends it.
    """
    grpc.aio.init_grpc_aio()
    leaks.install()
    pytest_timeout.dump_stacks = _stacks_and_tasks(pytest_timeout.dump_stacks)


def _stacks_and_tasks(dump_stacks: Callable[[Any], None]) -> Callable[[Any], None]:
    """pytest-timeout's stack dump, and then every asyncio task of the loop the test runs on:
    a test stuck in an event loop shows only the loop's ``select`` in its thread stacks."""

    def dump(terminal: Any) -> None:
        dump_stacks(terminal)
        try:
            loop = asyncio.get_running_loop()  # the timeout signal lands on the loop's thread
        except RuntimeError:
            return
        for task in asyncio.all_tasks(loop):
            terminal.sep("~", title=f"asyncio task {task.get_name()}")
            # Down the chain of awaits, frame by frame (Task.print_stack shows only the task's
            # own coroutine, and fails on grpc's cython frames, which have no line number).
            coro: Any = task.get_coro()
            for _ in range(200):
                if coro is None:
                    break
                if type(coro).__name__ == "async_generator_asend":  # no frame: its generator's
                    coro = getattr(coro, "ag", None) or _asend_generator(coro)
                frame = (
                    getattr(coro, "cr_frame", None)
                    or getattr(coro, "gi_frame", None)
                    or getattr(coro, "ag_frame", None)
                )
                if frame is not None:
                    code = frame.f_code
                    terminal.write(
                        f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}\n'
                    )
                coro = (
                    getattr(coro, "cr_await", None)
                    or getattr(coro, "gi_yieldfrom", None)
                    or getattr(coro, "ag_await", None)
                )

    return dump


def _asend_generator(asend: Any) -> Any:
    """The async generator an ``__anext__()`` awaitable steps (found through the GC)."""
    import gc

    return next((r for r in gc.get_referents(asend) if hasattr(r, "ag_frame")), None)


BACKSTOP = (2.0, 10.0)
"""A test still running ``factor * its timeout + min(its timeout, margin)`` seconds after it
started ends the run."""


def _ceiling(item: pytest.Item) -> float:
    """The test's timeout in seconds, as pytest-timeout reads it (marker, else ini); 0: none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    return float(item.config.getini("timeout") or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """The ceiling under the ceiling: no test may hang, even when its timeout is swallowed.

    pytest-timeout's signal method raises its failure from the SIGALRM handler, in whatever
    the main thread runs. Inside an event loop that is usually an asyncio callback or a task,
    and asyncio catches it there (a task takes it as its result; ``Handle._run`` passes it to
    the loop's exception handler): the test goes on, and the one-shot alarm never fires again
    (a fixture teardown stuck after a failed test was seen to wait for good). So a thread
    watches each test too, setup, call and teardown, and past :data:`BACKSTOP` it says which test,
    dumps every thread's stack and ends the run with exit code 1 (pytest-timeout's thread
    method), rather than leave it to CI's own ceiling."""
    ceiling = _ceiling(item)
    if ceiling <= 0:
        yield
        return
    factor, margin = BACKSTOP
    limit = ceiling * factor + min(ceiling, margin)
    timer = threading.Timer(limit, _give_up, (item, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _give_up(item: pytest.Item, limit: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(item)
    item.config.get_terminal_writer().line(
        f"\n{item.nodeid} is still running {limit:g} s after it started, past its timeout "
        "(the timeout failure was swallowed); ending the run"
    )
    settings = pytest_timeout.Settings(limit, "thread", False, False)
    pytest_timeout.timeout_timer(item, settings)


@pytest.fixture(autouse=True)
def _grpc_closed_by_each_test() -> Iterator[None]:
    """Fail a test (at teardown) that leaves a grpc.aio channel open or a server running.

    Autouse, so it is set up before the test's other fixtures and torn down after them: what
    it finds was left open by the test or one of its fixtures, and is closed by nobody. Left to
    garbage collection, grpc closes it in ``__del__``, on an event loop that may be gone.
    """
    point = leaks.mark()
    yield
    left = leaks.open_since(point)
    if left:
        pytest.fail(
            f"{len(left)} grpc.aio channel(s)/server(s) left open:\n"
            + "\n".join(f"  {o}" for o in left),
            pytrace=False,
        )


BACKENDS = ["sqlite", "postgresql"]
_names = itertools.count(1)


def _require_postgres() -> bool:
    return os.environ.get("NUMFED_REQUIRE_POSTGRES", "") not in ("", "0")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TempPostgres]:
    """One PostgreSQL server for the whole session."""
    try:
        server = TempPostgres(tmp_path_factory.mktemp("postgres")).start()
    except PostgresUnavailable as exc:
        if _require_postgres():
            pytest.fail(f"PostgreSQL is required here but did not start: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    server: TempPostgres = request.getfixturevalue("postgres")
    return server.create_database(f"t{os.getpid()}_{next(_names)}")
