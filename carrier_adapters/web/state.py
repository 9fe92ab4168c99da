"""What the page remembers for one open page: in memory, bounded, and gone when the page is.

A page is named by its page token (see :mod:`carrier_adapters.web.guard`), which lives only in
that page: closing or reloading the page loses it, and with it the holder's session. The page
also tells the server when it closes (a beacon to ``/signout``); whatever is left is dropped
:data:`IDLE_TTL` after its last use. Nothing here outlives the process, and the holder's name,
ID number and SMS code are never kept: they go to the carrier's HolderService and are
forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from carrier_adapters.verification import SESSION_TTL
from numfed.errors import ResourceExhausted
from numfed.v1 import gateway_pb2

__all__ = ["IDLE_TTL", "MAX_PAGES", "PageState", "PageStore", "Release"]

IDLE_TTL = SESSION_TTL.total_seconds()
"""Seconds a page's state is kept after its last request (the holder session lasts as long)."""
MAX_PAGES = 20_000
"""Open pages remembered at once; past that, new ones are told the service is busy."""


@dataclass
class Release:
    """A release the holder started from this page."""

    request_id: str
    """Sent again, unchanged, if the holder retries after an unclear failure (AIP-155)."""
    scope: str
    """"prior", "own" or "labels": where the page returns after it."""
    selection: str = ""
    """What was picked; a retry with another selection is a new release."""
    operation: str = ""
    """"operations/<id>" once the carrier accepted it."""
    done: bool = False
    results: list[gateway_pb2.PlatformResult] = field(default_factory=list)
    platforms_done: int = 0
    platforms_total: int = 0
    deadline: datetime | None = None


@dataclass
class PageState:
    """One open page: where it is in the journey and the holder session it holds."""

    lang: str
    view: str = "number"
    number: str = ""
    verification_id: str = ""
    code_expires: datetime | None = None
    session_token: str = ""
    tenure_start: datetime | None = None
    claim: object | None = None
    """The PreviewHolderClaim answer shown at step 3 (a numfed.v1 TenureClaim)."""
    prior: list[gateway_pb2.PlatformResult] = field(default_factory=list)
    own: list[gateway_pb2.PlatformResult] = field(default_factory=list)
    labels: list[gateway_pb2.PlatformResult] = field(default_factory=list)
    release: Release | None = None
    proof: tuple[str, datetime] | None = None
    error: str = ""
    """A sentence to show once, with the next view rendered."""

    @property
    def verified(self) -> bool:
        return bool(self.session_token)

    def sign_out(self) -> None:
        """Forget the holder session and everything learnt with it; keep the language."""
        lang = self.lang
        self.__dict__.update(PageState(lang).__dict__)


class PageStore:
    """Page states by page key, least recently used first, each dropped after ``ttl`` idle."""

    def __init__(
        self,
        *,
        ttl: float = IDLE_TTL,
        limit: int = MAX_PAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._pages: dict[str, tuple[float, PageState]] = {}

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: str) -> PageState | None:
        """The page's state if it has one that is still live; using it keeps it live."""
        now = self._clock()
        self._prune(now)
        entry = self._pages.pop(key, None)
        if entry is None:
            return None
        self._pages[key] = (now, entry[1])
        return entry[1]

    def open(self, key: str, lang: str) -> PageState:
        """The page's state, made now if it has none (RESOURCE_EXHAUSTED when full)."""
        state = self.get(key)
        if state is not None:
            return state
        if len(self._pages) >= self.limit:
            oldest = next(iter(self._pages.values()))[0]
            raise ResourceExhausted(
                "BUSY",
                "too many open pages; retry later",
                retry_after=max(oldest + self.ttl - self._clock(), 1.0),
            )
        state = PageState(lang)
        self._pages[key] = (self._clock(), state)
        return state

    def close(self, key: str) -> None:
        self._pages.pop(key, None)

    def _prune(self, now: float) -> None:
        while self._pages:
            key, (used, _) = next(iter(self._pages.items()))
            if now - used < self.ttl:
                return
            del self._pages[key]
