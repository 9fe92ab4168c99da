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
    """``rate`` requests per second per key, bursts up to ``burst``.

    With ``max_keys``, at most that many buckets are kept: a bucket that has filled up again is
    the same as none and is dropped to make room (least recently used first); when every kept
    bucket is still in use, a new key is refused (RESOURCE_EXHAUSTED ``TOO_MANY_CLIENTS``) rather
    than let memory grow with the number of keys. Without it, keys must be a bounded set.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        if max_keys is not None and max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        """key -> bucket, least recently used first."""

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, b: _Bucket, now: float) -> float:
        return min(self.burst, b.tokens + (now - b.at) * self.rate)

    def _make_room(self, now: float) -> None:
        """Drop full buckets from the least recently used end until a new one fits."""
        assert self.max_keys is not None
        while len(self._buckets) >= self.max_keys:
            key, oldest = next(iter(self._buckets.items()))
            left = self.burst - self._tokens(oldest, now)
            if left > 0:
                raise ResourceExhausted(
                    "TOO_MANY_CLIENTS",
                    "too many clients at once; retry later",
                    retry_after=max(left / self.rate, 0.001),
                )
            del self._buckets[key]

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket, or raise RESOURCE_EXHAUSTED with a retry delay."""
        now = self._clock()
        b = self._buckets.pop(key, None)
        if b is None:
            if self.max_keys is not None:
                self._make_room(now)
            b = _Bucket(self.burst, now)
        self._buckets[key] = b
        b.tokens = self._tokens(b, now)
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
