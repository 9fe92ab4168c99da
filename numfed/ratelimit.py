"""Token buckets: a steady rate with a burst, per caller."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from numfed.errors import ResourceExhausted

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` requests per second per key, bursts up to ``burst``."""

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket, or raise RESOURCE_EXHAUSTED with a retry delay."""
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1:
            wait = (1 - b.tokens) / self.rate
            err = ResourceExhausted(
                "RATE_LIMITED",
                f"too many requests; retry in {wait:.2f} s",
                metadata={"retry_after_ms": str(max(int(wait * 1000), 1))},
            )
            err.retry_after = wait
            raise err
        b.tokens -= 1
