"""Coalesce holders' requests heading to one platform into batched calls.

A request goes out at once when nothing is in flight to its platform; otherwise it joins the
next batch, which leaves when a call returns (or as soon as it is full, while fewer than
``max_in_flight`` calls are out). Each request keeps its own deadline: when it passes, that
request alone fails, and the batch carries on for the others. The batch call's own deadline is
the latest of its requests'. When every caller waiting on a batch in flight has been cancelled
(gone away), the batch call itself is cancelled: no orphan call is left running downstream.

Batches are cut by size as well as by count (``max_bytes``), so a call's request stays under
the message cap however large its items are (:func:`split` does the same for batches formed
elsewhere). When a call still fails in a way one item may cause, :func:`bisect` sends each half
again on its own, down to single items: the item at fault fails alone, and its batch-mates get
their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "BatchCancelled",
    "BatchTimeout",
    "Batcher",
    "ItemTooLarge",
    "Ticket",
    "Waiter",
    "bisect",
    "split",
]

Item = TypeVar("Item")
Result = TypeVar("Result")
T = TypeVar("T")
R_contra = TypeVar("R_contra", contravariant=True)

SendFn = Callable[[Sequence[Item], float], Awaitable[Sequence[Result]]]
"""Send one batch with a timeout in seconds; return one result per item, in order."""


class BatchTimeout(Exception):
    """The request's own deadline passed before its batch answered."""


class BatchCancelled(Exception):
    """The request's batch call was cancelled before it answered: the batcher was closed (its
    platform left the federation, or the gateway is stopping)."""


def _cancel_waiting(tickets: Sequence[Ticket[Any, Any]], why: str) -> None:
    """Settle each of ``tickets`` still waiting with :class:`BatchCancelled` (``why``)."""
    for p in tickets:
        if not p.future.done():
            p.future.set_exception(BatchCancelled(why))


class ItemTooLarge(Exception):
    """One item alone is larger than a call may carry: it is never sent."""


def split(
    items: Sequence[T], *, size: Callable[[T], int], max_items: int, max_bytes: int
) -> list[list[T]]:
    """Cut ``items`` in order into batches of at most ``max_items`` items and ``max_bytes``
    bytes (an item larger than that alone is a batch of its own)."""
    batches: list[list[T]] = []
    batch: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) == max_items or used + n > max_bytes):
            batches.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += n
    if batch:
        batches.append(batch)
    return batches


