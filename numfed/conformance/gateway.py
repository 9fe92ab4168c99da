"""The kit's stand-in for the gateway: it serves the trust bundle the kit chooses to a platform.

A platform fetches its trust bundle from the gateway (``GetTrustBundle``) and verifies it
against the root it pinned. The kit signs its own bundles with the federation root keys of the
PKI it is given, with test carrier keys it made for this run, so it can revoke a key or replay
an older bundle and watch what the platform does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from numfed import pki
from numfed.envelope import Envelope, SigningKey
from numfed.errors import Unavailable
from numfed.identity import Role
from numfed.rpc import ServerHandle, start_server
from numfed.trust import CarrierKey, TrustBundle, sign_bundle
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["KitGateway", "TestKeys", "start_kit_gateway"]

SERVICE = "numfed.v1.GatewayService"
POLICY = {f"/{SERVICE}/GetTrustBundle": frozenset({Role.GATEWAY, Role.CARRIER, Role.PLATFORM})}
TEST_CARRIER = "cmcc"
"""The carrier id the kit's test keys belong to (any member id would do)."""
OTHER_CARRIER = "cucc"
"""A second carrier, with a key of its own that covers the same numbers (number portability)."""
NARROW_PREFIX = "+86150"
"""The one prefix the kit's narrow key may attest; the kit's numbers never start with it."""


@dataclass(frozen=True)
class TestKeys:
    """Carrier signing keys made for one run; none of them leaves the kit's process."""

    good: SigningKey
    narrow: SigningKey
    """In the bundle, but only for numbers under NARROW_PREFIX."""
    doomed: SigningKey
    """Trusted at first, revoked by the kit's second bundle."""
    stranger: SigningKey
    """Never in any bundle."""
    other: SigningKey
    """OTHER_CARRIER's key, for all of +86 like ``good``: valid, in scope, never revoked."""

    @classmethod
    def generate(cls) -> TestKeys:
        return cls(*(SigningKey.generate() for _ in range(5)))

    def bundle(self, version: int, *, now: datetime, revoke_doomed: bool) -> TrustBundle:
        def entry(
            key: SigningKey, prefixes: tuple[str, ...], carrier_id: str = TEST_CARRIER
        ) -> CarrierKey:
            return CarrierKey(
                key.public,
                carrier_id,
                now - timedelta(days=1),
                now + timedelta(days=30),
                prefixes,
            )

        keys = {
            self.good.key_id: entry(self.good, ("+86",)),
            self.narrow.key_id: entry(self.narrow, (NARROW_PREFIX,)),
            self.doomed.key_id: entry(self.doomed, ("+86",)),
            self.other.key_id: entry(self.other, ("+86",), OTHER_CARRIER),
        }
        revoked = frozenset({self.doomed.key_id}) if revoke_doomed else frozenset()
        # The kit's carrier holds the whole +86 range: every number the kit seeds is its own.
        return TrustBundle(
            version, now, now + timedelta(days=1), keys, revoked, {"+86": TEST_CARRIER}
        )


class _TrustServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        self.bundle: Envelope | None = None
        self.fetches = 0

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        if self.bundle is None:
            raise Unavailable("KIT_NOT_READY", "the conformance kit has no bundle yet")
        self.fetches += 1
        return gateway_pb2.GetTrustBundleResponse(bundle=self.bundle.to_proto())


@dataclass
class KitGateway:
    server: ServerHandle
    servicer: _TrustServicer
    root_signers: list[SigningKey]

    @property
    def port(self) -> int:
        return self.server.port

    def publish(self, bundle: TrustBundle) -> Envelope:
        """Serve ``bundle``, signed by every root key, from now on."""
        envelope = sign_bundle(bundle, self.root_signers)
        self.servicer.bundle = envelope
        return envelope

    def serve_envelope(self, envelope: Envelope) -> None:
        self.servicer.bundle = envelope

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_kit_gateway(pki_dir: Path, listen: str) -> KitGateway:
    """Serve GatewayService.GetTrustBundle on ``listen`` as the gateway (mTLS)."""
    signers = pki.load_root_signers(pki_dir)
    servicer = _TrustServicer()  # type: ignore[abstract]  # other RPCs: UNIMPLEMENTED

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        return SERVICE

    server = await start_server(
        register=[register],
        credentials=pki.server_credentials(pki_dir, pki.GATEWAY),
        policy=POLICY,
        bind=listen,
    )
    return KitGateway(server, servicer, signers)
