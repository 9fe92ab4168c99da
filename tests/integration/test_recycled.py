"""The recycled check end to end: platform -> gateway -> current carrier -> signed bit.

The bit is about a calendar day in the carrier's time zone, and each platform may ask about one
number on only a few distinct days per period, across restarts and replicas: so no platform can
bisect its way to when the holder's tenure began.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from google.type import date_pb2
from grpc_status import rpc_status

from gateway.schema import audit_log, recycled_asked_dates
from gateway.server import Gateway
from numfed import pki
from numfed.claims import RecycledClaim, verify_recycled_claim
from numfed.config import load_gateway_config
from numfed.envelope import Envelope
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.scenario import demo_scenario
from numfed.timeutil import to_date, to_timestamp
from numfed.trustfiles import load_trusted_state
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import Federation, start_federation
from tests.integration.members import without_member

WORLD = demo_scenario()
WEIBO = PeerId(Role.PLATFORM, "weibo")
SHANGHAI = ZoneInfo("Asia/Shanghai")
ONCE = WORLD.showcase["recycled_once"]
X = datetime(2022, 7, 1, 9, tzinfo=UTC)
"""ONCE's tenure start: 17:00 on 2022-07-01 in Shanghai."""
HISTORY_START = datetime(2015, 3, 2, 9, tzinfo=UTC)
"""When cmcc's history of ONCE begins (its first holder's assignment)."""
OUT_OF_THE_WAY = {"recycled_rate": 10_000.0, "recycled_burst": 10_000.0}
"""Rate limits that never bite, so that only the probe budget (default 3 dates) does."""

