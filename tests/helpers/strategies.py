"""Hypothesis strategies: number histories (assignments, deactivations, reassignments, ports)
and bindings at random moments, with extra weight on X and X ± 1 s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from numfed.history import EventKind, NumberEvent, NumberHistory

A, D, P = EventKind.ASSIGNED, EventKind.DEACTIVATED, EventKind.PORTED
T0 = datetime(2012, 1, 1, tzinfo=UTC)
CARRIERS = ["cmcc", "cucc", "ctcc"]


@st.composite
def histories(
    draw: st.DrawFn,
    number: str = "+8613812345678",
    end_held: bool | None = None,
    start: datetime = T0,
    step: int = 10**8,
) -> NumberHistory:
    """A valid history; ``end_held`` forces whether the number has a holder at the end.

    Events start at ``start`` and follow each other by at most ``step`` seconds (plus the
    quiet period before a reassignment).
    """
    t = start + timedelta(seconds=draw(st.integers(0, 10**7)))
    carrier = draw(st.sampled_from(CARRIERS))
    events: list[NumberEvent] = []
    holders = draw(st.integers(1, 4))
    for i in range(holders):
        events.append(NumberEvent(A, t, carrier, f"h{i}"))
        for _ in range(draw(st.integers(0, 2))):
            t += timedelta(seconds=draw(st.integers(1, step)))
            carrier = draw(st.sampled_from([c for c in CARRIERS if c != carrier]))
            events.append(NumberEvent(P, t, carrier))
        last = i == holders - 1
        if last and end_held is not False:
            break
        t += timedelta(seconds=draw(st.integers(1, step)))
        events.append(NumberEvent(D, t, carrier))
        if last:
            break
        t += timedelta(days=90) + timedelta(seconds=draw(st.integers(0, step)))
    return NumberHistory(number, tuple(events))


@st.composite
def binding_times(draw: st.DrawFn, history: NumberHistory) -> list[datetime]:
    """Moments across the whole history, always including X and X ± 1 s when there is an X."""
    start = history.events[0].at - timedelta(days=30)
    end = history.events[-1].at + timedelta(days=400)
    span = int((end - start).total_seconds())
    times = [
        start + timedelta(seconds=s)
        for s in draw(st.lists(st.integers(0, span), min_size=0, max_size=12))
    ]
    now = end + timedelta(days=1)
    tenure = history.current_tenure(now)
    if tenure is not None:
        x = tenure.start
        times += [x, x - timedelta(seconds=1), x + timedelta(seconds=1)]
        times += [
            x + timedelta(microseconds=d)
            for d in draw(st.lists(st.sampled_from([-1, 1]), max_size=2))
        ]
    return times


def now_after(history: NumberHistory) -> datetime:
    return history.events[-1].at + timedelta(days=401)
