"""The recycled check's probe budget: how many distinct dates a platform may ask about a number.

One signed bit per date is harmless; many dates are a bisection for the day the holder's
tenure began. So each platform may ask about one number on at most ``distinct_dates`` distinct
days per ``period``. A day counts from the moment the platform first asked about it until a
period later; asking about it again meanwhile costs nothing. Plain rules over the days already
asked: the store keeps those days (per platform and number pseudonym) and applies
:meth:`ProbeBudget.check` and :meth:`ProbeBudget.admits` inside one locked transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, timedelta

from numfed.claims import RecycledQuestion
from numfed.config import Limits
from numfed.errors import ResourceExhausted

__all__ = ["PROBE_BUDGET_REASON", "ProbeBudget", "candidate_days", "refused_day"]

PROBE_BUDGET_REASON = "RECYCLED_PROBE_BUDGET"

_US = 1_000_000


@dataclass(frozen=True)
class ProbeBudget:
    """At most ``distinct_dates`` distinct days per (platform, number) in any ``period_us``."""

    distinct_dates: int
    period_us: int

    @classmethod
    def from_limits(cls, limits: Limits) -> ProbeBudget:
        return cls(limits.recycled_distinct_dates, int(limits.recycled_budget_period * _US))

    def live(self, asked: Mapping[date, int], now_us: int) -> dict[date, int]:
        """The days (first asked at, µs) that still count: asked less than a period ago."""
        return {d: at for d, at in asked.items() if at > now_us - self.period_us}

    def admits(self, asked: Mapping[date, int], day: date, now_us: int) -> bool:
        """May the platform ask about ``day`` now, given the days it ``asked`` (first asked at)?"""
        live = self.live(asked, now_us)
        return day in live or len(live) < self.distinct_dates

    def check(self, asked: Mapping[date, int], days: Collection[date], now_us: int) -> None:
        """Raise RESOURCE_EXHAUSTED / RECYCLED_PROBE_BUDGET unless one of ``days`` is admitted,
        with a retry delay for when the oldest counted day leaves the window."""
        if any(self.admits(asked, d, now_us) for d in days):
            return
        oldest = min(self.live(asked, now_us).values())
        wait = (oldest + self.period_us - now_us) / _US
        raise ResourceExhausted(
            PROBE_BUDGET_REASON,
            f"this platform asked about this number on {self.distinct_dates} distinct dates "
            f"within {self.period_us / _US / 86400:g} days; ask again about one of those dates, "
            f"or about a new one in {wait / 86400:.1f} days",
            metadata={"distinct_dates": str(self.distinct_dates)},
            retry_after=max(wait, 0.001),
        )


def candidate_days(question: RecycledQuestion) -> frozenset[date]:
    """The days the carrier may answer ``question`` for, before it says which.

    A specified date is itself. The deprecated ``since`` is answered for the day that contains it
    in the carrier's time zone, which is within a day of its UTC date (offsets are -12 h to
    +14 h), so it is one of three.
    """
    if question.specified_date is not None:
        return frozenset({question.specified_date})
    assert question.since is not None
    utc_day = question.since.astimezone(UTC).date()
    out = {utc_day}
    for delta in (timedelta(days=-1), timedelta(days=1)):
        with contextlib.suppress(OverflowError):  # year 1 and year 9999 have one neighbour
            out.add(utc_day + delta)
    return frozenset(out)


def refused_day(question: RecycledQuestion, metadata: Mapping[str, str]) -> date:
    """The day a carrier's OUT_OF_RANGE refusal of ``question`` was about: the specified date,
    or for ``since`` the day the refusal's metadata names (a carrier that names none is taken at
    the UTC day of ``since``)."""
    if question.specified_date is not None:
        return question.specified_date
    assert question.since is not None
    try:
        return date.fromisoformat(metadata.get("specified_date", ""))
    except ValueError:
        return question.since.astimezone(UTC).date()
