"""The platform's trust client: nothing is verified before a bundle is accepted, start-up waits for
the gateway, a bundle the pinned root did not sign is refused, and a refresh takes effect."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.claims import Purpose
from numfed.envelope import SigningKey, sign
from numfed.errors import Unauthenticated
from numfed.federation import FederationLayout, free_ports
from numfed.rpc import error_info, rpc_error_info
from numfed.trust import sign_bundle
from numfed.trustfiles import read_bundle
from numfed.v1 import platform_pb2
from platform_stubs.reference import SERVICE, PlatformHandle
from tests.platform_stubs.conftest import (
    WEIBO,
    Running,
    platform_stub,
    signed,
    start_trust_gateway,
    start_weibo,
)

N = "+8613812345678"
X = datetime(2022, 5, 6, tzinfo=UTC)


def request(layout: FederationLayout) -> platform_pb2.BatchQueryBindingsRequest:
    env = signed(
        pki.load_carrier_signer(layout.pki_dir, "cmcc"),
        number=N,
        tenure_start=X,
        purpose=Purpose.QUERY_PRIOR,
    )
    return platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id="q", claim=env.to_proto())]
    )


def channel(layout: FederationLayout, platform: PlatformHandle) -> grpc.aio.Channel:
    return pki.secure_channel(
        f"127.0.0.1:{platform.port}", layout.pki_dir, pki.GATEWAY, server=WEIBO
    )


async def serving_status(layout: FederationLayout, platform: PlatformHandle) -> int:
    async with channel(layout, platform) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
    return int(reply.status)


async def wait_serving(layout: FederationLayout, platform: PlatformHandle) -> None:
    async with channel(layout, platform) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
        )
        async for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise AssertionError("the platform never reported SERVING")


async def test_no_claim_is_answered_before_a_bundle_and_start_up_waits_for_the_gateway(
    layout: FederationLayout,
) -> None:
    [port] = free_ports(1)
    platform = await start_weibo(layout, port)  # nothing listens on the gateway's port yet
    gateway = None
    try:
        async with channel(layout, platform) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == "NO_TRUST_BUNDLE"
        assert await serving_status(layout, platform) == health_pb2.HealthCheckResponse.NOT_SERVING

        fake, gateway = await start_trust_gateway(layout, port=port)
        await asyncio.wait_for(platform.trust.ready.wait(), 10)
        await wait_serving(layout, platform)
        assert fake.calls >= 1
        async with channel(layout, platform) as ch:
            answer = await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert answer.results[0].status.code == 0
    finally:
        await platform.stop(0)
        if gateway is not None:
            await gateway.stop(0)


async def test_a_bundle_not_signed_by_the_pinned_root_is_refused(layout: FederationLayout) -> None:
    fake, gateway = await start_trust_gateway(layout)
    platform = None
    try:
        real = read_bundle(layout.trust_dir)
        strangers = [SigningKey.generate(), SigningKey.generate()]
        fake.bundle = sign(real.payload_type, real.payload, strangers).to_proto()
        platform = await start_weibo(layout, gateway.port)
        with pytest.raises(Unauthenticated) as e:
            await platform.trust.refresh()
        assert e.value.reason == "BUNDLE_THRESHOLD_NOT_MET"
        assert not platform.trust.ready.is_set()
        async with channel(layout, platform) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if platform is not None:
            await platform.stop(0)
        await gateway.stop(0)


async def test_a_refreshed_bundle_takes_effect(running: Running) -> None:
    """Bundle v2 revokes cmcc's key; after a refresh the platform refuses cmcc's claims."""
    state = running.platform.trust.state
    assert state.bundle is not None
    cmcc_key = running.signer("cmcc").key_id
    v2 = dataclasses.replace(
        state.bundle, version=state.bundle.version + 1, revoked_key_ids=frozenset({cmcc_key})
    )
    signers = pki.load_root_signers(running.layout.pki_dir)[:2]
    running.trust_gateway.bundle = sign_bundle(v2, signers).to_proto()

    await running.platform.trust.refresh()
    assert running.platform.trust.trusted().bundle == v2
    async with running.channel() as ch:
        answer = await platform_stub(ch).BatchQueryBindings(request(running.layout), timeout=5)
    info = error_info(answer.results[0].status)
    assert answer.results[0].status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert info is not None and info.reason == "KEY_REVOKED"
