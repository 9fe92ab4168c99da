"""An event loop on a thread of its own, for synchronous tests that drive async servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Runs an event loop on a daemon thread; :meth:`run` hands it coroutines from this one.

    Hypothesis tests are synchronous; the servers they drive live on this loop for a whole
    module. :meth:`close` stops the loop, waits for the thread and closes the loop.
    """

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the loop and return its result.

        Past ``timeout`` it is cancelled on the loop and its cleanup (``finally``, ``except
        BaseException``) runs there before TimeoutError reaches the caller: it never runs on
        unseen, say starting servers after the caller gave up on it.
        """

        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result(timeout + 60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self.loop.close()