Question = object
"""A day (``date``), the deprecated ``since`` (``datetime``), a raw google.type.Date, or None."""


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """A federation whose budget is wide: these tests are about the bit and the rate limit."""
    f = await start_federation(
        tmp_path / "fed",
        limits={"recycled_rate": 0.5, "recycled_burst": 8, "recycled_distinct_dates": 100},
        database_url=db_url,
    )
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
async def budgeted(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """A federation with the default probe budget and the rate limit out of the way."""
    f = await start_federation(tmp_path / "fed", limits=OUT_OF_THE_WAY, database_url=db_url)
    try:
        yield f
    finally:
        await f.stop()


def request(number: str, question: Question, since: datetime | None = None) -> Any:
    r = gateway_pb2.CheckRecycledRequest(number=number)
    if isinstance(question, datetime):
        r.since.CopyFrom(to_timestamp(question))
    elif isinstance(question, date):
        r.specified_date.CopyFrom(to_date(question))
    elif question is not None:
        r.specified_date.CopyFrom(question)
    if since is not None:
        r.since.CopyFrom(to_timestamp(since))
    return r


async def ask(
    fed: Federation,
    number: str,
    question: Question,
    peer: PeerId = WEIBO,
    *,
    since: datetime | None = None,
    endpoint: str = "",
) -> gateway_pb2.CheckRecycledResponse:
    target = endpoint or fed.layout.gateway_endpoint
    async with pki.secure_channel(target, fed.layout.pki_dir, peer) as ch:
        answer: gateway_pb2.CheckRecycledResponse = await gateway_pb2_grpc.GatewayServiceStub(
            ch
        ).CheckRecycled(request(number, question, since), timeout=10)
        return answer


def verified(fed: Federation, answer: gateway_pb2.CheckRecycledResponse) -> RecycledClaim:
    now = datetime.now(UTC)
    trust = load_trusted_state(fed.layout.trust_dir, now=now)
    return verify_recycled_claim(
        Envelope.from_proto(answer.answer), trust, now=now, audience="weibo"
    ).claim


async def changed(fed: Federation, number: str, question: date | datetime) -> bool:
    claim = verified(fed, await ask(fed, number, question))
    assert claim.number == number
    if isinstance(question, date) and not isinstance(question, datetime):
        assert claim.specified_date == question  # the signed claim states the day it answers
    return claim.changed


async def refused(
    fed: Federation, number: str, question: Question, peer: PeerId = WEIBO, **kw: Any
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(fed, number, question, peer, **kw)
    info = rpc_error_info(e.value)
    return e.value.code(), info.reason if info else ""


def retry_delay(err: grpc.aio.AioRpcError) -> timedelta:
    status = rpc_status.from_call(err)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    delay: timedelta = retry.retry_delay.ToTimedelta()
    return delay


async def recycled_audit(fed: Federation) -> list[tuple[str, dict[str, str]]]:
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as conn:
        return [
            (r.outcome, json.loads(r.detail))
            for r in conn.execute(
                sa.select(audit_log.c.outcome, audit_log.c.detail)
                .where(audit_log.c.event == "RECYCLED_CHECK")
                .order_by(audit_log.c.seq)
            )
        ]


def end_of(day: date) -> datetime:
    """The midnight that ends ``day`` in Shanghai."""
    return datetime.combine(day + timedelta(days=1), time(), SHANGHAI)


def today_in_shanghai() -> date:
    return datetime.now(SHANGHAI).date()


# -- the bit --------------------------------------------------------------------------------------


async def test_each_semantic_case(fed: Federation) -> None:
    assert await changed(fed, ONCE, date(2022, 7, 1)) is False  # X's day: same holder at its end
    assert await changed(fed, ONCE, date(2022, 7, 31)) is False
    assert await changed(fed, ONCE, date(2022, 6, 1)) is True  # in the gap without holder
    assert await changed(fed, ONCE, date(2018, 1, 1)) is True  # previous holder
    assert await refused(fed, ONCE, today_in_shanghai() + timedelta(days=1)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SPECIFIED_DATE_IN_FUTURE",
    )
    assert await refused(fed, ONCE, date(2001, 1, 1)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SPECIFIED_DATE_BEFORE_HISTORY",
    )
    assert (await refused(fed, "+8613999999999", date(2022, 7, 1)))[0] == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_the_day_ends_at_midnight_in_shanghai(fed: Federation) -> None:
    """X is 2022-07-01T09:00Z, 17:00 in Shanghai. At the end of 2022-06-30 (16:00Z that day) the
    number had no holder; at the end of 2022-07-01 it had today's."""
    assert await changed(fed, ONCE, date(2022, 6, 30)) is True
    assert await changed(fed, ONCE, date(2022, 7, 1)) is False
    # The deprecated since is answered for its day in Shanghai: one second before X (and the
    # first second of that day) tell no more than the day itself.
    for since in (X - timedelta(seconds=1), datetime(2022, 6, 30, 16, tzinfo=UTC)):
        claim = verified(fed, await ask(fed, ONCE, since))
        assert (claim.specified_date, claim.changed) == (date(2022, 7, 1), False), since
        assert claim.since == datetime.combine(date(2022, 7, 2), time(), SHANGHAI)
    claim = verified(fed, await ask(fed, ONCE, datetime(2022, 6, 30, 15, 59, 59, tzinfo=UTC)))
    assert (claim.specified_date, claim.changed) == (date(2022, 6, 30), True)
    assert await changed(fed, ONCE, today_in_shanghai()) is False  # today: as of now
    assert await refused(fed, ONCE, datetime.now(UTC) + timedelta(days=1)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SINCE_IN_FUTURE",
    )


@pytest.mark.parametrize(
    ("question", "since", "reason"),
    [
        (date_pb2.Date(year=2022, month=13, day=1), None, "BAD_DATE"),
        (date_pb2.Date(year=2022, month=7, day=0), None, "BAD_DATE"),
        (date_pb2.Date(year=0, month=7, day=1), None, "BAD_DATE"),
        (date_pb2.Date(year=2023, month=2, day=29), None, "BAD_DATE"),
        (None, None, "MISSING_SPECIFIED_DATE"),
        (date(2022, 7, 1), X, "SINCE_AND_SPECIFIED_DATE"),
    ],
)
async def test_a_malformed_question_is_invalid_and_costs_nothing(
    budgeted: Federation, question: Question, since: datetime | None, reason: str
) -> None:
    for _ in range(4):  # more than the budget: a refused question must not count
        assert await refused(budgeted, ONCE, question, since=since) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
        )
    for day in (date(2016, 1, 1), date(2020, 1, 1), date(2023, 1, 1)):
        await ask(budgeted, ONCE, day)
    with budgeted.gateway.store.engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(recycled_asked_dates)).scalar() == 3
        )


async def test_ported_number_is_answered_by_its_current_carrier(fed: Federation) -> None:
    ported = WORLD.showcase["ported"]  # assigned at cucc 2020-05-06, ported to cmcc 2023-04-01
    answer = await ask(fed, ported, date(2021, 1, 1))
    claim_carrier = verify_recycled_claim(
        Envelope.from_proto(answer.answer),
        load_trusted_state(fed.layout.trust_dir, now=datetime.now(UTC)),
        now=datetime.now(UTC),
        audience="weibo",
    )
    assert claim_carrier.carrier_id == "cmcc"
    assert claim_carrier.claim.changed is False  # the port did not change the holder


