"""Push delivery of lifecycle events: one loop per push-mode platform.

Each loop sends the batches after the platform's acknowledged position, several per call, and
moves the position to what the platform acknowledges, never beyond what that call carried (an
answer acknowledging more moves nothing and the batches are sent again). A platform that fails
or does not answer gets the same batches again after a backoff; it applies each event once by
its event_id.

An answer may also acknowledge less than the call carried: the platform holds a batch it cannot
judge yet (a key from a trust bundle newer than its own, say; numfed/staleness.py) and sets it
aside itself after its bounded retries. The position moves to what was acknowledged and the rest
goes again after the same backoff. Such an answer is the platform's word, not a failure of the
call: pushes never pass through the platform's circuit breaker, so a held batch never opens it
and never slows the platform's queries and releases. Pushes do wait while the platform's health
reports it cannot serve (``PlatformLink``), as its queries and releases do.

With several replicas, each loop first leases the platform's cursor (renewing it every round):
one replica pushes to a platform at a time, and when it dies another takes over once the lease
runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from gateway.audit import AuditRecord
from gateway.backoff import backoff_seconds
from gateway.eventlog import EventLog
from gateway.platforms import PlatformLink, PlatformNotServing
from gateway.results import now_us
from gateway.store import Store
from numfed.config import Limits
from numfed.v1 import claim_pb2, events_pb2, platform_pb2

__all__ = ["EventPusher"]

log = logging.getLogger(__name__)
BATCHES_PER_CALL = 20


class EventPusher:
    def __init__(
        self,
        *,
        link: PlatformLink,
        events: EventLog,
        store: Store,
        limits: Limits,
        owner: str,
        audit: Callable[[AuditRecord], None] = lambda _record: None,
    ) -> None:
        self._owner = owner
        self._audit = audit
        self._link = link
        self._events = events
        self._store = store
        self._limits = limits
        self._wake = asyncio.Event()
        self._rng = random.Random()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Push until cancelled. A database error or anything else unexpected is logged and the
        push starts over (the lease and cursor are read again): one failure never ends delivery
        to a platform for the life of the process."""
        while True:
            try:
                await self._push()
            except Exception as exc:
                log.warning(
                    "pushing events to %s failed (%s: %s); starting over",
                    self._link.platform_id,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(1.0)

    async def _push(self) -> None:
        failures = 0
        platform = self._link.platform_id
        lease_us = int(self._limits.lease_seconds * 1e6)
        renew_us = lease_us // 3
        renewed_us = 0  # when the lease was last taken or renewed (0: not held)
        cursor = 0
        while True:
            self._wake.clear()
            if now_us() - renewed_us >= renew_us:
                held = await self._store.run(
                    self._events.lease, platform, self._owner, now_us(), lease_us
                )
                if not held:  # another replica pushes to this platform; ready to take over
                    renewed_us = 0
                    await asyncio.sleep(self._limits.lease_seconds / 3)
                    continue
                if renewed_us == 0:  # newly ours: the cursor may have moved meanwhile
                    cursor = await self._store.run(self._events.cursor, platform)
                renewed_us = now_us()
            if not await self._link.until_callable(1.0):
                continue  # it reports it cannot serve (no verified bundle): events wait too
            # While we hold the lease nobody else moves this cursor, so ours is current.
            rows = await self._store.run(self._events.after, cursor, BATCHES_PER_CALL)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            try:
                self._link.check_serving()  # its health may have changed during the read
            except PlatformNotServing:
                continue
            request = platform_pb2.DeliverEventsRequest(
                batches=[
                    events_pb2.SequencedBatch(seq=s, batch=claim_pb2.Envelope.FromString(raw))
                    for s, raw in rows
                ]
            )
            sent = rows[-1][0]
            try:
                answer = await self._link.stub.DeliverEvents(
                    request,
                    timeout=self._limits.platform_call_timeout,
                    metadata=self._link.metadata(),
                )
                ack = answer.ack_through_seq
                if ack > sent:
                    # Acknowledging batches this call did not carry is a broken answer: what
                    # was sent counts as delivered, the cursor stays, and the batches go again.
                    await self._store.run(
                        self._events.ack, platform, cursor, now_us(), delivered=sent
                    )
                    self._audit(
                        AuditRecord(
                            now_us(),
                            "EVENT_DELIVERY",
                            f"platform:{platform}",
                            outcome="ACK_BEYOND_DELIVERED",
                            detail={"ack_through_seq": str(ack), "sent_through_seq": str(sent)},
                        )
                    )
                    log.warning(
                        "%s acknowledged through %d, but was sent batches through %d only",
                        platform,
                        ack,
                        sent,
                    )
                    ack = cursor
                else:
                    await self._store.run(self._events.ack, platform, ack, now_us(), delivered=sent)
                    if ack < sent:
                        log.info(
                            "%s acknowledged through %d of %d sent (holding the next batch); "
                            "will resend",
                            platform,
                            max(ack, cursor),
                            sent,
                        )
                before, cursor = cursor, max(cursor, ack)
                if ack > before:
                    self._audit(
                        AuditRecord(
                            now_us(),
                            "EVENT_DELIVERY",
                            f"platform:{platform}",
                            outcome="ACKNOWLEDGED",
                            detail={"through_seq": str(ack), "mode": "push"},
                        )
                    )
                failures = 0 if ack > before else failures + 1
            except grpc.aio.AioRpcError as exc:
                failures += 1
                log.info("event delivery to %s failed (%s); will resend", platform, exc.code().name)
            if failures:
                delay = backoff_seconds(
                    failures - 1,
                    initial=self._limits.retry_initial_backoff,
                    maximum=self._limits.retry_max_backoff,
                    multiplier=self._limits.retry_multiplier,
                    rng=self._rng,
                )
                await asyncio.sleep(delay)
