"""The probe budget's rules, plain: distinct days per window, repeats free, when to retry."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway.probing import PROBE_BUDGET_REASON, ProbeBudget, candidate_days, refused_day
from numfed.claims import RecycledQuestion
from numfed.config import Limits
from numfed.errors import InvalidArgument, ResourceExhausted

DAY_US = 86_400 * 1_000_000
BUDGET = ProbeBudget.from_limits(Limits(recycled_budget_period=30 * 86_400.0))
"""3 days per 30 days: the rules below, with a window short enough to write out."""
D1, D2, D3, D4 = date(2020, 1, 1), date(2021, 1, 1), date(2022, 1, 1), date(2023, 1, 1)


def test_defaults_are_three_days_per_year() -> None:
    default = ProbeBudget.from_limits(Limits())
    assert (default.distinct_dates, default.period_us) == (3, 365 * DAY_US)


def test_three_distinct_days_then_only_those() -> None:
    now = 100 * DAY_US
    asked = {D1: now - 5 * DAY_US, D2: now - 2 * DAY_US, D3: now}
    assert all(BUDGET.admits(asked, d, now) for d in (D1, D2, D3))
    assert not BUDGET.admits(asked, D4, now)
    assert BUDGET.admits({D1: now, D2: now}, D4, now)


def test_a_refusal_says_when_the_oldest_day_leaves_the_window() -> None:
    now = 100 * DAY_US
    asked = {D1: now - 5 * DAY_US, D2: now - 2 * DAY_US, D3: now}
    with pytest.raises(ResourceExhausted) as e:
        BUDGET.check(asked, [D4], now)
    assert e.value.reason == PROBE_BUDGET_REASON
    assert e.value.retry_after == 25 * 86_400
    assert e.value.metadata == {"distinct_dates": "3"}
    BUDGET.check(asked, [D4, D2], now)  # one admitted candidate is enough


def test_a_day_counts_for_one_period_from_when_it_was_first_asked() -> None:
    asked = {D1: 0, D2: 0, D3: DAY_US}
    assert not BUDGET.admits(asked, D4, 30 * DAY_US - 1)
    assert BUDGET.admits(asked, D4, 30 * DAY_US)  # D1 and D2 left the window
    assert BUDGET.live(asked, 30 * DAY_US) == {D3: DAY_US}


def test_since_may_be_any_of_three_days() -> None:
    q = RecycledQuestion(since=datetime(2022, 7, 1, 9, tzinfo=UTC))
    assert candidate_days(q) == {date(2022, 6, 30), date(2022, 7, 1), date(2022, 7, 2)}
    assert candidate_days(RecycledQuestion(specified_date=D1)) == {D1}
    edge = RecycledQuestion(since=datetime(1, 1, 1, tzinfo=UTC))
    assert candidate_days(edge) == {date(1, 1, 1), date(1, 1, 2)}


def test_a_question_names_exactly_one_of_its_fields() -> None:
    with pytest.raises(InvalidArgument) as e:
        RecycledQuestion()
    assert e.value.reason == "MISSING_SPECIFIED_DATE"
    with pytest.raises(InvalidArgument) as e:
        RecycledQuestion(specified_date=D1, since=datetime(2020, 1, 1, tzinfo=UTC))
    assert e.value.reason == "SINCE_AND_SPECIFIED_DATE"


def test_a_refusal_is_about_the_day_asked_or_the_day_the_carrier_names() -> None:
    assert refused_day(RecycledQuestion(specified_date=D1), {"specified_date": "1999-01-01"}) == D1
    since = RecycledQuestion(since=datetime(2022, 6, 30, 20, tzinfo=UTC))
    assert refused_day(since, {"specified_date": "2022-07-01"}) == date(2022, 7, 1)
    assert refused_day(since, {}) == date(2022, 6, 30)
