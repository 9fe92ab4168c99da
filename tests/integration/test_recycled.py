"""The recycled check end to end: platform -> gateway -> current carrier -> signed bit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.schema import audit_log
from numfed import pki
from numfed.claims import verify_recycled_claim
from numfed.envelope import Envelope
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.scenario import demo_scenario
from numfed.timeutil import to_timestamp
from numfed.trustfiles import load_trusted_state
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import Federation, start_federation

WORLD = demo_scenario()
WEIBO = PeerId(Role.PLATFORM, "weibo")


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    f = await start_federation(
        tmp_path / "fed", limits={"recycled_rate": 0.5, "recycled_burst": 8}, database_url=db_url
    )
    try:
        yield f
    finally:
        await f.stop()


async def ask(
    fed: Federation, number: str, since: datetime, peer: PeerId = WEIBO
) -> gateway_pb2.CheckRecycledResponse:
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, peer) as ch:
        answer: gateway_pb2.CheckRecycledResponse = await gateway_pb2_grpc.GatewayServiceStub(
            ch
        ).CheckRecycled(
            gateway_pb2.CheckRecycledRequest(number=number, since=to_timestamp(since)), timeout=5
        )
        return answer


async def changed(fed: Federation, number: str, since: datetime) -> bool:
    answer = await ask(fed, number, since)
    now = datetime.now(UTC)
    trust = load_trusted_state(fed.layout.trust_dir, now=now)
    verified = verify_recycled_claim(
        Envelope.from_proto(answer.answer), trust, now=now, audience="weibo"
    )
    assert verified.claim.number == number and verified.claim.since == since
    return verified.claim.changed


async def refused(
    fed: Federation, number: str, since: datetime, peer: PeerId = WEIBO
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(fed, number, since, peer)
    info = rpc_error_info(e.value)
    return e.value.code(), info.reason if info else ""


async def test_each_semantic_case(fed: Federation) -> None:
    once = WORLD.showcase["recycled_once"]
    x = datetime(2022, 7, 1, 9, tzinfo=UTC)
    assert await changed(fed, once, x) is False  # at the tenure start: same holder
    assert await changed(fed, once, x + timedelta(days=30)) is False
    assert await changed(fed, once, x - timedelta(days=30)) is True  # in the gap without holder
    assert await changed(fed, once, datetime(2018, 1, 1, tzinfo=UTC)) is True  # previous holder
    assert await refused(fed, once, datetime.now(UTC) + timedelta(days=1)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SINCE_IN_FUTURE",
    )
    assert await refused(fed, once, datetime(2001, 1, 1, tzinfo=UTC)) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SINCE_BEFORE_HISTORY",
    )
    assert (await refused(fed, "+8613999999999", x))[0] == grpc.StatusCode.NOT_FOUND


async def test_ported_number_is_answered_by_its_current_carrier(fed: Federation) -> None:
    ported = WORLD.showcase["ported"]  # assigned at cucc 2020-05-06, ported to cmcc 2023-04-01
    answer = await ask(fed, ported, datetime(2021, 1, 1, tzinfo=UTC))
    claim_carrier = verify_recycled_claim(
        Envelope.from_proto(answer.answer),
        load_trusted_state(fed.layout.trust_dir, now=datetime.now(UTC)),
        now=datetime.now(UTC),
        audience="weibo",
    )
    assert claim_carrier.carrier_id == "cmcc"
    assert claim_carrier.claim.changed is False  # the port did not change the holder


async def test_only_platforms_ask_and_the_answer_is_theirs_alone(fed: Federation) -> None:
    once = WORLD.showcase["recycled_once"]
    since = datetime(2023, 1, 1, tzinfo=UTC)
    assert (await refused(fed, once, since, PeerId(Role.CARRIER, "cmcc")))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    answer = await ask(fed, once, since)
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
    once = WORLD.showcase["recycled_once"]
    since = datetime(2023, 1, 1, tzinfo=UTC)
    for _ in range(8):  # the burst
        await ask(fed, once, since)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(fed, once, since)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(e.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details) and retry.retry_delay.ToMilliseconds() > 0
    await ask(fed, once, since, PeerId(Role.PLATFORM, "taobao"))  # taobao has its own bucket
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as conn:
        outcomes = [
            r.outcome
            for r in conn.execute(
                sa.select(audit_log.c.outcome).where(audit_log.c.event == "RECYCLED_CHECK")
            )
        ]
    assert outcomes.count("ANSWERED") == 9 and outcomes.count("RATE_LIMITED") == 1
