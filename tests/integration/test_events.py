"""Lifecycle events over real servers: at-least-once, in order, once each, push and poll."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import audit_log
from numfed import pki
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.scenario import demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import Federation, start_federation
from tests.integration.holder import PRIOR
from tests.integration.test_journey import holder_app

WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    f = await start_federation(
        tmp_path / "fed", platform_knobs={"xiaomi": {"events": "poll"}}, database_url=db_url
    )
    try:
        yield f
    finally:
        await f.stop()


async def publish(fed: Federation, events: list[LifecycleEvent], carrier: str = "cmcc") -> int:
    env = sign_event_batch(
        carrier, events, pki.load_carrier_signer(fed.layout.pki_dir, carrier), now=datetime.now(UTC)
    )
    async with pki.secure_channel(
        fed.layout.gateway_endpoint, fed.layout.pki_dir, PeerId(Role.CARRIER, carrier)
    ) as ch:
        answer = await gateway_pb2_grpc.GatewayServiceStub(ch).PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=env.to_proto()), timeout=5
        )
    return answer.seq


async def delivered(fed: Federation, platform: str, count: int, within: float = 30) -> list[bytes]:
    """The ids of the events a platform applied beyond the port halves of the federation's
    start (the carriers' ports before it), once there are ``count`` of them."""
    store = fed.platforms[platform].store
    halves = {e.event_id for c in fed.carriers.values() for e in c.adapter.port_halves()}
    async with asyncio.timeout(within):
        while len(ids := [i for i in store.applied_event_ids() if i not in halves]) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return ids


def served_by_cmcc() -> list[str]:
    now = datetime.now(UTC)
    return [h.number for h in WORLD.histories_served_by("cmcc", now)]


async def test_every_event_once_in_order_despite_lost_acks_and_a_restart(fed: Federation) -> None:
    fed.platforms["weibo"].servicer.knobs.ack_drop_rate = 0.2
    numbers = served_by_cmcc()
    sent: list[bytes] = []
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(30):
        batch = [
            LifecycleEvent.new(numbers[(i + k) % len(numbers)], EventKind.DEACTIVATED, t)
            for k in range(5)
        ]
        sent += [e.event_id for e in batch]
        await publish(fed, batch)
        if i == 12:  # a platform restarts mid-stream
            await fed.platforms["taobao"].stop(0)
            await fed.restart_platform("taobao")
    for platform in ("weibo", "taobao", "douyin", "xiaomi"):  # xiaomi polls
        got = await delivered(fed, platform, len(sent))
        assert got == sent, f"{platform}: events missing, repeated or out of order"
    assert fed.platforms["xiaomi"].puller is not None
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as conn:
        modes = {
            r.detail
            for r in conn.execute(
                sa.select(audit_log.c.detail).where(audit_log.c.event == "EVENT_DELIVERY")
            )
        }
    assert any('"push"' in m for m in modes) and any('"poll"' in m for m in modes)


async def test_reassigned_makes_old_bindings_stale_then_release_removes_them(
    fed: Federation,
) -> None:
    number = WORLD.showcase["recycled_once"]
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    old = [b for b in WORLD.bindings_on("weibo") if b.number == number and b.bound_at < x]
    mine = [b for b in WORLD.bindings_on("weibo") if b.number == number and b.bound_at >= x]
    store = fed.platforms["weibo"].store
    assert old and mine and store.login_by_sms(number, old[0].account_id)  # the takeover path
    await publish(fed, [LifecycleEvent.new(number, EventKind.REASSIGNED, x, tenure_start=x)])
    await delivered(fed, "weibo", 1)
    assert not store.login_by_sms(number, old[0].account_id)  # an SMS code alone: refused
    assert all(store.login_by_sms(number, b.account_id) for b in mine)  # the holder's own: fine
    app = await holder_app(fed, number)
    op = await app.release(PRIOR)
    await app.watch(op.name)
    got = store.bindings_for([number])[number]
    assert all(not b.active for b in got if b.account_id == old[0].account_id)


async def test_late_pending_release_never_touches_the_new_holders_bindings(
    fed: Federation,
) -> None:
    # The event says "release what was bound before as_of"; it arrives after the new holder
    # bound accounts (the scenario has bindings at and after X). Only the old ones go.
    number = WORLD.showcase["recycled_once"]
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    await publish(
        fed,
        [LifecycleEvent.new(number, EventKind.PENDING_RELEASE, x - timedelta(days=100), as_of=x)],
    )
    for platform in ("weibo", "dianping", "xiaomi"):
        await delivered(fed, platform, 1)
        for b in fed.platforms[platform].store.bindings_for([number])[number]:
            assert b.active == (b.bound_at >= x), f"{platform}: {b.bound_at} vs X {x}"


async def test_a_carrier_cannot_speak_for_numbers_it_does_not_serve(fed: Federation) -> None:
    cucc_number = WORLD.showcase["recycled_twice"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await publish(
            fed, [LifecycleEvent.new(cucc_number, EventKind.DEACTIVATED, datetime.now(UTC))]
        )
    info = rpc_error_info(e.value)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info is not None and info.reason == "NUMBER_NOT_SERVED"


async def test_a_port_moves_the_number_once_donor_and_recipient_have_both_signed(
    fed: Federation,
) -> None:
    from numfed.claims import Purpose, TenureClaim, sign_claim

    number = WORLD.showcase["recycled_twice"]  # in cucc's range, served by cucc
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))

    async def query_as_cmcc() -> gateway_pb2.QueryBindingsResponse:
        claim = TenureClaim.new(
            number=number,
            carrier_id="cmcc",
            tenure_start=x,
            purpose=Purpose.QUERY_PRIOR,
            now=datetime.now(UTC),
        )
        env = sign_claim(claim, pki.load_carrier_signer(fed.layout.pki_dir, "cmcc"))
        async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
            answer: gateway_pb2.QueryBindingsResponse = await gateway_pb2_grpc.GatewayServiceStub(
                ch
            ).QueryBindings(gateway_pb2.QueryBindingsRequest(claim=env.to_proto()), timeout=5)
            return answer

    at = datetime.now(UTC)
    half = LifecycleEvent.new(number, EventKind.PORTED, at, from_carrier="cucc", to_carrier="cmcc")
    await publish(fed, [half])  # the recipient's half alone moves nothing
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await query_as_cmcc()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    donor = LifecycleEvent.new(number, EventKind.PORTED, at, from_carrier="cucc", to_carrier="cmcc")
    await publish(fed, [donor], carrier="cucc")
    answer = await query_as_cmcc()  # cmcc serves it now; X is still the assignment time
    assert len(answer.results) == len(fed.platforms)
