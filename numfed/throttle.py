"""Client-side adaptive throttling: a client that sees its server refuse most of its calls for
overload refuses a share of new calls itself, at once, before sending them.

The rule is the one in Google's *Site Reliability Engineering*, chapter 21 ("Handling
Overload", adaptive throttling). Over a trailing window the client counts ``requests`` (every
call it was asked to make, those it refused itself included) and ``accepts`` (calls the server
took: answered, or refused for a reason other than overload; a call it did not answer in time
is not one). A new call is refused locally with probability

    max(0, (requests - K * accepts) / (requests + 1))

so nothing is refused while the server accepts more than one call in K; below that, the calls
sent settle near K times those the server accepts, and a server that accepts none is sent a
share ``1 / (requests + 1)`` of new calls, a probe now and then. Unlike a circuit breaker the
client keeps sending some calls, so it learns when the server recovers, and its accepts then
grow with each call sent; the window (:data:`WINDOW`, shorter than the book's minutes) bounds
how long it keeps refusing meanwhile. Keep one throttle per bound the server keeps: calls it
bounds apart must not hold each other back.

numfed's carrier adapters throttle their calls to the gateway this way (the holder's page and
app channel): on launch day a crowd is told "busy, come back in N s" at once by its carrier
instead of after a wait for the saturated gateway's refusal, and the gateway is spared most of
those calls.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

__all__ = ["WINDOW", "AdaptiveThrottle"]

WINDOW = 10.0
"""Seconds of history the verdict is drawn from. It also bounds how long the client keeps
refusing once the server recovers: its requests then still count a window of refusals, and it
sends a share ``1 / (requests + 1)`` of calls until accepts build up. After two minutes of a
server that took none of 10 to 1,000 calls a second, nearly all go out again within 40 to 60 s
with this window, but only after 4 to 8 minutes with 60 s (after a server that took a tenth:
10 s against a minute)."""


class AdaptiveThrottle:
    """Counts of one client's calls to one server over the last ``window`` seconds, and the
    verdict for the next one.

    ``k``: accepts are multiplied by it (SRE's K; 2 lets through about twice what the server
    accepts). ``min_requests``: no call is refused locally while the window holds fewer
    requests than this (a few refusals of a quiet client mean nothing). ``clock``: seconds,
    monotonic. ``rng``: draws the refusals (seeded in tests).
    """

    def __init__(
        self,
        *,
        k: float = 2.0,
        window: float = WINDOW,
        min_requests: int = 20,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if k < 1 or window <= 0 or min_requests < 1:
            raise ValueError("k >= 1, window > 0 and min_requests >= 1")
        self.k = k
        self.window = window
        self.min_requests = min_requests
        self._clock = clock
        self._rng = rng or random.Random()
        self._buckets: deque[list[float]] = deque()
        """[second, requests, accepts], oldest first, one per second that saw a call."""
        self._requests = 0.0
        self._accepts = 0.0
        self.retry_after = 1.0
        """Seconds a caller refused locally is told to wait: the server's last RetryInfo."""

    def _bucket(self) -> list[float]:
        now = int(self._clock())
        while self._buckets and self._buckets[0][0] <= now - self.window:
            _, requests, accepts = self._buckets.popleft()
            self._requests -= requests
            self._accepts -= accepts
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0.0, 0.0])
        return self._buckets[-1]

    def reject_probability(self) -> float:
        """The chance that the next call is refused locally, from the counts in the window."""
        self._bucket()
        if self._requests < self.min_requests:
            return 0.0
        return max(0.0, (self._requests - self.k * self._accepts) / (self._requests + 1))

    def admit(self) -> bool:
        """Count a call the client was asked to make; False: refuse it locally, do not send."""
        p = self.reject_probability()
        self._bucket()[1] += 1
        self._requests += 1
        return not (p > 0 and self._rng.random() < p)

    def accepted(self) -> None:
        """The server took the call sent (an answer, or a refusal not for overload)."""
        self._bucket()[2] += 1
        self._accepts += 1

    def refused(self, retry_after: float | None = None) -> None:
        """The server refused the call sent for overload (``retry_after``: its RetryInfo)."""
        if retry_after is not None and retry_after > 0:
            self.retry_after = retry_after
