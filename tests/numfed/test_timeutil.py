"""Microsecond timestamps are exact: X and X ± 1 µs never collapse into each other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from numfed.timeutil import from_timestamp, from_us, to_timestamp, to_us

ONE = timedelta(microseconds=1)


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
def test_microseconds_round_trip_exactly(naive: datetime) -> None:
    t = naive.replace(tzinfo=UTC)
    assert from_us(to_us(t)) == t
    assert to_us(t + ONE) - to_us(t) == 1
    assert from_timestamp(to_timestamp(t)) == t
