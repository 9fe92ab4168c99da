"""numfed.testing: the pytest plugin's whole-federation fixtures, in process and as processes."""

from __future__ import annotations

from pathlib import Path

from numfed import pki
from numfed.identity import PeerId, Role
from numfed.scenario import CARRIERS, PLATFORMS
from numfed.testing import Federation, spawn_federation
from numfed.v1 import gateway_pb2, gateway_pb2_grpc


async def test_numfed_federation_fixture_starts_every_member(
    numfed_federation: Federation,
) -> None:
    fed = numfed_federation
    assert fed.gateway.ready.is_set()
    assert sorted(fed.carriers) == sorted(CARRIERS)
    assert sorted(fed.platforms) == sorted(PLATFORMS)
    for p in fed.platforms.values():
        assert p.trust.ready.is_set()
        bundle = p.trust.state.bundle
        assert bundle is not None and bundle.version == 1
    ports = [p.port for p in fed.platforms.values()] + [c.port for c in fed.carriers.values()]
    assert len(set(ports)) == len(ports)


async def test_spawn_federation_runs_each_member_as_a_process(tmp_path: Path) -> None:
    fed = await spawn_federation(tmp_path / "fed", carriers=["cmcc"], platforms=["weibo"])
    try:
        assert sorted(fed.processes) == ["carrier-cmcc", "gateway", "platform-weibo"]
        assert all(p.poll() is None for p in fed.processes.values())
        layout = fed.layout
        peer = PeerId(Role.PLATFORM, "weibo")
        channel = pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, peer, server=pki.GATEWAY
        )
        try:
            answer = await gateway_pb2_grpc.GatewayServiceStub(channel).GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(), timeout=5
            )
        finally:
            await channel.close()
        assert answer.bundle.payload
        assert fed.stop("platform-weibo") == 0  # SIGTERM: a graceful stop
        assert fed.processes["platform-weibo"].poll() == 0
    finally:
        fed.stop_all()
    assert all(p.poll() is not None for p in fed.processes.values())
    assert (layout.root / "logs" / "gateway.log").exists()