async def test_a_number_nobody_here_can_answer_for_is_told_apart_from_an_unknown_one(
    fed: Federation,
) -> None:
    # ctcc leaves the gateway's config but stays in the signed numbering plan: its numbers are
    # the federation's, yet no member can answer for them (CAMARA: SERVICE_NOT_APPLICABLE). A
    # number in no range of the plan is unknown (CAMARA: IDENTIFIER_NOT_FOUND).
    ctcc_number = WORLD.histories_served_by("ctcc", datetime.now(UTC))[0].number
    config = fed.layout.gateway_config
    config.write_text(without_member(config.read_text(), "carrier", "ctcc"))
    assert fed.gateway.watcher is not None
    await fed.gateway.watcher.reload_now("test")
    day = date(2023, 1, 1)
    assert await refused(fed, ctcc_number, day) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARRIER_NOT_MEMBER",
    )
    assert await refused(fed, "+442079460000", day) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_NUMBER")


async def test_only_platforms_ask_and_the_answer_is_theirs_alone(fed: Federation) -> None:
    day = date(2023, 1, 1)
    assert (await refused(fed, ONCE, day, PeerId(Role.CARRIER, "cmcc")))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    answer = await ask(fed, ONCE, day)
    now = datetime.now(UTC)
    with pytest.raises(Exception) as e:
        verify_recycled_claim(
            Envelope.from_proto(answer.answer),
            load_trusted_state(fed.layout.trust_dir, now=now),
            now=now,
            audience="taobao",
        )
    assert getattr(e.value, "reason", "") == "WRONG_AUDIENCE"


async def test_rate_limited_per_platform_with_retry_info_and_audited(fed: Federation) -> None:
    day = date(2023, 1, 1)
    for _ in range(8):  # the burst
        await ask(fed, ONCE, day)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(fed, ONCE, day)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(e.value) > timedelta(0)
    await ask(fed, ONCE, day, PeerId(Role.PLATFORM, "taobao"))  # taobao has its own bucket
    outcomes = [outcome for outcome, _ in await recycled_audit(fed)]
    assert outcomes.count("ANSWERED") == 9 and outcomes.count("RATE_LIMITED") == 1


# -- the probe budget ------------------------------------------------------------------------------


async def test_bisection_for_the_tenure_start_is_refused_and_learns_only_days(
    budgeted: Federation,
) -> None:
    """The reported attack: bisect `since` between the history's start and now, as one platform
    with the rate limit out of the way. It pinned X to the second in 28 calls; now each call is
    about a day, and the fourth distinct day is refused, leaving X somewhere in a span of more
    than a year."""
    lo, hi = HISTORY_START, datetime.now(UTC)  # changed since lo, not since hi
    answers: dict[date, bool] = {}
    refusal: grpc.aio.AioRpcError | None = None
    for _ in range(40):
        if hi - lo <= timedelta(seconds=1):
            break
        mid = lo + (hi - lo) / 2
        try:
            claim = verified(budgeted, await ask(budgeted, ONCE, mid))
        except grpc.aio.AioRpcError as exc:
            refusal = exc
            break
        answers[claim.specified_date] = claim.changed
        if claim.changed:
            lo = mid
        else:
            hi = mid
    assert refusal is not None, f"bisection ran to {hi - lo} without a refusal"
    info = rpc_error_info(refusal)
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info is not None and info.reason == "RECYCLED_PROBE_BUDGET"
    assert timedelta(days=364) < retry_delay(refusal) <= timedelta(days=365)
    assert len(answers) == 3
    # What the answers say about X: after the end of every day answered true, by the end of
    # every day answered false; nothing finer than a day.
    after = max(
        (
            datetime.combine(d + timedelta(days=1), time(), SHANGHAI)
            for d, c in answers.items()
            if c
        ),
        default=HISTORY_START,
    )
    by = min(
        (
            datetime.combine(d + timedelta(days=1), time(), SHANGHAI)
            for d, c in answers.items()
            if not c
        ),
        default=datetime.now(UTC),
    )
    assert after < X <= by  # the answers were true
    assert by - after > timedelta(days=365), (after, by)


async def test_repeats_are_free_the_fourth_date_is_refused_and_audited(
    budgeted: Federation,
) -> None:
    days = {date(2018, 1, 1): True, date(2022, 6, 30): True, date(2022, 7, 1): False}
    for _ in range(3):
        for day, expected in days.items():
            assert await changed(budgeted, ONCE, day) is expected
    # The same day asked with the deprecated since, at another second of it: still free.
    assert await changed(budgeted, ONCE, datetime(2022, 7, 1, 3, 4, 5, tzinfo=UTC)) is False
    assert await refused(budgeted, ONCE, date(2022, 7, 2)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECYCLED_PROBE_BUDGET",
    )
    assert await refused(budgeted, ONCE, datetime(2022, 7, 5, tzinfo=UTC)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECYCLED_PROBE_BUDGET",
    )
    assert await changed(budgeted, ONCE, date(2022, 6, 30)) is True  # asked before: still free
    # The budget is per platform and per number.
    taobao = PeerId(Role.PLATFORM, "taobao")
    await ask(budgeted, ONCE, date(2022, 7, 2), taobao)
    await ask(budgeted, WORLD.showcase["recycled_twice"], date(2022, 7, 2))
    audit = await recycled_audit(budgeted)
    refusals = [detail for outcome, detail in audit if outcome == "PROBING_REFUSED"]
    assert refusals == [{"specified_date": "2022-07-02"}, {}]
    assert [o for o, _ in audit].count("ANSWERED") == 3 * 3 + 1 + 1 + 2


