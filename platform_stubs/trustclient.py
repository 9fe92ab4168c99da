"""A platform's view of the trust bundle: pinned root on disk, bundle fetched from the gateway.

The gateway only carries the signed metadata; the platform verifies it against the root it
pinned itself, so a compromised gateway cannot slip in a carrier key.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc

from numfed import pki
from numfed.envelope import Envelope
from numfed.errors import NumfedError, Unavailable
from numfed.identity import PeerId
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.trust import TrustedState
from numfed.trustfiles import read_roots
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["TrustClient"]

log = logging.getLogger(__name__)

RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
"""A platform started before its gateway reconnects within 2 s of the gateway coming up (gRPC's
default backoff grows to two minutes)."""


class TrustClient:
    def __init__(self, *, trust_dir: Path, pki_dir: Path, peer: PeerId, gateway: str) -> None:
        roots = read_roots(trust_dir)
        if not roots:
            raise Unavailable("NO_PINNED_ROOT", f"{trust_dir} has no root-1.pb to pin")
        self.state = TrustedState(Envelope.from_proto(roots[0]), now=datetime.now(UTC))
        self.ready = asyncio.Event()
        self._channel = pki.secure_channel(
            gateway, pki_dir, peer, server=pki.GATEWAY, options=RECONNECT
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._unreachable = RetrySummary(
            log,
            "gateway not reachable for the trust bundle",
            "gateway reachable again for the trust bundle",
            level=logging.INFO,
        )

    def trusted(self) -> TrustedState:
        """The state to verify with; UNAVAILABLE until a bundle has been accepted."""
        if not self.ready.is_set():
            raise Unavailable("NO_TRUST_BUNDLE", "the platform has no trust bundle yet")
        return self.state

    async def refresh(self, *, wait_for_ready: bool = False) -> None:
        """Fetch and verify the bundle now (``wait_for_ready``: wait up to the call's 5 s for
        the gateway to come up instead of failing at once)."""
        answer = await self._stub.GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(known_root_version=self.state.root.version),
            timeout=5,
            wait_for_ready=wait_for_ready,
        )
        held = self.state.bundle.version if self.state.bundle is not None else None
        self.state.update(
            [Envelope.from_proto(r) for r in answer.roots],
            Envelope.from_proto(answer.bundle),
            now=datetime.now(UTC),
        )
        bundle = self.state.bundle
        if bundle is not None and bundle.version != held:
            log.info(
                "trust bundle v%d accepted from the gateway (root v%d; expires %s)",
                bundle.version,
                self.state.root.version,
                bundle.expires_at.isoformat(timespec="seconds"),
            )
        self.ready.set()

    async def run(self, every: float = 60.0) -> None:
        """Fetch at once, retrying until the gateway answers; then refresh every ``every`` s."""
        delay = 0.1
        while True:
            try:
                await self.refresh()
                self._unreachable.succeeded()
                delay = every
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                self._unreachable.failed(failure_reason(exc))
                delay = min(max(delay * 2, 0.1), 5.0) if not self.ready.is_set() else every
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._channel.close()
