"""Number histories: tenure start (X), ports, quiet periods, the recycled question."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numfed.errors import FailedPrecondition, InvalidArgument, OutOfRange
from numfed.history import EventKind, NumberEvent, NumberHistory

A, D, P = EventKind.ASSIGNED, EventKind.DEACTIVATED, EventKind.PORTED
T = datetime(2015, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
N = "+8613812345678"


def test_tenure_start_is_the_last_assignment() -> None:
    h = NumberHistory(
        N,
        (
            NumberEvent(A, T, "cmcc", "h1"),
            NumberEvent(D, T + 100 * DAY, "cmcc"),
            NumberEvent(A, T + 200 * DAY, "cmcc", "h2"),
        ),
    )
    assert h.tenure_start(T + 300 * DAY) == T + 200 * DAY
    assert h.tenure_start(T + 50 * DAY) == T


def test_port_keeps_tenure_start_and_moves_the_carrier() -> None:
    h = NumberHistory(N, (NumberEvent(A, T, "cucc", "h1"), NumberEvent(P, T + 10 * DAY, "cmcc")))
    assert h.tenure_start(T + 20 * DAY) == T
    assert h.carrier_at(T + 5 * DAY) == "cucc"
    assert h.carrier_at(T + 20 * DAY) == "cmcc"


def test_no_holder_between_tenures() -> None:
    h = NumberHistory(N, (NumberEvent(A, T, "cmcc", "h1"), NumberEvent(D, T + DAY, "cmcc")))
    with pytest.raises(FailedPrecondition) as e:
        h.tenure_start(T + 2 * DAY)
    assert e.value.reason == "NO_CURRENT_HOLDER"


def test_reassignment_within_quiet_period_is_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        NumberHistory(
            N,
            (
                NumberEvent(A, T, "cmcc", "h1"),
                NumberEvent(D, T + DAY, "cmcc"),
                NumberEvent(A, T + 30 * DAY, "cmcc", "h2"),
            ),
        )
    assert e.value.reason == "QUIET_PERIOD"


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ((NumberEvent(A, T, "cmcc", "h1"), NumberEvent(A, T + DAY, "cmcc", "h2")), "ALREADY_HELD"),
        ((NumberEvent(D, T, "cmcc"),), "NOT_HELD"),
        ((NumberEvent(A, T, "cmcc", "h1"), NumberEvent(P, T + DAY, "cmcc")), "BAD_PORT"),
        ((NumberEvent(A, T + DAY, "cmcc", "h1"), NumberEvent(D, T, "cmcc")), "EVENTS_OUT_OF_ORDER"),
    ],
)
def test_impossible_histories_are_refused(events: tuple[NumberEvent, ...], reason: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        NumberHistory(N, events)
    assert e.value.reason == reason


def test_changed_holder_since() -> None:
    h = NumberHistory(
        N,
        (
            NumberEvent(A, T, "cmcc", "h1"),
            NumberEvent(D, T + 100 * DAY, "cmcc"),
            NumberEvent(A, T + 200 * DAY, "cmcc", "h2"),
        ),
    )
    now = T + 300 * DAY
    assert h.changed_holder_since(T + 250 * DAY, now) is False
    assert h.changed_holder_since(T + 200 * DAY, now) is False  # at X: same holder
    assert h.changed_holder_since(T + 150 * DAY, now) is True  # in the gap
    assert h.changed_holder_since(T + 50 * DAY, now) is True


@st.composite
def histories(draw: st.DrawFn) -> NumberHistory:
    carriers = ["cmcc", "cucc", "ctcc"]
    t = T
    carrier = draw(st.sampled_from(carriers))
    events: list[NumberEvent] = []
    for i in range(draw(st.integers(1, 4))):
        events.append(NumberEvent(A, t, carrier, f"h{i}"))
        for _ in range(draw(st.integers(0, 2))):
            t += timedelta(seconds=draw(st.integers(1, 10**8)))
            carrier = draw(st.sampled_from([c for c in carriers if c != carrier]))
            events.append(NumberEvent(P, t, carrier))
        if not draw(st.booleans()):
            break
        t += timedelta(seconds=draw(st.integers(1, 10**8)))
        events.append(NumberEvent(D, t, carrier))
        t += timedelta(days=90) + timedelta(seconds=draw(st.integers(0, 10**8)))
    return NumberHistory(N, tuple(events))


@settings(max_examples=300, deadline=None)
@given(histories())
def test_ports_never_move_tenure_start(h: NumberHistory) -> None:
    """X is always the time of the last assignment, however often the number was ported."""
    now = h.events[-1].at + DAY
    last_assignment = [e for e in h.events if e.kind is A][-1]
    if h.events[-1].kind is D:
        assert h.current_tenure(now) is None
    else:
        assert h.tenure_start(now) == last_assignment.at
        assert h.carrier_at(now) == h.events[-1].carrier_id


class TestRecycledSince:
    """The CAMARA Number Recycling question, case by case."""

    h = NumberHistory(
        N,
        (
            NumberEvent(A, T, "cmcc", "h1"),
            NumberEvent(D, T + 100 * DAY, "cmcc"),
            NumberEvent(A, T + 200 * DAY, "cmcc", "h2"),
            NumberEvent(P, T + 300 * DAY, "cucc"),
        ),
    )
    now = T + 400 * DAY

    def test_since_at_or_after_tenure_start_is_false(self) -> None:
        assert self.h.recycled_since(T + 200 * DAY, self.now) is False
        assert self.h.recycled_since(T + 350 * DAY, self.now) is False  # after the port too

    def test_since_before_tenure_start_is_true(self) -> None:
        assert self.h.recycled_since(T + 10 * DAY, self.now) is True
        assert self.h.recycled_since(T + 150 * DAY, self.now) is True  # in the gap

    def test_future_since_is_out_of_range(self) -> None:
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_since(self.now + DAY, self.now)
        assert e.value.reason == "SINCE_IN_FUTURE"

    def test_since_before_history_is_out_of_range(self) -> None:
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_since(T - DAY, self.now)
        assert e.value.reason == "SINCE_BEFORE_HISTORY"
