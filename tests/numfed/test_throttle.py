"""Client-side adaptive throttling (numfed.throttle; Google SRE book, ch. 21): nothing is
refused while the server accepts, most is refused at once while it refuses, and it recovers."""

from __future__ import annotations

import random

import pytest

from numfed.throttle import AdaptiveThrottle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sent(throttle: AdaptiveThrottle, n: int, *, server_accepts: bool) -> int:
    """Offer ``n`` calls; the server accepts or refuses each one sent. Returns how many went."""
    went = 0
    for _ in range(n):
        if throttle.admit():
            went += 1
            if server_accepts:
                throttle.accepted()
            else:
                throttle.refused(3.0)
    return went


@pytest.mark.timeout(10)
def test_nothing_is_refused_while_the_server_accepts() -> None:
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=Clock())
    assert sent(throttle, 1000, server_accepts=True) == 1000
    assert throttle.reject_probability() == 0.0


@pytest.mark.timeout(10)
def test_a_quiet_client_is_never_throttled_by_a_few_refusals() -> None:
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=Clock(), min_requests=20)
    assert sent(throttle, 19, server_accepts=False) == 19  # below min_requests: all sent


@pytest.mark.timeout(10)
def test_a_server_refusing_everything_sees_a_small_share_and_the_client_learns_its_wait() -> None:
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=Clock())
    went = sent(throttle, 2000, server_accepts=False)
    assert went < 100  # the rest refused locally, at once, unsent
    assert throttle.reject_probability() > 0.95
    assert throttle.retry_after == 3.0  # the server's last RetryInfo


@pytest.mark.timeout(10)
def test_a_server_with_room_for_a_tenth_of_the_offer_is_sent_about_k_times_that() -> None:
    """100 calls a second offered for two minutes to a server that takes 10 a second and
    refuses the rest: once the window has filled, about K x 10 a second are sent (SRE: requests
    settle near K times accepts), not 100."""
    clock = Clock()
    throttle = AdaptiveThrottle(rng=random.Random(2), clock=clock, k=2.0)
    sent_per_second = []
    for _ in range(120):
        went = 0
        for _ in range(100):
            if throttle.admit():
                went += 1
                if went <= 10:
                    throttle.accepted()
                else:
                    throttle.refused()
        sent_per_second.append(went)
        clock.t += 1
    late = sent_per_second[60:]
    assert 12 < sum(late) / len(late) < 35, late
    assert min(late) >= 10  # the server's room is never left unused


@pytest.mark.timeout(10)
def test_it_forgets_past_the_window_and_recovers_when_the_server_does() -> None:
    clock = Clock()
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=clock, window=60.0)
    sent(throttle, 2000, server_accepts=False)
    assert throttle.reject_probability() > 0.95
    clock.t += 61  # the refusals are out of the window
    assert throttle.reject_probability() == 0.0
    assert sent(throttle, 100, server_accepts=True) == 100


@pytest.mark.timeout(10)
def test_after_an_outage_it_sends_nearly_every_call_again_within_a_minute() -> None:
    """100 calls a second, every one refused for two minutes (on launch day the gateway took
    none of the holder page's calls, benchmarks.md), then the server takes every call: within a
    minute the client sends nearly all of them again. Its probes are a share 1 / (requests + 1)
    of the calls, and its requests count a whole window; with a 60 s window it still refused
    almost every call seven minutes after the server recovered."""
    clock = Clock()
    throttle = AdaptiveThrottle(rng=random.Random(2), clock=clock)
    for _ in range(120):
        sent(throttle, 100, server_accepts=False)
        clock.t += 1
    per_second = []
    for _ in range(60):
        per_second.append(sent(throttle, 100, server_accepts=True))
        clock.t += 1
    assert sum(per_second[-10:]) >= 950, per_second


@pytest.mark.timeout(10)
def test_the_settings_are_checked() -> None:
    for bad in ({"k": 0.5}, {"window": 0}, {"min_requests": 0}):
        with pytest.raises(ValueError):
            AdaptiveThrottle(**bad)
