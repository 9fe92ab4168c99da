"""Platforms that pool their recycled-check budgets.

The probe budget is counted per (platform, number) (gateway/probing.py): one platform needs
three years of asking to pin a 10-year tenure start to the day. Platforms that pool their bits
(one owner's apps, or any few that agree) each spend their own 3 days on the same number: with k
platforms the budget is 3k days at once, and four pin a 10-year history's tenure start to the
day. No per-number cap can stop that without letting one platform spend every other platform's
checks of the number (a denial of service by one member), so the contract states the limit, and
the gateway makes pooled probing visible: past `limits.recycled_probing_alert` distinct days
asked about one number by all platforms together, each further day is audited as
PROBING_SUSPECTED naming the platform.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from gateway.schema import audit_log
from numfed.config import Limits
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.timeutil import to_date
from numfed.v1 import claim_pb2, gateway_pb2
from tests.attacks.lying import call_gateway

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # held since 2022-07-01; its history began 2015-03-02


async def changed_after(fed: Federation, platform: str, day: date) -> bool:
    answer = await call_gateway(
        fed,
        PeerId(Role.PLATFORM, platform),
        "CheckRecycled",
        gateway_pb2.CheckRecycledRequest(number=N, specified_date=to_date(day)),
    )
    payload = answer.answer.payload  # type: ignore[attr-defined]
    return claim_pb2.RecycledClaim.FromString(payload).changed


async def test_colluding_platforms_are_seen_pooling_their_budgets(
    federation: Federation,
) -> None:
    fed = federation
    colluders = list(fed.platforms)[:4]
    start = WORLD.histories[N].history_start().date()
    # Changed after `lo` ended, not changed after `hi` ended: the tenure began in (lo, hi].
    lo, hi = start, datetime.now(UTC).date() - timedelta(days=1)
    asked = 0
    for platform in colluders:
        for _ in range(fed.gateway.config.limits.recycled_distinct_dates):
            if hi - lo <= timedelta(days=1):
                break
            mid = lo + (hi - lo) / 2
            asked += 1
            if await changed_after(fed, platform, mid):
                lo = mid
            else:
                hi = mid
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as c:
        flagged = c.execute(
            sa.select(audit_log.c.actor, audit_log.c.detail).where(
                audit_log.c.outcome == "PROBING_SUSPECTED"
            )
        ).all()
    alert = fed.gateway.config.limits.recycled_probing_alert
    assert asked > alert
    assert len(flagged) == asked - alert, "every pooled day past the alert level is audited"
    assert {r.actor for r in flagged} <= {PeerId(Role.PLATFORM, p).uri for p in colluders}


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
