"""The gateway compares every signed time with its own clock, with the bundle's skew and lifetime.

A real gateway with mTLS and its database; the trust bundle publishes a maximum claim lifetime of
5 minutes. Each refusal has its code and reason, and leaves the event log and the jobs as they
were. Platforms judge batches they get from the log themselves (tests/platform_stubs).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import event_batches, release_jobs
from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout, create_federation, write_trust
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

NUMBER = "+8613812345678"  # cmcc's
X = datetime(2022, 7, 1, 9, tzinfo=UTC)
CMCC = PeerId(Role.CARRIER, "cmcc")
LIFETIME = timedelta(minutes=5)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> FederationLayout:
    layout = create_federation(tmp_path_factory.mktemp("fed"))
    write_trust(
        layout.pki_dir, layout.trust_dir, now=datetime.now(UTC), max_claim_lifetime=LIFETIME
    )
    return layout


@pytest.fixture
async def gateway(layout: FederationLayout) -> AsyncIterator[Gateway]:
    gw = await Gateway.start(load_gateway_config(layout.gateway_config))
    try:
        yield gw
    finally:
        await gw.stop(0)


def digest(gw: Gateway) -> str:
    h = hashlib.sha256()
    with gw.store.engine.connect() as c:
        for table in (event_batches, release_jobs):
            for row in c.execute(sa.select(table).order_by(*table.primary_key)).all():
                h.update(repr(tuple(row)).encode())
    return h.hexdigest()


async def refused(
    layout: FederationLayout, gw: Gateway, method: str, request: object
) -> tuple[str, str, dict[str, str]]:
    before = digest(gw)
    async with pki.secure_channel(f"127.0.0.1:{gw.port}", layout.pki_dir, CMCC) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await getattr(gateway_pb2_grpc.GatewayServiceStub(ch), method)(request, timeout=5)
    assert digest(gw) == before, "a refused request changed the gateway's database"
    info = rpc_error_info(e.value)
    assert info is not None
    return e.value.code().name, info.reason, dict(info.metadata)


def publish(layout: FederationLayout, signed_at: datetime, *events: LifecycleEvent) -> object:
    key = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    env = sign_event_batch("cmcc", events, key, now=signed_at)
    return gateway_pb2.PublishEventsRequest(batch=env.to_proto())


def query(
    layout: FederationLayout, issued_at: datetime, lifetime: timedelta
) -> gateway_pb2.QueryBindingsRequest:
    claim = TenureClaim.new(
        number=NUMBER,
        carrier_id="cmcc",
        tenure_start=X,
        purpose=Purpose.QUERY_PRIOR,
        now=issued_at,
        lifetime=lifetime,
    )
    env: claim_pb2.Envelope = sign_claim(
        claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")
    ).to_proto()
    return gateway_pb2.QueryBindingsRequest(claim=env)


async def test_a_batch_signed_longer_ago_than_the_claim_lifetime_is_too_old(
    layout: FederationLayout, gateway: Gateway
) -> None:
    now = datetime.now(UTC)
    stale = publish(
        layout,
        now - LIFETIME - timedelta(minutes=2),
        LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, now - timedelta(hours=1)),
    )
    assert await refused(layout, gateway, "PublishEvents", stale) == (
        "UNAUTHENTICATED",
        "TOO_OLD",
        {},
    )


async def test_a_batch_dated_300_days_ahead_is_refused(
    layout: FederationLayout, gateway: Gateway
) -> None:
    ahead = datetime.now(UTC) + timedelta(days=300)
    request = publish(layout, ahead, LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, ahead))
    assert await refused(layout, gateway, "PublishEvents", request) == (
        "UNAUTHENTICATED",
        "ISSUED_IN_FUTURE",
        {},
    )


async def test_an_event_that_has_not_happened_yet_is_refused(
    layout: FederationLayout, gateway: Gateway
) -> None:
    now = datetime.now(UTC)
    pending = LifecycleEvent.new(
        NUMBER, EventKind.PENDING_RELEASE, now, as_of=now + timedelta(days=30)
    )
    assert await refused(layout, gateway, "PublishEvents", publish(layout, now, pending)) == (
        "INVALID_ARGUMENT",
        "TIME_IN_FUTURE",
        {"field": "as_of"},
    )


async def test_a_claim_issued_ahead_of_the_gateways_clock_is_refused(
    layout: FederationLayout, gateway: Gateway
) -> None:
    request = query(layout, datetime.now(UTC) + timedelta(minutes=3), timedelta(minutes=4))
    code, reason, _ = await refused(layout, gateway, "QueryBindings", request)
    assert (code, reason) == ("UNAUTHENTICATED", "ISSUED_IN_FUTURE")


async def test_the_gateway_takes_the_claim_lifetime_from_the_bundle(
    layout: FederationLayout, gateway: Gateway
) -> None:
    """The bundle says 5 minutes: a 10-minute claim is refused (the old default was 30)."""
    request = query(layout, datetime.now(UTC), timedelta(minutes=10))
    code, reason, _ = await refused(layout, gateway, "QueryBindings", request)
    assert (code, reason) == ("INVALID_ARGUMENT", "CLAIM_LIFETIME_TOO_LONG")
