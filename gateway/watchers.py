"""In-process notification of job changes, for WatchOperation streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator

__all__ = ["JobWatchers"]


class JobWatchers:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for ev in self._events.get(job_id, ()):
                ev.set()

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job changes, from now on (subscribe before reading the
        job, so that a change between the read and the wait is not missed)."""
        ev = asyncio.Event()
        self._events[job_id].add(ev)
        try:
            yield ev
        finally:
            self._events[job_id].discard(ev)
            if not self._events[job_id]:
                del self._events[job_id]

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return when the job changes, or after ``timeout`` (other replicas may change it)."""
        with self.watching(job_id) as ev, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ev.wait()
