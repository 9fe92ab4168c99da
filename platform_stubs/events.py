"""A platform's side of lifecycle events: verify each signed batch, apply each event once.

Push (``DeliverEvents``) and poll (:class:`EventPuller`) share one :class:`EventApplier`, which
handles batches in seq order and says how far the platform may acknowledge:

* A batch that verifies and keeps the authority rules is applied, each event once by its
  event_id, and acknowledged.
* A batch refused for a reason that may be this platform's own staleness
  (:mod:`numfed.staleness`: a key from a newer trust bundle, say) is judged again after
  :meth:`TrustClient.refresh_if_behind`. If it still cannot be judged, it is *held*: neither it
  nor anything after it is acknowledged, so the gateway sends it again after a backoff. After
  ``retry_limit`` attempts spread over at least ``retry_window`` seconds it is set aside on the
  dead-letter list and acknowledged, so one batch cannot block the stream for ever.
* A batch refused for a final reason (a bad signature, a revoked key, ``NOT_PORT_PARTY``…) is
  set aside at once and acknowledged: it never will verify.

Nothing is dropped silently: every batch set aside is on the list with its reason, for the
platform's operator to see and replay (``numfed platform dead-letters`` / ``replay``, served by
:mod:`platform_stubs.admin`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from numfed import pki
from numfed.config import Limits
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, NotFound, NumfedError
from numfed.events import VerifiedBatch, verify_event_batch
from numfed.identity import PeerId
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.portability import NumberPlan
from numfed.staleness import may_be_stale
from numfed.trust import TrustedState
from numfed.v1 import claim_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc
from platform_stubs.store import DeadLetter, PlatformStore
from platform_stubs.trustclient import RECONNECT, TrustClient

__all__ = ["EVENT_RETRY_LIMIT", "EVENT_RETRY_WINDOW", "EventApplier", "EventPuller", "Replayed"]

log = logging.getLogger(__name__)

EVENT_RETRY_LIMIT = 8
"""Attempts at a batch that cannot be judged yet before it may be set aside."""
EVENT_RETRY_WINDOW = 300.0
"""Seconds a batch that cannot be judged yet is held at least before it may be set aside."""


@dataclass
class _Held:
    """A batch this platform cannot judge yet: since when, how often tried, and why."""

    first_seen: datetime
    attempts: int = 0


@dataclass(frozen=True)
class Replayed:
    """One dead letter replayed: ``error`` is None when it was applied (and left the list)."""

    seq: int
    error: NumfedError | None


class EventApplier:
    def __init__(
        self,
        *,
        trust: TrustClient,
        store: PlatformStore,
        retry_limit: int = EVENT_RETRY_LIMIT,
        retry_window: float = EVENT_RETRY_WINDOW,
    ) -> None:
        self._trust = trust
        self._store = store
        self._retry_limit = retry_limit
        self._retry_window = timedelta(seconds=retry_window)
        self._held: dict[int, _Held] = {}
        """The batch held now, by seq: at most one, since delivery stops at it (in memory: a
        restart counts its attempts afresh)."""
        self._lock = asyncio.Lock()
        """One batch at a time, in order: deliveries and replays never interleave."""
        self.refused: list[int] = []
        """Sequence numbers of batches refused for a final reason (they are dead letters)."""

    @property
    def held(self) -> dict[int, int]:
        """seq -> attempts, for the batches held now (not acknowledged, tried again later)."""
        return {seq: h.attempts for seq, h in self._held.items()}

    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        """Handle batches in order; return the highest seq that may be acknowledged (0: none
        of these). Handling stops at the first batch held: it and every batch after it stay
        unacknowledged.

        Rule PLAT-EVT-5.
        """
        seqs = [b.seq for b in batches]
        if seqs != sorted(set(seqs)):
            raise InvalidArgument("BATCHES_OUT_OF_ORDER", "batches must come in increasing seq")
        async with self._lock:
            dead = await self._store.run(self._store.dead_letter_seqs, seqs)
            last = 0
            for b in batches:
                if not await self._handle(b.seq, b.batch, listed=b.seq in dead):
                    break
                last = b.seq
            return last

    async def replay(self, seqs: Sequence[int] | None) -> list[Replayed]:
        """Verify and apply dead letters again (those of ``seqs``, or all of them), oldest
        first, with the current trust bundle (refreshed first if behind).

        A batch applied leaves the list; one refused again stays with its reason updated and
        one attempt more. Applying is idempotent by event_id, and a batch is judged against
        the port state of now, not of its place in the log (docs/operations.md). A seq not
        on the list is NOT_FOUND ``DEAD_LETTER_NOT_FOUND`` and nothing is replayed.
        """
        async with self._lock:
            letters = await self._store.run(self._store.dead_letters, seqs)
            if seqs is not None:
                missing = sorted(set(seqs) - {d.seq for d in letters})
                if missing:
                    raise NotFound(
                        "DEAD_LETTER_NOT_FOUND",
                        f"no dead letter with seq {missing[0]}",
                        metadata={"seq": str(missing[0])},
                    )
            if letters:
                await self._trust.refresh_if_behind()
            out = []
            for d in letters:
                err = await self._try(d.seq, claim_pb2.Envelope.FromString(d.envelope))
                if err is None:
                    await self._store.run(self._store.take_back, d.seq)
                    log.info("dead letter %d replayed and applied", d.seq)
                else:
                    now = datetime.now(UTC)
                    await self._store.run(
                        self._store.set_aside, d.seq, d.envelope, err.reason, 1, now, now
                    )
                out.append(Replayed(d.seq, err))
            return out

    async def dead_letters(self) -> list[DeadLetter]:
        return await self._store.run(self._store.dead_letters)

    async def _handle(self, seq: int, batch: claim_pb2.Envelope, *, listed: bool) -> bool:
        """Try one batch (again, after a refresh, when the refusal may be staleness); return
        whether the platform may acknowledge it.

        Rule PLAT-EVT-6.
        """
        err = await self._try(seq, batch)
        if may_be_stale(err):
            await self._trust.refresh_if_behind()
            err = await self._try(seq, batch)
        now = datetime.now(UTC)
        if err is None:
            self._held.pop(seq, None)
            if listed:  # delivered again (a lost acknowledgement) and now judged: applied
                await self._store.run(self._store.take_back, seq)
            return True
        if listed:  # already set aside: count the try, keep it there, move on
            await self._set_aside(seq, batch, err, 1, now, now)
            return True
        held = self._held.get(seq) or _Held(first_seen=now)
        held.attempts += 1
        self._held = {seq: held}  # any other entry is of a batch no longer in the way
        if not may_be_stale(err):
            log.warning("event batch %d refused: %s %s", seq, err.reason, err.message)
            self.refused.append(seq)
        elif held.attempts < self._retry_limit or now - held.first_seen < self._retry_window:
            log.info(
                "event batch %d cannot be judged yet (%s, attempt %d); holding it",
                seq,
                err.reason,
                held.attempts,
            )
            return False
        else:
            log.warning(
                "event batch %d still cannot be judged after %d attempts (%s); setting it aside",
                seq,
                held.attempts,
                err.reason,
            )
        del self._held[seq]
        await self._set_aside(seq, batch, err, held.attempts, held.first_seen, now)
        return True

    async def _set_aside(
        self,
        seq: int,
        batch: claim_pb2.Envelope,
        err: NumfedError,
        attempts: int,
        first_seen: datetime,
        now: datetime,
    ) -> None:
        raw = batch.SerializeToString(deterministic=True)
        await self._store.run(
            self._store.set_aside, seq, raw, err.reason, attempts, first_seen, now
        )

    async def _try(self, seq: int, batch: claim_pb2.Envelope) -> NumfedError | None:
        """Verify one signed batch with the trust held now, judge it against the ports this
        platform has applied, and apply it; the refusal, if any."""
        now = datetime.now(UTC)
        try:
            trust = self._trust.trusted()
            verified = self._verify(batch, trust, now)
            await self._store.run(
                self._store.apply_events,
                seq,
                verified.carrier_id,
                verified.events,
                now,
                NumberPlan.from_bundle(trust.bundle),
            )
        except NumfedError as err:
            return err
        return None

    def _verify(
        self, batch: claim_pb2.Envelope, trust: TrustedState, now: datetime
    ) -> VerifiedBatch:
        """Verify one signed batch: its signature, and that the key belongs to the carrier the
        batch names (PLAT-CLAIM-KEY-CARRIER), covers its numbers and was valid when it was
        signed. It comes from the gateway's log, where it may have waited while the platform
        was away: its age is no reason to refuse it (``from_log``)."""
        return verify_event_batch(Envelope.from_proto(batch), trust, now=now, from_log=True)


class EventPuller:
    """Poll-mode delivery for a platform that accepts no inbound event calls.

    It acknowledges only what the applier says it may; while a batch is held it asks again after
    a backoff (doubling up to ``max_backoff`` seconds) rather than at once. Its channel
    reconnects within 2 s of a restarted gateway coming back, as the trust client's does.
    """

    def __init__(
        self,
        *,
        applier: EventApplier,
        gateway: str,
        pki_dir: Path,
        peer: PeerId,
        max_backoff: float = 30.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        limits: Limits | None = None,
    ) -> None:
        self._applier = applier
        self._channel = pki.secure_channel(
            gateway,
            pki_dir,
            peer,
            server=pki.GATEWAY,
            options=RECONNECT,
            interceptors=interceptors,
            limits=limits,
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._max_backoff = max_backoff
        self.acked = 0
        self._failing = RetrySummary(
            log, "pulling events from the gateway failing", "pulling events from the gateway again"
        )

    async def run(self, idle: float = 0.2) -> None:
        backoff = idle
        while True:
            delay = idle
            try:
                answer = await self._stub.PullEvents(
                    gateway_pb2.PullEventsRequest(ack_through_seq=self.acked, max_batches=20),
                    timeout=5,
                )
                self._failing.succeeded()
                if answer.batches:
                    through = await self._applier.apply(answer.batches)
                    if through > self.acked:
                        self.acked = through
                        backoff = idle
                        continue
                    delay = backoff  # the first batch is held: ask again later
                    backoff = min(backoff * 2, self._max_backoff)
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                self._failing.failed(failure_reason(exc))
            except Exception as exc:  # e.g. the platform's database: log, and try again
                self._failing.failed(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._channel.close()
