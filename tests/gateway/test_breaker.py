"""The per-platform circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from gateway.breaker import Breaker, BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> Breaker:
    log = changes if changes is not None else []
    return Breaker(failures=3, cooldown=2.0, clock=clock, on_change=log.append)


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(Clock())
    b.failure()
    b.failure()
    b.success()  # the run is broken
    b.failure()
    b.failure()
    assert b.allow()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert not b.allow()
    assert b.state.value == "open"


def test_half_open_lets_one_probe_and_its_verdict_decides() -> None:
    clock, changes = Clock(), list[BreakerState]()
    b = breaker(clock, changes)
    for _ in range(3):
        b.failure()
    assert b.retry_after() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.state is BreakerState.HALF_OPEN and b.retry_after() == 0
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()  # the probe failed: open again for a full cooldown
    assert b.state.value == "open" and b.retry_after() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.allow()
    b.success()
    assert b.state.value == "closed" and b.allow() and b.allow()
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_a_cancelled_probe_lets_the_next_one_go() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 5
    assert b.allow()
    b.abandon()
    assert b.allow()


def test_late_failures_of_calls_from_before_do_not_extend_the_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 1.5
    b.failure()  # a call that was already out when it opened
    assert b.retry_after() == pytest.approx(0.5)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Breaker(failures=0, cooldown=1)
    with pytest.raises(ValueError):
        Breaker(failures=1, cooldown=0)