async def test_a_day_before_the_history_costs_its_day_a_future_day_does_not(
    budgeted: Federation,
) -> None:
    """OUT_OF_RANGE before the history is an answer too (the history began after that day): for
    a number with one holder ever, that is the tenure start. So it counts."""
    fresh = WORLD.showcase["fresh"]
    tomorrow = today_in_shanghai() + timedelta(days=1)
    for _ in range(4):
        assert (await refused(budgeted, fresh, tomorrow + timedelta(days=1)))[1] == (
            "SPECIFIED_DATE_IN_FUTURE"
        )
    for question in (date(2001, 1, 1), datetime(2002, 1, 1, tzinfo=UTC)):
        assert (await refused(budgeted, fresh, question))[0] == grpc.StatusCode.OUT_OF_RANGE
    await ask(budgeted, fresh, today_in_shanghai() - timedelta(days=1))
    assert await refused(budgeted, fresh, date(2003, 1, 1)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECYCLED_PROBE_BUDGET",
    )
    # Asked before: the same refusal again, free.
    assert (await refused(budgeted, fresh, date(2001, 1, 1)))[1] == (
        "SPECIFIED_DATE_BEFORE_HISTORY"
    )


async def test_the_budget_survives_a_gateway_restart(budgeted: Federation) -> None:
    for day in (date(2016, 1, 1), date(2020, 1, 1), date(2023, 1, 1)):
        await ask(budgeted, ONCE, day)
    await budgeted.gateway.stop(0)
    budgeted.gateway = await Gateway.start(load_gateway_config(budgeted.layout.gateway_config))
    await asyncio.wait_for(budgeted.gateway.ready.wait(), 20)
    assert await refused(budgeted, ONCE, date(2021, 1, 1)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RECYCLED_PROBE_BUDGET",
    )
    assert await changed(budgeted, ONCE, date(2020, 1, 1)) is True


@pytest.fixture
async def replicated(tmp_path: Path, db_url: str) -> AsyncIterator[tuple[Federation, list[str]]]:
    """The default budget behind two gateway replicas on one PostgreSQL database, or behind the
    one replica SQLite serves; yields the federation and the endpoints to call."""
    replicas = 2 if db_url.startswith("postgresql") else 1
    f = await start_federation(
        tmp_path / "fed", limits=OUT_OF_THE_WAY, database_url=db_url, replicas=replicas
    )
    others: list[Gateway] = []
    try:
        for config in f.layout.replica_configs[1:]:
            others.append(await Gateway.start(load_gateway_config(config)))
            await asyncio.wait_for(others[-1].ready.wait(), 20)
        yield f, list(f.layout.replica_endpoints)
    finally:
        for gw in others:
            await gw.stop(0)
        await f.stop()


async def test_concurrent_callers_on_every_replica_cannot_exceed_the_budget(
    replicated: tuple[Federation, list[str]],
) -> None:
    fed, endpoints = replicated
    days = [date(2016, 1, 1) + timedelta(days=30 * i) for i in range(12)]

    async def one(i: int) -> str:
        try:
            await ask(fed, ONCE, days[i], endpoint=endpoints[i % len(endpoints)])
        except grpc.aio.AioRpcError as exc:
            info = rpc_error_info(exc)
            return info.reason if info else exc.code().name
        return "ANSWERED"

    first = await asyncio.gather(*(one(i) for i in range(len(days))))
    assert first.count("ANSWERED") == 3
    assert first.count("RECYCLED_PROBE_BUDGET") == len(days) - 3
    # All at once again: the three days asked are free, every other day is still refused.
    again = await asyncio.gather(*(one(i) for i in range(len(days))))
    assert again == first
    with fed.gateway.store.engine.connect() as conn:
        rows = conn.execute(sa.select(recycled_asked_dates)).all()
    assert sorted(r.specified_date for r in rows) == [
        d for d, o in zip(days, first, strict=True) if o == "ANSWERED"
    ]
    # Numbers at rest are pseudonyms only.
    assert {r.number_key for r in rows} == {fed.gateway.pseudonym(ONCE)}
