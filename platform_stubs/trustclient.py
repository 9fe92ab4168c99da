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
from numfed.trust import TrustedState
from numfed.trustfiles import read_roots
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["TrustClient"]

log = logging.getLogger(__name__)

RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
"""A platform started before its gateway reconnects within 2 s of the gateway coming up (gRPC's
default backoff grows to two minutes)."""
REFRESH_MIN_INTERVAL = 1.0
"""Seconds between two fetches on demand (:meth:`TrustClient.refresh_if_behind`)."""


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
        self._refreshing = asyncio.Lock()
        self._last_on_demand = float("-inf")

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
        self.state.update(
            [Envelope.from_proto(r) for r in answer.roots],
            Envelope.from_proto(answer.bundle),
            now=datetime.now(UTC),
        )
        self.ready.set()

    def _held(self) -> tuple[int, int]:
        """(root version, bundle version) held now; bundle version 0 when none is held."""
        bundle = self.state.bundle
        return self.state.root.version, bundle.version if bundle is not None else 0

    async def refresh_if_behind(self, hint: tuple[int, int] | None = None) -> bool:
        """Fetch the bundle now if this platform may be behind; return whether the held bundle
        (or root) version changed.

        Called when a verification fails for a reason that may be staleness
        (:mod:`numfed.staleness`). ``hint`` is a (root version, bundle version) the caller knows
        exists: when this client holds at least that, nothing is fetched. Single flight: callers
        that arrive while a fetch is under way wait for it and share its result. At most one
        fetch per ``REFRESH_MIN_INTERVAL`` seconds; a call within it fetches nothing. A failed
        fetch is logged and counts as no change.
        """
        before = self._held()
        if hint is not None and self.state.bundle is not None and before >= hint:
            return False
        loop = asyncio.get_running_loop()
        async with self._refreshing:
            if self._held() != before:
                return True  # another caller's fetch, while we waited, brought a newer bundle
            if loop.time() - self._last_on_demand < REFRESH_MIN_INTERVAL:
                return False
            self._last_on_demand = loop.time()
            try:
                await self.refresh()
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                log.info("trust bundle refresh on demand failed (%s)", exc)
        return self._held() != before

    async def run(self, every: float = 60.0) -> None:
        """Fetch at once, retrying until the gateway answers; then refresh every ``every`` s."""
        delay = 0.1
        while True:
            try:
                await self.refresh()
                delay = every
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                log.info("trust bundle fetch failed (%s); retrying", exc)
                delay = min(max(delay * 2, 0.1), 5.0) if not self.ready.is_set() else every
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._channel.close()
