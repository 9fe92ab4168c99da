"""Coalesce holders' requests heading to one platform into batched calls.

A request goes out at once when nothing is in flight to its platform; otherwise it joins the
next batch, which leaves when a call returns (or as soon as it is full, while fewer than
``max_in_flight`` calls are out). Each request keeps its own deadline: when it passes, that
request alone fails, and the batch carries on for the others. The batch call's own deadline is
the latest of its requests'. When every caller waiting on a batch in flight has been cancelled
(gone away), the batch call itself is cancelled: no orphan call is left running downstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchTimeout", "Batcher", "Ticket"]

Item = TypeVar("Item")
Result = TypeVar("Result")

SendFn = Callable[[Sequence[Item], float], Awaitable[Sequence[Result]]]
"""Send one batch with a timeout in seconds; return one result per item, in order."""


class BatchTimeout(Exception):
    """The request's own deadline passed before its batch answered."""


@dataclass
class Ticket(Generic[Item, Result]):
    """One request in a batcher: its item, its future and, once sent, its batch."""

    item: Item
    future: asyncio.Future[Result]
    deadline: float
    batch: list[Ticket[Item, Result]] | None = None
    task: asyncio.Task[None] | None = None


class Batcher(Generic[Item, Result]):
    def __init__(self, send: SendFn[Item, Result], *, max_items: int, max_in_flight: int) -> None:
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be at least 1")
        self._send = send
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._queue: list[Ticket[Item, Result]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Batches sent so far (for tests and metrics)."""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, item: Item, deadline: float) -> Ticket[Item, Result]:
        """Put ``item`` in the next batch; the ticket's future resolves with the result.

        ``deadline`` is on the event loop's clock. The caller waits on the future itself (many
        at once, for a fan-out) and must :meth:`abandon` the ticket if it stops waiting.
        """
        loop = asyncio.get_running_loop()
        ticket: Ticket[Item, Result] = Ticket(item, loop.create_future(), deadline)
        self._queue.append(ticket)
        self._pump()
        return ticket

    @staticmethod
    def abandon(ticket: Ticket[Item, Result], *, cancel_call: bool) -> None:
        """Stop waiting for ``future``. With ``cancel_call`` (the caller went away) the batch
        call is cancelled too once nobody waits for it; without (a deadline passed) the call
        runs on to its own deadline, so that a platform that never answers is seen to fail."""
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
        ticket = self.enqueue(item, loop.time() + timeout)
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
        except TimeoutError as exc:
            self.abandon(ticket, cancel_call=False)
            raise BatchTimeout("deadline passed before the platform answered") from exc
        except asyncio.CancelledError:
            self.abandon(ticket, cancel_call=True)
            raise

    def _pump(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            if self._in_flight > 0 and len(self._queue) < self._max_items:
                return  # wait: the next batch leaves when a call returns
            batch = [p for p in self._queue[: self._max_items] if not p.future.done()]
            del self._queue[: self._max_items]
            if not batch:
                continue
            self._in_flight += 1
            self.calls += 1
            task = asyncio.create_task(self._run(batch))
            for p in batch:
                p.batch, p.task = batch, task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        finally:
            self._in_flight -= 1
            self._pump()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
