"""No product code uses ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation.

When the awaited thing finishes just as the waiting task is cancelled, 3.11's ``wait_for``
returns its result and drops the cancel (CPython gh-86296, fixed in 3.12 by rebuilding it on
``asyncio.timeout``). A loop that waits that way each round (an event pusher's idle wait, say)
then runs on after ``Task.cancel()``, and whatever gathers it at stop waits for good: a
gateway's stop was seen to hang so. ``async with asyncio.timeout(t)`` keeps the cancel.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("gateway", "numfed", "platform_stubs", "carrier_adapters", "bench", "scripts")


def _wait_for_calls() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "asyncio"
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_product_code_waits_with_asyncio_wait_for() -> None:
    assert _wait_for_calls() == []


async def _cancelled_as_it_finishes(wait: object) -> bool:
    """Whether a task that waits for an event is still running after being cancelled just as
    the event is set (the race: both land in the same loop iteration)."""
    event = asyncio.Event()

    async def waiter() -> None:
        while True:  # an idle loop, as a pusher's
            await wait(event)  # type: ignore[operator]
            event.clear()

    task = asyncio.get_running_loop().create_task(waiter())
    await asyncio.sleep(0.01)
    event.set()
    await asyncio.sleep(0)  # the inner wait wakes; the waiter has not run yet
    task.cancel()
    await asyncio.sleep(0.05)
    running = not task.done()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    return running


@pytest.mark.timeout(10)
async def test_asyncio_timeout_keeps_a_cancel_that_wait_for_drops() -> None:
    """The reason for the rule, shown on this interpreter."""

    async def with_timeout(event: asyncio.Event) -> None:
        async with asyncio.timeout(1.0):
            await event.wait()

    async def with_wait_for(event: asyncio.Event) -> None:
        await asyncio.wait_for(event.wait(), 1.0)

    assert not await _cancelled_as_it_finishes(with_timeout)
    import sys

    if sys.version_info < (3, 12):
        assert await _cancelled_as_it_finishes(with_wait_for)
