"""Platforms that pool their recycled-check budgets pin a tenure start to the day at once.

The probe budget is counted per (platform, number) (gateway/probing.py). docs/architecture.md
(Flow 5) and the CheckRecycled comment in gateway.proto promise that bisecting for the day a
tenure began takes 12 distinct days, "three years at the earliest", with "457 days of
uncertainty" left through the first year. That holds for one platform. But platforms are rivals
only in the market: several of them (one owner's apps, or any few that agree) each spend their
own 3 days on the same number and share the bits. With k platforms the budget is 3k days at
once: four pin a 10-year history's tenure start to the day, today, and the federation counts
200+ platforms. The audit log shows each platform within its budget.

Impact: the one-bit design's promise (no day finer than years of asking) does not hold against
colluding platforms, the members it is meant to hold back.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from numfed.config import Limits
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.timeutil import to_date
from numfed.v1 import claim_pb2, gateway_pb2
from tests.attacks.lying import call_gateway

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # held since 2022-07-01; its history began 2015-03-02
FIRST_YEAR_UNCERTAINTY = 400  # days; the docs promise 457 through the first year


async def changed_after(fed: Federation, platform: str, day: date) -> bool:
    answer = await call_gateway(
        fed,
        PeerId(Role.PLATFORM, platform),
        "CheckRecycled",
        gateway_pb2.CheckRecycledRequest(number=N, specified_date=to_date(day)),
    )
    payload = answer.answer.payload  # type: ignore[attr-defined]
    return claim_pb2.RecycledClaim.FromString(payload).changed


async def test_colluding_platforms_do_not_pin_the_tenure_start_within_a_year(
    federation: Federation,
) -> None:
    fed = federation
    colluders = list(fed.platforms)[:4]
    start = WORLD.histories[N].history_start().date()
    # Changed after `lo` ended, not changed after `hi` ended: the tenure began in (lo, hi].
    lo, hi = start, datetime.now(UTC).date() - timedelta(days=1)
    for platform in colluders:
        for _ in range(fed.gateway.config.limits.recycled_distinct_dates):
            if hi - lo <= timedelta(days=1):
                break
            mid = lo + (hi - lo) / 2
            if await changed_after(fed, platform, mid):
                lo = mid
            else:
                hi = mid
    known = (hi - lo).days
    assert known >= FIRST_YEAR_UNCERTAINTY, (
        f"{len(colluders)} platforms, each within its own budget, pinned N's tenure start to "
        f"{known} day(s): it began after {lo} and by the end of {hi}"
    )


def test_the_contract_states_the_budget_period_in_force() -> None:
    """gateway.proto tells platforms the budget period's default is 30 days and claim.proto
    says "a few distinct dates a month"; the default in force (numfed/config.py, docs/operations.md)
    is 365 days. A platform reading the contract plans with the wrong window."""
    protos = Path(__file__).resolve().parents[2] / "protos" / "numfed" / "v1"
    text = " ".join((protos / "gateway.proto").read_text().split())
    stated = re.search(r"`limits\.recycled_budget_period` \(default (\d+) days\)", text)
    assert stated is not None
    assert int(stated.group(1)) * 86400 == Limits().recycled_budget_period
    assert "a few distinct dates a month" not in (protos / "claim.proto").read_text()
