"""The event log: each signed batch stored once; one acknowledged position per platform.

Storage grows with batches + platforms, never batches x platforms. A platform's cursor only
moves forward, and only on its acknowledgement, so delivery is at-least-once and in log order
(hence in order per number).
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.schema import event_batches, event_cursors

__all__ = ["EventLog"]


class EventLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def append(self, carrier_id: str, envelope: bytes, events: int, now_us: int) -> int:
        with self.engine.begin() as c:
            res = c.execute(
                sa.insert(event_batches).values(
                    carrier_id=carrier_id, received_us=now_us, events=events, envelope=envelope
                )
            )
            seq = res.inserted_primary_key
            assert seq is not None
            return int(seq[0])

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

    def ack(self, platform_id: str, through: int, now_us: int) -> int:
        """Move the cursor forward to ``through`` (never back); return the new position."""
        with self.engine.begin() as c:
            current = c.execute(
                sa.select(event_cursors.c.acked_seq).where(
                    event_cursors.c.platform_id == platform_id
                )
            ).scalar_one_or_none()
            if current is None:
                c.execute(
                    sa.insert(event_cursors).values(
                        platform_id=platform_id, acked_seq=max(through, 0), updated_us=now_us
                    )
                )
                return max(through, 0)
            if through > current:
                c.execute(
                    sa.update(event_cursors)
                    .where(event_cursors.c.platform_id == platform_id)
                    .values(acked_seq=through, updated_us=now_us)
                )
                return through
            return int(current)

    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(event_batches.c.seq, event_batches.c.envelope)
                .where(event_batches.c.seq > seq)
                .order_by(event_batches.c.seq)
                .limit(limit)
            ).all()
        return [(int(r.seq), bytes(r.envelope)) for r in rows]
