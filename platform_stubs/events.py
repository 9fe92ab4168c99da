"""A platform's side of lifecycle events: verify each signed batch, apply each event once.

Push (``DeliverEvents``) and poll (:class:`EventPuller`) share one :class:`EventApplier`. A
batch whose signature does not verify is skipped for good (it never will), and the skip is
logged; every other batch is applied in order, each event once by its event_id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from numfed import pki
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, NumfedError
from numfed.events import VerifiedBatch, verify_event_batch
from numfed.identity import PeerId
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.portability import NumberPlan
from numfed.trust import TrustedState
from numfed.v1 import claim_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc
from platform_stubs.store import PlatformStore
from platform_stubs.trustclient import TrustClient

__all__ = ["EventApplier", "EventPuller"]

log = logging.getLogger(__name__)


class EventApplier:
    def __init__(self, *, trust: TrustClient, store: PlatformStore) -> None:
        self._trust = trust
        self._store = store
        self.refused: list[int] = []
        """Sequence numbers of batches that did not verify."""

    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        """Apply batches in order; return the highest seq handled (0 when none)."""
        seqs = [b.seq for b in batches]
        if seqs != sorted(set(seqs)):
            raise InvalidArgument("BATCHES_OUT_OF_ORDER", "batches must come in increasing seq")
        trust = self._trust.trusted()
        plan = NumberPlan.from_bundle(trust.bundle)
        last = 0
        for b in batches:
            now = datetime.now(UTC)
            try:
                verified = self._verify(b.batch, trust, now)
                await self._store.run(
                    self._store.apply_events,
                    b.seq,
                    verified.carrier_id,
                    verified.events,
                    now,
                    plan,
                )
            except NumfedError as err:
                log.warning("event batch %d refused: %s %s", b.seq, err.reason, err.message)
                self.refused.append(b.seq)
            last = b.seq
        return last

    def _verify(
        self, batch: claim_pb2.Envelope, trust: TrustedState, now: datetime
    ) -> VerifiedBatch:
        """Verify one signed batch: its signature, and that the key belongs to the carrier the
        batch names (PLAT-CLAIM-KEY-CARRIER), covers its numbers and was valid when it was
        signed. It comes from the gateway's log, where it may have waited while the platform
        was away: its age is no reason to refuse it (``from_log``)."""
        return verify_event_batch(Envelope.from_proto(batch), trust, now=now, from_log=True)


class EventPuller:
    """Poll-mode delivery for a platform that accepts no inbound event calls."""

    def __init__(self, *, applier: EventApplier, gateway: str, pki_dir: Path, peer: PeerId) -> None:
        self._applier = applier
        self._channel = pki.secure_channel(gateway, pki_dir, peer, server=pki.GATEWAY)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self.acked = 0
        self._failing = RetrySummary(
            log, "pulling events from the gateway failing", "pulling events from the gateway again"
        )

    async def run(self, idle: float = 0.2) -> None:
        while True:
            try:
                answer = await self._stub.PullEvents(
                    gateway_pb2.PullEventsRequest(ack_through_seq=self.acked, max_batches=20),
                    timeout=5,
                )
                self._failing.succeeded()
                if answer.batches:
                    self.acked = max(self.acked, await self._applier.apply(answer.batches))
                    continue
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                self._failing.failed(failure_reason(exc))
            except Exception as exc:  # e.g. the platform's database: log, and try again
                self._failing.failed(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(idle)

    async def close(self) -> None:
        await self._channel.close()
