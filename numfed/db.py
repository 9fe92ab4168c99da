"""Database plumbing shared by every role: SQLite engines in WAL mode, and one DB thread.

Servers run on asyncio; SQLAlchemy is synchronous. Each store runs its work on one worker
thread of its own, so the event loop never blocks and SQLite sees a single writer. Work handed to
a thread always runs to its end (a thread cannot be interrupted); cancelling the task that waits
for it takes effect only then, so a component stopped by cancelling its tasks has no database
work left running once they are done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import sqlalchemy as sa

__all__ = ["DbThread", "run_to_end", "serialize", "sqlite_engine"]

P = ParamSpec("P")
R = TypeVar("R")


def _pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def sqlite_engine(url_or_path: str | Path) -> sa.Engine:
    """A SQLite engine (WAL, NORMAL sync, busy timeout, foreign keys); creates the folder."""
    url = url_or_path if isinstance(url_or_path, str) else f"sqlite:///{url_or_path}"
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, poolclass=sa.pool.SingletonThreadPool)
    sa.event.listen(engine, "connect", _pragmas)
    return engine


def serialize(conn: sa.Connection, key: int) -> None:
    """Hold a transaction-scoped lock named ``key`` until ``conn``'s transaction ends.

    On PostgreSQL this is an advisory lock, so replicas appending to one sequence (the audit
    chain, the event log) commit in the order they numbered. SQLite has one writer at a time
    anyway, so there it does nothing.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


async def run_to_end(work: Awaitable[R]) -> R:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; then raise the
    cancellation. For work that must not be cut in two, such as a commit and its audit entry,
    and for work on a thread, which no cancellation stops anyway."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


class DbThread:
    """Worker threads that run a store's synchronous database work.

    One thread for SQLite (one writer); a server database like PostgreSQL takes several, each
    on a connection of its own, so that one transaction waiting for its commit to reach disk
    does not hold up the others.
    """

    def __init__(self, name: str, workers: int = 1) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on a worker thread and return what it returns.

        If the caller is cancelled meanwhile, the cancellation is raised once ``fn`` has
        finished (committed or rolled back), never while it still runs: otherwise a stop that
        cancels a task and then gives back its leases or closes the store would race work that
        is still going on, or commits after the stop (on PostgreSQL the two deadlocked).
        """
        loop = asyncio.get_running_loop()
        return await run_to_end(
            loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
