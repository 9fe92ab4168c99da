"""The kit's stand-in gateway: it serves the trust bundle the kit chooses, over mTLS.

A platform fetches its bundle from the gateway it is configured with; in conformance mode that
address is the kit's, so the kit can publish a bundle with test keys (revoked, out of range)
and try a rollback. The kit signs those bundles with the federation root keys of the test PKI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from numfed import pki
from numfed.envelope import Envelope, SigningKey
from numfed.identity import Role
from numfed.rpc import ServerHandle, start_server
from numfed.trust import CarrierKey, Root, TrustBundle, sign_bundle
from numfed.trustfiles import read_bundle, read_roots
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc, trust_pb2

__all__ = ["KitGateway", "TestKeys", "start_kit_gateway"]

GATEWAY_SERVICE = "numfed.v1.GatewayService"
TEST_PREFIX = "+86"
OUT_OF_RANGE_PREFIX = "+1"


@dataclass
class TestKeys:
    """Carrier signing keys the kit signs with: the test PKI's own, and two of its making."""

    carrier_id: str
    good: SigningKey
    revoked: SigningKey = field(default_factory=SigningKey.generate)
    narrow: SigningKey = field(default_factory=SigningKey.generate)
    """Valid, but scoped to OUT_OF_RANGE_PREFIX only."""
    unknown: SigningKey = field(default_factory=SigningKey.generate)
    """In no bundle at all."""


class KitGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers GetTrustBundle with the trust directory's roots and the bundle set last."""

    def __init__(self, trust_dir: Path) -> None:
        self.trust_dir = trust_dir
        self.bundle: claim_pb2.Envelope = read_bundle(trust_dir)

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        roots = read_roots(self.trust_dir)[request.known_root_version :]
        return gateway_pb2.GetTrustBundleResponse(roots=roots, bundle=self.bundle)

    def root_signers(self, pki_dir: Path) -> list[SigningKey]:
        """The test PKI's root keys that the newest root names, as many as its threshold."""
        newest = Envelope.from_proto(read_roots(self.trust_dir)[-1])
        root = Root.from_proto(trust_pb2.RootMetadata.FromString(newest.payload))
        signers = [s for s in pki.load_root_signers(pki_dir) if s.key_id in root.keys]
        return signers[: root.threshold]

    def publish(
        self, *, version: int, keys: TestKeys, pki_dir: Path, now: datetime, carriers: list[str]
    ) -> None:
        """Serve bundle ``version``: every carrier's PKI key plus the kit's test keys."""
        window = {"not_before": now - timedelta(days=1), "not_after": now + timedelta(days=30)}
        entries = [
            CarrierKey(
                key=pki.load_carrier_signer(pki_dir, c).public,
                carrier_id=c,
                number_prefixes=(TEST_PREFIX,),
                **window,
            )
            for c in carriers
        ]
        entries += [
            CarrierKey(
                key=keys.revoked.public,
                carrier_id=keys.carrier_id,
                number_prefixes=(TEST_PREFIX,),
                **window,
            ),
            CarrierKey(
                key=keys.narrow.public,
                carrier_id=keys.carrier_id,
                number_prefixes=(OUT_OF_RANGE_PREFIX,),
                **window,
            ),
        ]
        bundle = TrustBundle(
            version=version,
            issued_at=now,
            expires_at=now + timedelta(days=7),
            carrier_keys={k.key.key_id: k for k in entries},
            revoked_key_ids=frozenset({keys.revoked.key_id}),
        )
        self.bundle = sign_bundle(bundle, self.root_signers(pki_dir)).to_proto()


async def start_kit_gateway(
    trust_dir: Path, pki_dir: Path, bind: str
) -> tuple[KitGateway, ServerHandle]:
    """Listen on ``bind`` with the gateway's certificate; members may fetch the bundle."""
    kit = KitGateway(trust_dir)  # type: ignore[abstract]  # the rest: UNIMPLEMENTED

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(kit, server)
        return GATEWAY_SERVICE

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(pki_dir, pki.GATEWAY),
        policy={
            f"/{GATEWAY_SERVICE}/GetTrustBundle": frozenset({Role.PLATFORM, Role.CARRIER}),
        },
        bind=bind,
    )
    return kit, handle
