"""One reference platform on a real server (port 0, mTLS), its trust bundle served by a stand-in
gateway that only answers GetTrustBundle, and a client that calls the platform as the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_platform_config
from numfed.envelope import Envelope, SigningKey
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, start_server
from numfed.trustfiles import read_bundle, read_roots
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc, platform_pb2_grpc
from platform_stubs.reference import PlatformHandle, start_platform

WEIBO = PeerId(Role.PLATFORM, "weibo")
GATEWAY_SERVICE = "numfed.v1.GatewayService"


@dataclass
class TrustGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Serves the trust directory's root chain and bundle (or a chain and a bundle a test
    substitutes), and records when it was asked."""

    trust_dir: Path
    bundle: claim_pb2.Envelope | None = None
    roots: list[claim_pb2.Envelope] | None = None
    """Root versions 1..n to serve instead of the directory's."""
    calls: int = 0
    asked_at: list[float] = dataclasses.field(default_factory=list)
    """The event loop's time of each call."""

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        self.calls += 1
        self.asked_at.append(asyncio.get_running_loop().time())
        chain = self.roots if self.roots is not None else read_roots(self.trust_dir)
        bundle = self.bundle if self.bundle is not None else read_bundle(self.trust_dir)
        return gateway_pb2.GetTrustBundleResponse(
            roots=chain[request.known_root_version :], bundle=bundle
        )


async def start_trust_gateway(
    layout: FederationLayout, *, port: int = 0
) -> tuple[TrustGateway, ServerHandle]:
    fake = TrustGateway(layout.trust_dir)  # type: ignore[abstract]  # the rest: UNIMPLEMENTED

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
        return GATEWAY_SERVICE

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(layout.pki_dir, pki.GATEWAY),
        policy={f"/{GATEWAY_SERVICE}/GetTrustBundle": frozenset({Role.PLATFORM})},
        bind=f"127.0.0.1:{port}",
    )
    return fake, handle


@pytest.fixture
def layout(tmp_path: Path) -> FederationLayout:
    return create_federation(tmp_path / "fed", carriers=("cmcc", "cucc"), platforms=("weibo",))


async def start_weibo(layout: FederationLayout, gateway_port: int, **knobs: Any) -> PlatformHandle:
    """Weibo with an empty store (tests seed their own bindings) on port 0."""
    config = dataclasses.replace(
        load_platform_config(layout.platform_configs["weibo"]),
        listen="127.0.0.1:0",
        gateway=f"127.0.0.1:{gateway_port}",
        seed_scenario=False,
        **knobs,
    )
    return await start_platform(config)


@dataclass
class Running:
    layout: FederationLayout
    platform: PlatformHandle
    trust_gateway: TrustGateway

    def channel(self, peer: PeerId = pki.GATEWAY) -> grpc.aio.Channel:
        return pki.secure_channel(
            f"127.0.0.1:{self.platform.port}", self.layout.pki_dir, peer, server=WEIBO
        )

    def signer(self, carrier: str) -> SigningKey:
        return pki.load_carrier_signer(self.layout.pki_dir, carrier)

    async def seed(self, rows: list[tuple[str, str, str, str, datetime]]) -> None:
        store = self.platform.store
        await store.run(store.seed, rows)


@pytest.fixture
async def running(layout: FederationLayout) -> AsyncIterator[Running]:
    async with contextlib.AsyncExitStack() as stack:  # stops what started, last first
        fake, gw = await start_trust_gateway(layout)
        stack.push_async_callback(gw.stop, 0)
        platform = await start_weibo(layout, gw.port)
        stack.push_async_callback(platform.stop, 0)
        await asyncio.wait_for(platform.trust.ready.wait(), 10)
        yield Running(layout, platform, fake)


def signed(
    signer: SigningKey,
    *,
    number: str,
    tenure_start: datetime,
    purpose: Purpose,
    carrier_id: str = "cmcc",
    issued: datetime | None = None,
    lifetime: timedelta = timedelta(minutes=10),
    binding_refs: tuple[str, ...] = (),
) -> Envelope:
    claim = TenureClaim.new(
        number=number,
        carrier_id=carrier_id,
        tenure_start=tenure_start,
        purpose=purpose,
        now=issued or datetime.now(UTC),
        lifetime=lifetime,
        binding_refs=binding_refs,
    )
    return sign_claim(claim, signer)


def platform_stub(channel: grpc.aio.Channel) -> platform_pb2_grpc.PlatformServiceAsyncStub:
    return platform_pb2_grpc.PlatformServiceStub(channel)
