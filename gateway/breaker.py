"""A circuit breaker per platform, so that a dead platform holds no capacity.

Closed: calls go through; ``failures`` failed calls in a row open it. Open: calls fail at once
without touching the network, for ``cooldown`` seconds. Then half-open: one call goes through
as a probe while the others still fail fast; its success closes the breaker, its failure opens
it again. Only failures of the call itself count (no answer, deadline passed, connection
refused), never a platform's answer about one claim.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["Breaker", "BreakerState"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] = lambda _state: None,
    ) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError("failures must be at least 1 and cooldown positive")
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failed = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(self._cooldown - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """May a call go out now? In half-open state, only one (the probe) at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failed = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def abandon(self) -> None:
        """A call was cancelled before it came to anything: let another probe go."""
        self._probing = False

    def failure(self) -> None:
        self._failed += 1
        was_probe, self._probing = self._probing, False
        if self._state is BreakerState.OPEN and not was_probe:
            return  # a call from before it opened: the cooldown runs on
        if was_probe or self._failed >= self._threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self._on_change(state)
