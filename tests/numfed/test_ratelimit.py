"""Token buckets: a burst, then the steady rate, per key; refusals say when to retry."""

from __future__ import annotations

import pytest

from numfed.errors import ResourceExhausted
from numfed.ratelimit import RateLimiter
from numfed.rpc import error_status


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_rate_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    for _ in range(3):
        limiter.take("weibo")
    with pytest.raises(ResourceExhausted) as e:
        limiter.take("weibo")
    assert e.value.reason == "RATE_LIMITED" and e.value.retry_after == pytest.approx(0.5)
    limiter.take("taobao")  # another platform's bucket is its own
    clock.t = 0.5
    limiter.take("weibo")
    with pytest.raises(ResourceExhausted):
        limiter.take("weibo")


def test_refusal_carries_retry_info() -> None:
    from google.rpc import error_details_pb2

    limiter = RateLimiter(1.0, 1, clock=Clock())
    limiter.take("x")
    with pytest.raises(ResourceExhausted) as e:
        limiter.take("x")
    status = error_status(e.value)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.ToMilliseconds() == 1000


def test_kept_buckets_are_bounded_and_full_ones_make_room() -> None:
    """Memory stays bounded whatever the number of keys: a bucket that filled up again is
    dropped for a new key; while every kept bucket is in use, a new key waits its turn."""
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_keys=2)
    limiter.take("a")
    limiter.take("b")
    with pytest.raises(ResourceExhausted) as e:
        limiter.take("c")
    assert e.value.reason == "TOO_MANY_CLIENTS"
    assert e.value.retry_after == pytest.approx(1.0)  # until a's bucket is full again
    assert len(limiter) == 2
    clock.t = 1.0
    limiter.take("c")  # a's bucket filled up again: dropped
    assert len(limiter) == 2
    limiter.take("b")
    limiter.take("b")
    with pytest.raises(ResourceExhausted) as e:
        limiter.take("b")  # b was kept, with its spent tokens
    assert e.value.reason == "RATE_LIMITED"
