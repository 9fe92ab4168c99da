"""The query batcher: one call when idle, coalesced batches when busy, per-item deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.batcher import Batcher, BatchTimeout


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Platform:
    """A fake platform transport that records each batch and answers when released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def send(self, items: Sequence[int], timeout: float) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [f"r{i}" for i in items]


async def test_sends_at_once_when_idle_and_coalesces_while_busy() -> None:
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=100, max_in_flight=4)
    first = asyncio.create_task(b.submit(0, 5.0))
    await settle()
    assert p.batches == [[0]]  # nothing was in flight: sent alone, at once
    rest = [asyncio.create_task(b.submit(i, 5.0)) for i in range(1, 11)]
    await settle()
    assert p.batches == [[0]] and b.queued == 10  # busy: the others wait for the next batch
    p.gate.set()
    assert await first == "r0"
    assert [await t for t in rest] == [f"r{i}" for i in range(1, 11)]
    assert p.batches == [[0], list(range(1, 11))]
    assert b.calls == 2


async def test_full_batch_leaves_while_under_the_in_flight_cap() -> None:
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=3, max_in_flight=2)
    tasks = [asyncio.create_task(b.submit(i, 5.0)) for i in range(7)]
    await settle()
    # 0 alone, then one full batch of 3 while a slot is free; the rest wait for a return.
    assert p.batches == [[0], [1, 2, 3]]
    assert b.in_flight == 2
    p.gate.set()
    assert [await t for t in tasks] == [f"r{i}" for i in range(7)]
    assert sorted(i for batch in p.batches for i in batch) == list(range(7))


async def test_one_request_times_out_alone() -> None:
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=10, max_in_flight=1)
    short = asyncio.create_task(b.submit(1, 0.05))
    long = asyncio.create_task(b.submit(2, 5.0))
    with pytest.raises(BatchTimeout):
        await short
    p.gate.set()
    assert await long == "r2"


async def test_batch_failure_reaches_each_request() -> None:
    p = Platform()
    p.fail = ConnectionError("down")
    p.gate.set()
    b: Batcher[int, str] = Batcher(p.send, max_items=10, max_in_flight=1)
    results = await asyncio.gather(b.submit(1, 1.0), b.submit(2, 1.0), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert b.in_flight == 0


async def test_wrong_result_count_fails_the_batch() -> None:
    async def extra_answer(items: Sequence[int], timeout: float) -> list[str]:
        return ["a", "b", "c"][: len(items) + 1]

    b: Batcher[int, str] = Batcher(extra_answer, max_items=10, max_in_flight=1)
    with pytest.raises(RuntimeError, match="2 results for 1 items"):
        await b.submit(1, 1.0)


async def test_batch_call_is_cancelled_once_nobody_waits_for_it() -> None:
    cancelled: list[list[int]] = []

    async def send(items: Sequence[int], timeout: float) -> list[str]:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(list(items))
            raise
        return []

    b: Batcher[int, str] = Batcher(send, max_items=10, max_in_flight=1)
    first = asyncio.create_task(b.submit(1, 30))
    await settle()
    second = asyncio.create_task(b.submit(2, 30))  # waits for the next batch
    await settle()
    first.cancel()
    await settle()
    assert cancelled == [[1]]  # the first call's only caller left: the call is gone
    assert b.in_flight == 1  # and the waiting request went out in its own call
    second.cancel()
    await settle()
    assert cancelled == [[1], [2]] and b.in_flight == 0


async def test_a_shared_batch_call_survives_while_one_caller_still_waits() -> None:
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=10, max_in_flight=1)
    blocker = asyncio.create_task(b.submit(0, 30))
    await settle()
    x = asyncio.create_task(b.submit(1, 30))
    y = asyncio.create_task(b.submit(2, 30))
    await settle()
    p.gate.set()
    assert await blocker == "r0"
    await settle()
    assert p.batches == [[0], [1, 2]]
    x.cancel()
    await settle()
    assert await y == "r2"
