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

An idle loop reads the log only when it has grown past the loop's cursor: the replica's loops
share one :class:`LogHead`, read once a second (another replica may have appended) and at once
after this replica appends, so that 1,000 idle platforms cost one query a second, not 1,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable

import grpc

from gateway.audit import AuditRecord
from gateway.backoff import backoff_seconds
from gateway.eventlog import EventLog
from gateway.platforms import PlatformLink, PlatformNotServing
from gateway.results import now_us
from gateway.store import Store
from numfed.config import Limits
from numfed.db import run_to_end
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.v1 import claim_pb2, events_pb2, platform_pb2

__all__ = ["EventPusher", "LogHead"]

log = logging.getLogger(__name__)
BATCHES_PER_CALL = 20


class LogHead:
    """The event log's last seq as this replica last read it, shared by its pushers: read again
    at most every ``interval`` seconds, or at the next ask after :meth:`changed`."""

    def __init__(self, store: Store, events: EventLog, interval: float = 1.0) -> None:
        self._store = store
        self._events = events
        self._interval = interval
        self._seq = 0
        self._fresh_until = float("-inf")
        self._changes = 0
        self._reading: tuple[int, asyncio.Future[int]] | None = None

    def changed(self) -> None:
        """This replica appended: asks from now on read the head again."""
        self._changes += 1
        self._fresh_until = float("-inf")

    async def seq(self) -> int:
        if asyncio.get_running_loop().time() < self._fresh_until:
            return self._seq
        # One read for every pusher asking meanwhile, unless it began before a change.
        if self._reading is None or self._reading[0] != self._changes:
            self._reading = (self._changes, asyncio.ensure_future(self._read(self._changes)))
        return await asyncio.shield(self._reading[1])

    async def _read(self, changes: int) -> int:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            seq = await self._store.run(self._events.head)
        finally:  # a failed read is not shared with the asks after it
            if self._reading is not None and self._reading[0] == changes:
                self._reading = None
        self._seq = max(self._seq, seq)
        if changes == self._changes:  # nothing appended here since the read began
            self._fresh_until = started + self._interval
        return self._seq


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
        audit_room: Callable[[], Awaitable[None]] | None = None,
        head: LogHead | None = None,
    ) -> None:
        self._head = head
        """Shared with the replica's other pushers; None: read the log every round."""
        self._owner = owner
        self._audit = audit
        self._audit_room = audit_room
        self._link = link
        self._events = events
        self._store = store
        self._limits = limits
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._failing = RetrySummary(
            log,
            f"event delivery to platform {link.platform_id} failing",
            f"event delivery to platform {link.platform_id} working again",
        )
        self._paused = RetrySummary(
            log,
            f"event delivery to {link.platform_id} paused",
            f"event delivery to {link.platform_id} going again",
        )
        """The push loop starting over (the database refusing, say): its first line at once."""

    def wake(self) -> None:
        self._wake.set()

    async def _record_answer(self, platform: str, cursor: int, ack: int, sent: int) -> int:
        """Store what a platform acknowledged of the batches through ``sent`` and audit it;
        return the seq its cursor moves to (``cursor`` if it does not move)."""
        if ack > sent:
            # Acknowledging batches this call did not carry is a broken answer: what was sent
            # counts as delivered, the cursor stays, and the batches go again.
            await self._store.run(self._events.ack, platform, cursor, now_us(), delivered=sent)
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
            return cursor
        await self._store.run(self._events.ack, platform, ack, now_us(), delivered=sent)
        if ack < sent:
            log.info(
                "%s acknowledged through %d of %d sent (holding the next batch); will resend",
                platform,
                max(ack, cursor),
                sent,
            )
        if ack > cursor:
            self._audit(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    f"platform:{platform}",
                    outcome="ACKNOWLEDGED",
                    detail={"through_seq": str(ack), "mode": "push"},
                )
            )
        return ack

    async def run(self) -> None:
        """Push until cancelled. When the database refuses (UNAVAILABLE), or anything else
        unexpected fails, start over after a backoff: the lease is taken anew and the cursor read
        again, so nothing is skipped, and one failure never ends delivery to a platform. The
        pauses are logged as a summary (:class:`RetrySummary`), not one line per restart."""
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._push()
            except Exception as exc:
                if loop.time() - started > self._limits.lease_seconds:
                    failures = 0  # it had been pushing for a while: a new outage
                log.debug("pushing events failed; starting over", exc_info=exc)
                self._paused.failed(failure_reason(exc))
                delay = backoff_seconds(
                    failures,
                    initial=self._limits.retry_initial_backoff,
                    maximum=self._limits.retry_max_backoff,
                    multiplier=self._limits.retry_multiplier,
                    rng=self._rng,
                )
                failures += 1
                await asyncio.sleep(delay)

    async def _push(self) -> None:
        failures = 0
        platform = self._link.platform_id
        lease_us = int(self._limits.lease_seconds * 1e6)
        renew_us = lease_us // 3
        renewed_us = 0  # when the lease was last taken or renewed (0: not held)
        cursor = 0
        while True:
            if self._audit_room is not None:
                await self._audit_room()  # no deliveries the audit log cannot take
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
            if self._head is not None and await self._head.seq() <= cursor:
                rows = []  # nothing new in the log (as of a read at most a second old)
            else:
                rows = await self._store.run(self._events.after, cursor, BATCHES_PER_CALL)
            self._paused.succeeded()  # the database answers again
            if not rows:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
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
                answer = await self._link.call(
                    "DeliverEvents",
                    functools.partial(
                        self._link.stub.DeliverEvents,
                        request,
                        timeout=self._limits.platform_call_timeout,
                    ),
                )
                # Stored and audited as one piece: a stop waits for it, never cuts it in two.
                ack = await run_to_end(
                    self._record_answer(platform, cursor, answer.ack_through_seq, sent)
                )
                before, cursor = cursor, max(cursor, ack)
                failures = 0 if ack > before else failures + 1
            except grpc.aio.AioRpcError as exc:
                failures += 1
                self._link.note_error(failure_reason(exc))
                self._failing.failed(failure_reason(exc))
            else:
                self._failing.succeeded()
            if failures:
                delay = backoff_seconds(
                    failures - 1,
                    initial=self._limits.retry_initial_backoff,
                    maximum=self._limits.retry_max_backoff,
                    multiplier=self._limits.retry_multiplier,
                    rng=self._rng,
                )
                await asyncio.sleep(delay)
