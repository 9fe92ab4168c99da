"""Number histories: tenure start (X), ports, quiet periods, the recycled question."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numfed.errors import FailedPrecondition, InvalidArgument, OutOfRange
from numfed.history import EventKind, NumberEvent, NumberHistory, day_end

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


SHANGHAI = ZoneInfo("Asia/Shanghai")


class TestRecycledAfter:
    """The CAMARA Number Recycling question about a calendar day, case by case.

    T is 2015-01-01T00:00Z, 08:00 in Shanghai: every event below falls at 08:00 local time.
    """

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
    x_day = (T + 200 * DAY).date()

    def changed(self, day: date) -> bool:
        return self.h.recycled_after(day, SHANGHAI, self.now).changed

    def test_the_day_of_tenure_start_and_after_is_false(self) -> None:
        assert self.changed(self.x_day) is False  # held at the end of that day
        assert self.changed(self.x_day + 150 * DAY) is False  # after the port too

    def test_days_before_the_tenure_start_are_true(self) -> None:
        assert self.changed(self.x_day - DAY) is True
        assert self.changed(T.date() + 10 * DAY) is True
        assert self.changed(T.date() + 150 * DAY) is True  # in the gap

    def test_the_answer_is_for_the_end_of_the_day_in_the_carriers_zone(self) -> None:
        a = self.h.recycled_after(self.x_day, SHANGHAI, self.now)
        assert a.as_of == day_end(self.x_day, SHANGHAI) == datetime(2015, 7, 20, 16, tzinfo=UTC)
        # In UTC the tenure starts at 00:00 on that day, so the day before already ends with it.
        assert self.h.recycled_after(self.x_day - DAY, UTC, self.now).changed is False

    def test_today_is_answered_as_of_now(self) -> None:
        a = self.h.recycled_after(self.now.astimezone(SHANGHAI).date(), SHANGHAI, self.now)
        assert (a.as_of, a.changed) == (self.now, False)

    def test_a_day_after_today_is_out_of_range(self) -> None:
        tomorrow = self.now.astimezone(SHANGHAI).date() + DAY
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_after(tomorrow, SHANGHAI, self.now)
        assert e.value.reason == "SPECIFIED_DATE_IN_FUTURE"

    def test_a_day_that_ended_before_the_history_is_out_of_range(self) -> None:
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_after(T.date() - DAY, SHANGHAI, self.now)
        assert e.value.reason == "SPECIFIED_DATE_BEFORE_HISTORY"
        assert e.value.metadata == {"specified_date": "2014-12-31"}
        assert self.changed(T.date()) is True  # the history's first day is answered

    def test_since_is_answered_for_its_day_nothing_finer(self) -> None:
        x = T + 200 * DAY
        for since in (x - timedelta(hours=7), x - timedelta(seconds=1), x, x + timedelta(hours=15)):
            a = self.h.recycled_since(since, SHANGHAI, self.now)
            assert (a.day, a.changed) == (self.x_day, False), since
        assert self.h.recycled_since(x - timedelta(hours=9), SHANGHAI, self.now).changed is True

    def test_since_refusals_keep_their_names(self) -> None:
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_since(self.now + timedelta(seconds=1), SHANGHAI, self.now)
        assert e.value.reason == "SINCE_IN_FUTURE"
        with pytest.raises(OutOfRange) as e:
            self.h.recycled_since(T - timedelta(hours=9), SHANGHAI, self.now)
        assert e.value.reason == "SINCE_BEFORE_HISTORY"
