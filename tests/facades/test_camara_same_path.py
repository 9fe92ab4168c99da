"""The CAMARA facade is a second door to the same room: a platform's rate, its probe budget, the
audit log and the gateway's members are the gRPC path's, whichever door it uses; and each
answer carries the carrier's signed claim, which verifies and says what the body says."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from gateway.facades.camara.app import CLAIM_HEADER
from gateway.schema import audit_log
from numfed.claims import verify_recycled_claim
from numfed.envelope import Envelope
from numfed.identity import PeerId, Role
from numfed.testing import Federation, start_federation
from numfed.trustfiles import load_trusted_state
from numfed.v1 import claim_pb2
from tests.facades.conftest import GATEWAY_NAME, https_client
from tests.helpers.certs import issue_member
from tests.integration.members import eventually, without_member
from tests.integration.test_recycled import ONCE, changed, refused

WEIBO = PeerId(Role.PLATFORM, "weibo")
CHECK = "/number-recycling/v0.2/check"


async def start(tmp_path: Path, db_url: str, **limits: float) -> Federation:
    return await start_federation(
        tmp_path / "fed",
        facades=True,
        platforms=("weibo", "taobao"),
        limits=limits,
        database_url=db_url,
    )


@pytest.fixture
async def budgeted(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """The default probe budget (3 days), the rate out of the way."""
    fed = await start(tmp_path, db_url, recycled_rate=10_000.0, recycled_burst=10_000.0)
    try:
        yield fed
    finally:
        await fed.stop()


async def check(
    fed: Federation, day: date, peer: PeerId | None = WEIBO, number: str = ONCE, **kw: object
) -> httpx.Response:
    async with https_client(fed.layout.pki_dir, peer, **kw) as client:
        return await client.post(
            "https://" + fed.layout.facade_endpoints[0] + CHECK,
            json={"phoneNumber": number, "specifiedDate": day.isoformat()},
            extensions=GATEWAY_NAME,
        )


async def audited(fed: Federation) -> list[tuple[str, str]]:
    """(actor, outcome) of every RECYCLED_CHECK audit entry, in order."""
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as c:
        rows = c.execute(
            sa.select(audit_log.c.actor, audit_log.c.outcome)
            .where(audit_log.c.event == "RECYCLED_CHECK")
            .order_by(audit_log.c.seq)
        )
        return [(r.actor, r.outcome) for r in rows]


async def test_one_budget_for_both_doors_and_both_audited(budgeted: Federation) -> None:
    assert await changed(budgeted, ONCE, date(2018, 1, 1)) is True  # gRPC: day 1
    answer = await check(budgeted, date(2022, 6, 30))  # HTTPS: day 2
    assert answer.status_code == 200 and answer.json() == {"phoneNumberRecycled": True}
    assert await changed(budgeted, ONCE, date(2022, 7, 1)) is False  # gRPC: day 3
    again = await check(budgeted, date(2018, 1, 1))  # a day asked already: free
    assert again.status_code == 200 and again.json() == {"phoneNumberRecycled": True}
    fourth = await check(budgeted, date(2022, 7, 2))
    assert fourth.status_code == 429, fourth.text
    assert fourth.json()["code"] == "QUOTA_EXCEEDED"
    assert fourth.json()["reason"] == "RECYCLED_PROBE_BUDGET"
    assert int(fourth.headers["retry-after"]) > 86400  # when the oldest day leaves the window
    # ... and gRPC counts the same days
    assert (await refused(budgeted, ONCE, date(2022, 7, 3)))[1] == "RECYCLED_PROBE_BUDGET"
    assert (
        await audited(budgeted)
        == [(WEIBO.uri, "ANSWERED")] * 4 + [(WEIBO.uri, "PROBING_REFUSED")] * 2
    )


async def test_one_rate_for_both_doors(tmp_path: Path, db_url: str) -> None:
    fed = await start(tmp_path, db_url, recycled_rate=0.01, recycled_burst=2)
    try:
        assert await changed(fed, ONCE, date(2022, 7, 1)) is False
        assert (await check(fed, date(2022, 7, 1))).status_code == 200
        limited = await check(fed, date(2022, 7, 1))
        assert limited.status_code == 429, limited.text
        assert limited.json()["code"] == "TOO_MANY_REQUESTS"
        assert limited.json()["reason"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
        assert (await refused(fed, ONCE, date(2022, 7, 1)))[1] == "RATE_LIMITED"
    finally:
        await fed.stop()


async def test_the_answer_carries_the_carriers_signed_claim(budgeted: Federation) -> None:
    day = date(2022, 6, 30)
    answer = await check(budgeted, day)
    assert answer.status_code == 200
    raw = answer.headers[CLAIM_HEADER]
    envelope = claim_pb2.Envelope.FromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    now = datetime.now(UTC)
    verified = verify_recycled_claim(
        Envelope.from_proto(envelope),
        load_trusted_state(budgeted.layout.trust_dir, now=now),
        now=now,
        audience="weibo",
    )
    assert verified.carrier_id == "cmcc"
    assert verified.claim.number == ONCE and verified.claim.specified_date == day
    assert verified.claim.changed is answer.json()["phoneNumberRecycled"] is True


async def test_only_members_in_force_are_answered(budgeted: Federation, tmp_path: Path) -> None:
    stranger = PeerId(Role.PLATFORM, "evil")
    pki_dir = issue_member(budgeted.layout.pki_dir, stranger, tmp_path / "stranger")
    async with https_client(pki_dir, stranger) as client:
        answer = await client.post(
            "https://" + budgeted.layout.facade_endpoints[0] + CHECK,
            json={"phoneNumber": ONCE, "specifiedDate": "2022-07-01"},
        )
    assert answer.status_code == 403 and answer.json()["reason"] == "UNKNOWN_MEMBER"
    assert (await check(budgeted, date(2022, 7, 1))).status_code == 200
    config = budgeted.layout.gateway_config
    config.write_text(without_member(config.read_text(), "platform", "weibo"))

    async def weibo_refused() -> bool:
        answer = await check(budgeted, date(2022, 7, 1))
        return answer.status_code == 403 and answer.json()["reason"] == "UNKNOWN_MEMBER"

    await eventually(weibo_refused)  # the config file is looked at every second
    assert (
        await check(budgeted, date(2022, 7, 1), PeerId(Role.PLATFORM, "taobao"))
    ).status_code == 200
