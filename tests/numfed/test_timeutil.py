"""Microsecond timestamps are exact: X and X ± 1 µs never collapse into each other. Dates are
whole calendar days or refused."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from google.type import date_pb2
from hypothesis import given
from hypothesis import strategies as st

from numfed.errors import InvalidArgument
from numfed.timeutil import from_date, from_timestamp, from_us, to_date, to_timestamp, to_us

ONE = timedelta(microseconds=1)


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
def test_microseconds_round_trip_exactly(naive: datetime) -> None:
    t = naive.replace(tzinfo=UTC)
    assert from_us(to_us(t)) == t
    assert to_us(t + ONE) - to_us(t) == 1
    assert from_timestamp(to_timestamp(t)) == t


@pytest.mark.parametrize(
    ("year", "month", "day"),
    [(0, 7, 1), (2022, 0, 1), (2022, 13, 1), (2022, 7, 0), (2023, 2, 29), (10_000, 1, 1)],
)
def test_a_date_that_is_not_a_calendar_day_is_bad_date(year: int, month: int, day: int) -> None:
    with pytest.raises(InvalidArgument) as e:
        from_date(date_pb2.Date(year=year, month=month, day=day))
    assert e.value.reason == "BAD_DATE"


def test_dates_round_trip() -> None:
    for d in (date(1, 1, 1), date(2024, 2, 29), date(9999, 12, 31)):
        assert from_date(to_date(d)) == d
