"""The query batcher: one call when idle, coalesced batches when busy, per-item deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.batcher import BatchCancelled, Batcher, BatchTimeout, ItemTooLarge, bisect, split


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


async def test_closing_the_batcher_settles_every_request_still_waiting_at_once() -> None:
    """Its platform left the federation (the link closed): a request waiting on a call in
    flight, or queued behind it, by submit or in a fan-out's own waiter, learns at once that
    its call was cancelled, not when its deadline passes; nothing is sent after the close."""
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=100, max_in_flight=1)
    submitted = asyncio.create_task(b.submit(1, 60.0))
    await settle()
    waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    b.enqueue(2, asyncio.get_running_loop().time() + 60.0, waiter)  # queued behind the first
    await settle()
    assert p.batches == [[1]]
    async with asyncio.timeout(1):
        await b.close()
        with pytest.raises(BatchCancelled):
            await submitted
        with pytest.raises(BatchCancelled):
            await waiter  # queued, never sent
    assert p.batches == [[1]] and b.in_flight == 0 and b.queued == 0  # nothing sent after
    late: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    b.enqueue(3, asyncio.get_running_loop().time() + 60.0, late)
    with pytest.raises(BatchCancelled):
        await late
    assert p.batches == [[1]]


async def test_closing_settles_a_batch_whose_call_has_not_started_yet() -> None:
    """The link closes in the same turn of the event loop as a request made its batch's call
    (created, not yet run: a config reload removing the platform, due in that turn, runs after
    the query that enqueued). The call is cancelled before its first step, so none of its own
    code runs; the request still learns at once that it was cancelled, nothing is sent, and no
    call stays counted in flight. It used to wait out its deadline."""
    p = Platform()
    b: Batcher[int, str] = Batcher(p.send, max_items=100, max_in_flight=1)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[str] = loop.create_future()
    b.enqueue(1, loop.time() + 60.0, waiter)
    assert b.in_flight == 1 and b.queued == 0  # its call made, not started
    async with asyncio.timeout(1):
        await b.close()
        with pytest.raises(BatchCancelled):
            await waiter
    assert p.batches == [] and b.in_flight == 0


async def test_a_call_cancelled_before_it_started_gives_its_place_back() -> None:
    """Its one caller went away before the batch's call took its first step: the call is
    cancelled unstarted, and the next request is still sent. The place it held used to stay
    taken for good (with one call in flight at most, as the SQLite commit batcher has, nothing
    was sent again)."""
    p = Platform()
    p.gate.set()
    b: Batcher[int, str] = Batcher(p.send, max_items=100, max_in_flight=1)
    gone = b.enqueue(1, asyncio.get_running_loop().time() + 60.0)
    Batcher.abandon(gone, cancel_call=True)
    async with asyncio.timeout(1):
        assert await b.submit(2, 60.0) == "r2"
    assert p.batches == [[2]] and b.in_flight == 0


async def test_a_batch_is_cut_by_size_as_well_as_by_count() -> None:
    """Items' sizes count against ``max_bytes``: a batch never carries more (one item larger
    than that goes alone), and a queue holding that many bytes is a full batch."""
    p = Platform()
    b: Batcher[int, str] = Batcher(
        p.send, max_items=100, max_in_flight=3, max_bytes=10, size=lambda i: i
    )
    tasks = [asyncio.create_task(b.submit(i, 5.0)) for i in (1, 4, 5, 3, 12, 2)]
    await settle()
    # 1 alone (idle); then full batches while calls may go out: 4+5 (3 more would be 12 bytes),
    # then 3 (12 more would be 15); 12 and 2 wait for a call to return.
    assert p.batches == [[1], [4, 5], [3]]
    p.gate.set()
    assert [await t for t in tasks] == [f"r{i}" for i in (1, 4, 5, 3, 12, 2)]
    assert p.batches[3:] == [[12], [2]]


def test_split_keeps_order_and_bounds_each_batch() -> None:
    sizes = [3, 3, 3, 11, 1, 1, 1, 1]
    batches = split(sizes, size=lambda n: n, max_items=3, max_bytes=7)
    assert batches == [[3, 3], [3], [11], [1, 1, 1], [1]]
    assert split([], size=lambda n: n, max_items=3, max_bytes=7) == []


class Poisoned:
    """A fake platform whose calls fail whenever they carry a bad item."""

    def __init__(self, bad: set[int], error: Exception) -> None:
        self.bad = bad
        self.error = error
        self.calls: list[list[int]] = []

    async def send(self, items: Sequence[int], timeout: float) -> list[str]:
        self.calls.append(list(items))
        if self.bad & set(items):
            raise self.error
        return [f"r{i}" for i in items]


def failed(item: int, exc: Exception) -> str:
    return f"failed {item}: {type(exc).__name__}"


class Splittable(Exception):
    pass


async def test_bisection_fails_the_bad_item_alone() -> None:
    p = Poisoned({5}, Splittable())
    results = await bisect(
        list(range(8)),
        p.send,
        5.0,
        splits=lambda e: isinstance(e, Splittable),
        failed=failed,
        size=lambda _i: 1,
        max_bytes=100,
    )
    assert results == [*(f"r{i}" for i in range(5)), "failed 5: Splittable", "r6", "r7"]
    # One call per level down to the bad item, each half on its own, one after the other.
    assert p.calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]


async def test_a_failure_no_item_causes_fails_the_batch_as_before() -> None:
    p = Poisoned({5}, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await bisect(
            list(range(8)),
            p.send,
            5.0,
            splits=lambda e: isinstance(e, Splittable),
            failed=failed,
            size=lambda _i: 1,
            max_bytes=100,
        )
    assert p.calls == [list(range(8))]  # no bisection: the platform is down, not an item


async def test_bisection_stays_within_the_first_calls_deadline() -> None:
    class Slow(Poisoned):
        async def send(self, items: Sequence[int], timeout: float) -> list[str]:
            self.calls.append(list(items))
            await asyncio.sleep(min(timeout, 0.2))
            if timeout <= 0.2:
                raise TimeoutError
            raise Splittable()

    p = Slow(set(), Splittable())
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await bisect(
        list(range(4)),
        p.send,
        0.5,
        splits=lambda e: isinstance(e, Splittable),
        failed=failed,
        size=lambda _i: 1,
        max_bytes=100,
    )
    assert loop.time() - started < 0.9
    assert len(results) == 4 and all(r.startswith("failed") for r in results)


async def test_an_item_too_large_alone_is_never_sent_and_a_batch_too_large_is_split_first() -> None:
    p = Poisoned(set(), Splittable())
    results = await bisect(
        [1, 2, 30, 3],
        p.send,
        5.0,
        splits=lambda e: isinstance(e, Splittable),
        failed=failed,
        size=lambda i: i,
        max_bytes=10,
    )
    assert results == ["r1", "r2", f"failed 30: {ItemTooLarge.__name__}", "r3"]
    assert [30] not in p.calls and all(sum(c) <= 10 for c in p.calls)
