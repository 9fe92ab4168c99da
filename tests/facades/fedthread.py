"""A whole federation running in an event loop of its own thread, for synchronous tests.

pytest-bdd's steps and schemathesis's calls are synchronous: they would block the test's own
event loop, and with it any federation running there. Here the federation has a loop (and a
thread) to itself, so plain blocking HTTPS clients can call it as any outside client would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from numfed.testing import Federation, start_federation

__all__ = ["FederationThread"]

T = TypeVar("T")


class FederationThread:
    def __init__(self, root: Path, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.fed: Federation = self.run(start_federation(root, **kw), timeout=90)
        except BaseException:
            self._shut()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` in the federation's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.fed.stop(), timeout=60)
        finally:
            self._shut()

    def _shut(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
