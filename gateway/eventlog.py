"""The event log: each signed batch stored once; one acknowledged position per platform.

Storage grows with batches + platforms, never batches x platforms. A platform's cursor only
moves forward, and only on its acknowledgement, so delivery is at-least-once and in log order
(hence in order per number). Beside the cursor the log keeps the highest seq delivered to the
platform (what PullEvents returned, or what an answered DeliverEvents call carried): a
platform can acknowledge only batches it was delivered, never ones it has not seen.

With several replicas on one PostgreSQL, appends take an advisory lock so that sequence numbers
commit in order (a reader never sees seq 8 before seq 7 and skips 7 for good), and pushing to a
platform is leased: one replica at a time pushes to it, and another takes over when that
replica's lease runs out.

What one delivery carries is bounded by size as well as by count (:data:`MAX_DELIVERY_BYTES`),
so large batches never make a delivery too large to send: each goes, alone if need be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.audit import AuditRecord
from gateway.audit import append as append_audit
from gateway.schema import event_batches, event_cursors
from numfed.db import serialize
from numfed.envelope import MAX_ENVELOPE_BYTES
from numfed.errors import InvalidArgument

__all__ = ["MAX_DELIVERY_BYTES", "AuditFor", "Authorize", "EventLog"]

MAX_DELIVERY_BYTES = 48 * MAX_ENVELOPE_BYTES
"""Most bytes of signed batches in one delivery (a DeliverEvents call or a PullEvents answer):
3 MiB, well under the 4 MiB message cap. A signed batch is at most ``MAX_ENVELOPE_BYTES`` (64
KiB), so 100 of them (PullEvents' largest ``max_batches``) would not fit; any one always does."""

Authorize = Callable[[sa.Connection], Callable[[int], None] | None]
"""Judges a batch inside the append transaction, under the append lock: raises to refuse it,
returns None to append nothing (it would change nothing), or a function that writes what the
batch changes once its seq is known."""

AuditFor = Callable[[int], Sequence[AuditRecord]]
"""The audit records of a batch, given its seq; appended in the batch's own transaction."""

APPEND_LOCK = 0x6E756D66_0003
"""Advisory lock key for appending batches (PostgreSQL)."""


class EventLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @overload
    def append(
        self,
        carrier_id: str,
        envelope: bytes,
        events: int,
        now_us: int,
        *,
        audit: AuditFor | None = None,
    ) -> int: ...

    @overload
    def append(
        self,
        carrier_id: str,
        envelope: bytes,
        events: int,
        now_us: int,
        authorize: Authorize,
        *,
        audit: AuditFor | None = None,
    ) -> int | None: ...

    def append(
        self,
        carrier_id: str,
        envelope: bytes,
        events: int,
        now_us: int,
        authorize: Authorize | None = None,
        *,
        audit: AuditFor | None = None,
    ) -> int | None:
        """Append one signed batch; return its seq (None when ``authorize`` declined it).

        ``authorize`` runs first in the same transaction, so what it reads is the state after
        every batch before this one, and what it writes commits with the batch or not at all.
        ``audit(seq)`` gives the batch's audit records, chained last in the same transaction:
        a batch is in the log if and only if its audit entries are.
        """
        with self.engine.begin() as c:
            serialize(c, APPEND_LOCK)
            after = authorize(c) if authorize is not None else None
            if authorize is not None and after is None:
                return None
            res = c.execute(
                sa.insert(event_batches).values(
                    carrier_id=carrier_id, received_us=now_us, events=events, envelope=envelope
                )
            )
            key = res.inserted_primary_key
            assert key is not None
            seq = int(key[0])
            if after is not None:
                after(seq)
            if audit is not None:
                append_audit(c, audit(seq))
            return seq

    def head(self) -> int:
        with self.engine.connect() as c:
            return int(
                c.execute(
                    sa.select(sa.func.coalesce(sa.func.max(event_batches.c.seq), 0))
                ).scalar_one()
            )

    def cursor(self, platform_id: str) -> int:
        with self.engine.connect() as c:
            got = c.execute(
                sa.select(event_cursors.c.acked_seq).where(
                    event_cursors.c.platform_id == platform_id
                )
            ).scalar_one_or_none()
        return int(got or 0)

    def ensure_cursor(self, c: sa.Connection, platform_id: str, now_us: int) -> None:
        """Create the platform's cursor at 0 unless it exists (replicas may race to it)."""
        insert = (postgresql.insert if c.dialect.name == "postgresql" else sqlite.insert)(
            event_cursors
        )
        c.execute(
            insert.values(
                platform_id=platform_id, acked_seq=0, updated_us=now_us
            ).on_conflict_do_nothing(index_elements=[event_cursors.c.platform_id])
        )

    def delivered(self, platform_id: str) -> int:
        """The highest seq delivered to the platform (0: nothing yet)."""
        with self.engine.connect() as c:
            got = c.execute(
                sa.select(event_cursors.c.delivered_seq).where(
                    event_cursors.c.platform_id == platform_id
                )
            ).scalar_one_or_none()
        return int(got or 0)

    def ack(self, platform_id: str, through: int, now_us: int, *, delivered: int = 0) -> int:
        """Record delivery through ``delivered`` (push: what an answered call carried), then
        move the cursor forward to ``through`` (never back); return the new position.

        ``through`` beyond what was ever delivered to the platform is INVALID_ARGUMENT
        ``ACK_BEYOND_DELIVERED`` and changes nothing.
        """
        with self.engine.begin() as c:
            acked, _ = self.acknowledge(c, platform_id, through, now_us, delivered)
            return max(acked, through)

    def pull(
        self, platform_id: str, through: int, limit: int, now_us: int
    ) -> tuple[int, int, list[tuple[int, bytes]]]:
        """Poll delivery in one transaction: acknowledge through ``through`` (as :meth:`ack`),
        then take up to ``limit`` batches after the cursor (and at most
        ``MAX_DELIVERY_BYTES`` of them) and record them as delivered.

        Returns (cursor before, cursor after, [(seq, envelope)]).
        """
        with self.engine.begin() as c:
            before, delivered = self.acknowledge(c, platform_id, through, now_us, 0)
            cursor = max(before, through)
            rows = self.read_after(c, cursor, limit)
            if rows and rows[-1][0] > delivered:
                self.mark_delivered(c, platform_id, rows[-1][0])
            return before, cursor, rows

    def acknowledge(
        self, c: sa.Connection, platform_id: str, through: int, now_us: int, delivered: int
    ) -> tuple[int, int]:
        """Check and apply an acknowledgement inside transaction ``c``; return (acked before,
        delivered). Every delivery path (gRPC push and poll, SSF push and poll) moves the
        cursor through here."""
        c_ = event_cursors.c
        self.ensure_cursor(c, platform_id, now_us)
        if delivered:
            self.mark_delivered(c, platform_id, delivered)
        row = c.execute(
            sa.select(c_.acked_seq, c_.delivered_seq).where(c_.platform_id == platform_id)
        ).one()
        if through > row.delivered_seq:
            # Raised inside the transaction: the cursor row made above is rolled back too.
            raise InvalidArgument(
                "ACK_BEYOND_DELIVERED",
                f"ack_through_seq {through} is beyond what was delivered to this platform "
                f"({row.delivered_seq})",
                metadata={"delivered_seq": str(row.delivered_seq)},
            )
        if through > row.acked_seq:
            c.execute(
                sa.update(event_cursors)
                .where(c_.platform_id == platform_id, c_.acked_seq < through)
                .values(acked_seq=through, updated_us=now_us)
            )
        return int(row.acked_seq), int(row.delivered_seq)

    def mark_delivered(self, c: sa.Connection, platform_id: str, seq: int) -> None:
        c_ = event_cursors.c
        c.execute(
            sa.update(event_cursors)
            .where(c_.platform_id == platform_id, c_.delivered_seq < seq)
            .values(delivered_seq=seq)
        )

    def lease(self, platform_id: str, owner: str, now_us: int, lease_us: int) -> bool:
        """Hold (or renew) the right to push to ``platform_id``; False while another holds it."""
        c_ = event_cursors.c
        with self.engine.begin() as c:
            self.ensure_cursor(c, platform_id, now_us)
            got = c.execute(
                sa.update(event_cursors)
                .where(
                    c_.platform_id == platform_id,
                    sa.or_(
                        c_.lease_owner.is_(None),
                        c_.lease_owner == owner,
                        c_.lease_until_us < now_us,
                    ),
                )
                .values(lease_owner=owner, lease_until_us=now_us + lease_us)
            )
            return got.rowcount == 1

    def unlease(self, owner: str) -> None:
        """Give up every push lease ``owner`` holds (graceful shutdown)."""
        with self.engine.begin() as c:
            c.execute(
                sa.update(event_cursors)
                .where(event_cursors.c.lease_owner == owner)
                .values(lease_owner=None, lease_until_us=None)
            )

    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` batches after ``seq``, at most ``MAX_DELIVERY_BYTES`` in all (the
        first always)."""
        with self.engine.connect() as c:
            return self.read_after(c, seq, limit)

    @staticmethod
    def read_after(c: sa.Connection, seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows = c.execute(
            sa.select(event_batches.c.seq, event_batches.c.envelope)
            .where(event_batches.c.seq > seq)
            .order_by(event_batches.c.seq)
            .limit(limit)
        ).all()
        out: list[tuple[int, bytes]] = []
        used = 0
        for r in rows:
            envelope = bytes(r.envelope)
            used += len(envelope) + 16  # seq and framing
            if out and used > MAX_DELIVERY_BYTES:
                break
            out.append((int(r.seq), envelope))
        return out
