"""numfed.db: work handed on is never cut short by a cancellation, nor left running after it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from numfed.db import DbThread, run_to_end


async def test_a_cancelled_caller_ends_only_once_its_work_on_the_thread_has() -> None:
    """Stops cancel tasks and then give back leases or close the store: by then the work the
    tasks handed to the database thread must be over, not still running (or committing)."""
    db = DbThread("test-db")
    started, go = threading.Event(), threading.Event()
    finished: list[str] = []

    def work() -> str:
        started.set()
        go.wait(10)
        finished.append("committed")
        return "committed"

    try:
        task = asyncio.create_task(db.run(work))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.2)
        assert not done, "the cancellation ended the call while its work still ran"
        task.cancel()  # cancelling again changes nothing
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["committed"]
    finally:
        go.set()
        db.close()


async def test_run_to_end_never_cuts_a_piece_in_two() -> None:
    """A commit and its audit entry: a cancellation in between is raised after both."""
    steps: list[str] = []
    committed, go = asyncio.Event(), asyncio.Event()

    async def commit_then_audit() -> None:
        steps.append("commit")
        committed.set()
        await go.wait()
        steps.append("audit")

    task = asyncio.create_task(run_to_end(commit_then_audit()))
    await committed.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["commit", "audit"]
