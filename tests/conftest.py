"""Test-wide settings and the database backends every store test runs on.

Under CI, hypothesis runs derandomized so a run is reproducible.

``db_url`` gives each test a fresh, empty database, once on SQLite and once on a real
PostgreSQL server that the session starts itself from the machine's PostgreSQL binaries
(:mod:`numfed.pgtemp`). Without those binaries the PostgreSQL half is skipped — unless
``NUMFED_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
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
