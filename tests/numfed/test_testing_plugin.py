"""The ``numfed.testing`` pytest plugin: its fixtures start real federations members can test."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.federation import FederationLayout
from numfed.identity import PeerId, Role
from numfed.scenario import CARRIERS, PLATFORMS
from numfed.testing import Federation
from numfed.testing.plugin import FederationFactory
from numfed.v1 import gateway_pb2, gateway_pb2_grpc


async def _trust_bundle(layout: FederationLayout, platform_id: str) -> int:
    peer = PeerId(Role.PLATFORM, platform_id)
    async with pki.secure_channel(
        layout.gateway_target, layout.pki_dir, peer, server=pki.GATEWAY
    ) as channel:
        answer = await gateway_pb2_grpc.GatewayServiceStub(channel).GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(), timeout=5
        )
    return len(answer.roots)


async def test_in_process_federation_is_whole_and_serving(numfed_federation: Federation) -> None:
    assert set(numfed_federation.carriers) == set(CARRIERS)
    assert set(numfed_federation.platforms) == set(PLATFORMS)
    assert all(p.trust.ready.is_set() for p in numfed_federation.platforms.values())
    assert await _trust_bundle(numfed_federation.layout, PLATFORMS[0]) == 1


async def test_factory_passes_options_to_create_federation(
    numfed_federation_factory: FederationFactory,
) -> None:
    fed = await numfed_federation_factory(carriers=("cmcc",), platforms=("weibo", "labels"))
    assert set(fed.carriers) == {"cmcc"}
    assert set(fed.platforms) == {"weibo", "labels"}


def test_process_federation_answers_health_checks(
    numfed_federation_processes: FederationLayout,
) -> None:
    layout = numfed_federation_processes
    creds = pki.channel_credentials(layout.pki_dir, pki.GATEWAY)
    for endpoint in layout.platform_endpoints.values():
        with grpc.secure_channel(endpoint, creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="numfed.v1.PlatformService"), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
