"""While the database is away the dispatcher keeps trying, says so in a line or two (not a
traceback a second), and leases again once it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from gateway.dispatcher import Dispatcher
from numfed.config import Limits
from numfed.errors import Unavailable


class FlakyStore:
    """A store whose database is away until ``back`` is set."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.leased = asyncio.Event()
        self.tried = asyncio.Event()
        """Set once the dispatcher has tried several times against the missing database."""
        self.calls = 0

    async def run(self, fn: Callable[..., Any], *args: object) -> Any:
        self.calls += 1
        if self.calls >= 6:
            self.tried.set()
        if not self.back.is_set():
            raise Unavailable("DATABASE_UNAVAILABLE", "the gateway's database is unavailable")
        if fn == self.claim_due:
            self.leased.set()
            return []
        return None

    def claim_due(self, *args: object) -> list[object]:
        return []

    def next_due_us(self) -> None:
        return None

    def release_leases(self, *args: object) -> int:
        return 0


async def test_the_dispatcher_survives_the_database_going_away_and_logs_it_briefly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    dispatcher = Dispatcher(
        store=store,  # type: ignore[arg-type]
        links={},
        limits=Limits(),
        owner="gw-test",
        on_change=lambda _jobs: None,
    )
    with caplog.at_level(logging.INFO, logger="gateway.dispatcher"):
        task = asyncio.create_task(dispatcher.run())
        try:
            async with asyncio.timeout(10):
                await store.tried.wait()
            assert not task.done(), "the dispatcher gave up"
            store.back.set()
            dispatcher.wake()
            async with asyncio.timeout(10):
                await store.leased.wait()
        finally:
            await dispatcher.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "leasing release tasks failing (DATABASE_UNAVAILABLE); retrying"
    assert lines[-1].startswith("leasing release tasks working again after")
    assert len(lines) == 2, lines
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