async def bisect(
    items: Sequence[Item],
    send: SendFn[Item, Result],
    timeout: float,
    *,
    splits: Callable[[Exception], bool],
    failed: Callable[[Item, Exception], Result],
    size: Callable[[Item], int],
    max_bytes: int,
) -> list[Result]:
    """Send ``items`` in one call; if it fails in a way one item may cause (``splits``), send
    each half on its own, and so on down to single items, each of which then gets
    ``failed(item, error)`` as its result: an item at fault fails alone.

    Halves go one after the other within the first call's deadline (``timeout`` seconds), so
    bisection never has more calls out than the one it replaces. Any other failure of the
    first call is raised as before; of a later call, it becomes each of its items' result. An
    item larger than ``max_bytes`` is never sent (``failed(item, ItemTooLarge(...))``), and a
    batch larger than that is split before it is sent.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def attempt(part: Sequence[Item], first: bool) -> list[Result]:
        total = sum(size(i) for i in part)
        if len(part) == 1 and total > max_bytes:
            return [failed(part[0], ItemTooLarge(f"{total} bytes; at most {max_bytes}"))]
        if total <= max_bytes:
            try:
                left = deadline - loop.time()
                if left <= 0:
                    raise BatchTimeout("the deadline passed while the batch was bisected")
                results = list(await send(part, left))
            except Exception as exc:
                if first and not splits(exc):
                    raise
                if len(part) == 1 or not splits(exc):
                    return [failed(i, exc) for i in part]
            else:
                return results
        mid = len(part) // 2
        return [*await attempt(part[:mid], False), *await attempt(part[mid:], False)]

    return await attempt(items, True)


class Waiter(Protocol[R_contra]):
    """What a request waits with: an :class:`asyncio.Future`, or anything that settles the same
    way. A fan-out gives each platform's request a plain slot of one shared wait
    (:class:`gateway.fanout.Fan`), so that an answer costs no future and no callback per
    platform."""

    def done(self) -> bool: ...

    def set_result(self, result: R_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...

    def cancel(self) -> bool: ...


@dataclass
class Ticket(Generic[Item, Result]):
    """One request in a batcher: its item, its waiter and, once sent, its batch."""

    item: Item
    future: Waiter[Result]
    deadline: float
    size: int = 0
    """The item's bytes on the wire (0 when the batcher is not cut by size)."""
    batch: list[Ticket[Item, Result]] | None = None
    task: asyncio.Task[None] | None = None


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        send: SendFn[Item, Result],
        *,
        max_items: int,
        max_in_flight: int,
        max_bytes: int | None = None,
        size: Callable[[Item], int] | None = None,
    ) -> None:
        """``size`` gives an item's bytes; with it, a batch carries at most ``max_bytes``
        (one item larger than that goes alone, and ``send`` decides what becomes of it)."""
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be at least 1")
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        self._send = send
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._max_bytes = max_bytes
        self._size = size
        self._queued_bytes = 0
        self._queue: list[Ticket[Item, Result]] = []
        self._in_flight = 0
        self._tasks: dict[asyncio.Task[None], list[Ticket[Item, Result]]] = {}
        """The calls in flight and their batches; :meth:`_run` takes its own out as it ends."""
        self._closed = False
        self.calls = 0
        """Batches sent so far (for tests and metrics)."""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(
        self, item: Item, deadline: float, waiter: Waiter[Result] | None = None
    ) -> Ticket[Item, Result]:
        """Put ``item`` in the next batch; ``waiter`` (a new future unless given) settles with
        the result.

        ``deadline`` is on the event loop's clock. The caller waits itself (on many tickets at
        once, for a fan-out) and must :meth:`abandon` the ticket if it stops waiting.
        """
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        size = self._size(item) if self._size is not None else 0
        ticket: Ticket[Item, Result] = Ticket(item, waiter, deadline, size)
        if self._closed:
            waiter.set_exception(BatchCancelled("the batcher is closed"))
            return ticket
        self._queue.append(ticket)
        self._queued_bytes += size
        self._pump()
        return ticket

    @staticmethod
    def abandon(ticket: Ticket[Item, Result], *, cancel_call: bool) -> None:
        """Stop waiting for the ticket's result. With ``cancel_call`` (the caller went away) the
        batch call is cancelled too once nobody waits for it; without (a deadline passed) the
        call runs on to its own deadline, so that a platform that never answers is seen to
        fail."""
        if ticket.future.done():
            return
        ticket.future.cancel()
        if not cancel_call:
            return
        batch, task = ticket.batch, ticket.task
        if batch is not None and task is not None and all(p.future.done() for p in batch):
            task.cancel()

    async def submit(self, item: Item, timeout: float) -> Result:
        """Send ``item`` in the next batch; raise BatchTimeout after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        ticket = self.enqueue(item, loop.time() + timeout, future)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError as exc:
            self.abandon(ticket, cancel_call=False)
            raise BatchTimeout("deadline passed before the platform answered") from exc
        except asyncio.CancelledError:
            self.abandon(ticket, cancel_call=True)
            raise

    def _full(self) -> bool:
        """Whether the queue holds a whole batch, by count or by size."""
        if len(self._queue) >= self._max_items:
            return True
        return self._max_bytes is not None and self._queued_bytes >= self._max_bytes

    def _take(self) -> list[Ticket[Item, Result]]:
        """Take the next batch off the queue (and drop the abandoned requests before it)."""
        batch: list[Ticket[Item, Result]] = []
        used = taken = 0
        for p in self._queue:
            if len(batch) == self._max_items:
                break
            if not p.future.done():
                if batch and self._max_bytes is not None and used + p.size > self._max_bytes:
                    break
                batch.append(p)
                used += p.size
            taken += 1
        self._queued_bytes -= sum(p.size for p in self._queue[:taken])
        del self._queue[:taken]
        return batch

    def _pump(self) -> None:
        if self._closed:
            return
        while self._queue and self._in_flight < self._max_in_flight:
            if self._in_flight > 0 and not self._full():
                return  # wait: the next batch leaves when a call returns
            batch = self._take()
            if not batch:
                continue
            self._in_flight += 1
            self.calls += 1
            task = asyncio.create_task(self._run(batch))
            for p in batch:
                p.batch, p.task = batch, task
            self._tasks[task] = batch
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A call's task is done. One cancelled before its first step (closed, or its callers
        gone, in the turn of the loop that made it) ran none of :meth:`_run`: its requests
        learn so and its place is given back here."""
        batch = self._tasks.pop(task, None)
        if batch is None:
            return  # _run ran, and did both
        _cancel_waiting(batch, "the batch's call was cancelled")
        self._in_flight -= 1
        self._pump()

    async def _run(self, batch: list[Ticket[Item, Result]]) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(p.deadline for p in batch) - loop.time()
        try:
            if timeout <= 0:
                raise BatchTimeout("every request's deadline passed")
            results = await self._send([p.item for p in batch], timeout)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        except Exception as exc:  # the whole batch failed: each request learns why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        except asyncio.CancelledError:
            # Closed (or nobody waited any more): a request still waiting learns so now, not
            # when its deadline passes.
            _cancel_waiting(batch, "the batch's call was cancelled")
            raise
        finally:
            me = asyncio.current_task()
            if me is not None:
                self._tasks.pop(me, None)
            self._in_flight -= 1
            self._pump()

    async def close(self) -> None:
        """Send nothing more: cancel the calls in flight and settle every request still waiting,
        sent or queued (and any enqueued later), with :class:`BatchCancelled` at once."""
        self._closed = True
        _cancel_waiting(self._queue, "the batcher was closed")
        self._queue.clear()
        self._queued_bytes = 0
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
