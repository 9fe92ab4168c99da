"""What the gateway's database says about the work in hand: open release jobs, the event log
and each platform's place in it, the audit chain and its newest signed checkpoint.

Dead letters are not here: they are a platform's own (its ``dead_letters`` table, its
``numfed_event_dead_letters`` gauge, ``numfed platform dead-letters``); the gateway keeps no
such list, it holds a batch a platform has not acknowledged and sends it again.

One cheap read (:func:`read_snapshot`: a few indexed aggregates) serves both the metrics a
scrape reads (``gateway/observability.py``, at most once a second) and ``numfed status``, which
reads the database itself when the gateway's status endpoint is not configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gateway.schema import (
    audit_checkpoints,
    audit_log,
    event_batches,
    event_cursors,
    release_jobs,
    release_tasks,
)
from gateway.store import TASK_PENDING

__all__ = ["DbSnapshot", "read_snapshot"]


@dataclass(frozen=True)
class DbSnapshot:
    at_us: int
    open_jobs: int = 0
    """Release jobs with at least one platform left to answer."""
    oldest_open_us: int | None = None
    """When the oldest open job was accepted."""
    tasks_open: dict[str, int] = field(default_factory=dict)
    """Platform -> release tasks waiting for it."""
    tasks_retrying: dict[str, int] = field(default_factory=dict)
    """Platform -> open tasks already tried at least once (the platform has not answered)."""
    event_head: int = 0
    """Sequence number of the newest batch in the event log."""
    event_acked: dict[str, int] = field(default_factory=dict)
    """Platform -> the sequence number it acknowledged (0: nothing yet)."""
    event_oldest_unacked_us: dict[str, int] = field(default_factory=dict)
    """Platform -> when the oldest batch it has not acknowledged reached the gateway."""
    audit_length: int = 0
    checkpoint_size: int | None = None
    """Chain length the newest signed audit checkpoint covers (None: none signed yet)."""
    checkpoint_issued_us: int | None = None
    """When that checkpoint was signed."""

    def event_lag(self, platform_id: str) -> int:
        return max(self.event_head - self.event_acked.get(platform_id, 0), 0)

    def event_lag_seconds(self, platform_id: str) -> float:
        since = self.event_oldest_unacked_us.get(platform_id)
        if since is None or self.event_lag(platform_id) == 0:
            return 0.0
        return max((self.at_us - since) / 1e6, 0.0)

    def oldest_open_age(self) -> float:
        if self.oldest_open_us is None:
            return 0.0
        return max((self.at_us - self.oldest_open_us) / 1e6, 0.0)

    def to_json(self, platform_ids: Sequence[str]) -> dict[str, Any]:
        return {
            "release_jobs": {
                "open": self.open_jobs,
                "oldest_open_age_seconds": round(self.oldest_open_age(), 3),
                "tasks_open": dict(sorted(self.tasks_open.items())),
                "tasks_retrying": dict(sorted(self.tasks_retrying.items())),
            },
            "events": {
                "head": self.event_head,
                "lag_batches": {p: self.event_lag(p) for p in sorted(platform_ids)},
                "lag_seconds": {
                    p: round(self.event_lag_seconds(p), 3) for p in sorted(platform_ids)
                },
            },
            "audit": {
                "length": self.audit_length,
                "last_checkpoint_size": self.checkpoint_size,
                "last_checkpoint_issued_us": self.checkpoint_issued_us,
            },
        }


def read_snapshot(engine: sa.Engine, platform_ids: Sequence[str], now_us: int) -> DbSnapshot:
    """Read the figures in one connection: every query walks an index or a primary key."""
    t, j = release_tasks, release_jobs
    with engine.connect() as c:
        open_tasks = c.execute(
            sa.select(
                t.c.platform_id,
                sa.func.count(),
                sa.func.sum(sa.case((t.c.attempts > 0, 1), else_=0)),
            )
            .where(t.c.state == TASK_PENDING)
            .group_by(t.c.platform_id)
        ).all()
        pending = sa.select(t.c.job_id).where(t.c.state == TASK_PENDING).scalar_subquery()
        jobs, oldest = c.execute(
            sa.select(sa.func.count(), sa.func.min(j.c.created_us)).where(j.c.job_id.in_(pending))
        ).one()
        head = int(
            c.execute(sa.select(sa.func.coalesce(sa.func.max(event_batches.c.seq), 0))).scalar()
            or 0
        )
        cursors = {
            r.platform_id: int(r.acked_seq)
            for r in c.execute(sa.select(event_cursors.c.platform_id, event_cursors.c.acked_seq))
        }
        b = event_batches
        unacked = {
            r.platform_id: int(r.received_us)
            for r in c.execute(
                sa.select(event_cursors.c.platform_id, b.c.received_us).join(
                    b, b.c.seq == event_cursors.c.acked_seq + 1
                )
            )
        }
        first = c.execute(sa.select(b.c.received_us).order_by(b.c.seq).limit(1)).scalar()
        for p in platform_ids:
            if p not in cursors and first is not None:
                unacked[p] = int(first)
        length = int(
            c.execute(sa.select(sa.func.coalesce(sa.func.max(audit_log.c.seq), 0))).scalar() or 0
        )
        cp = audit_checkpoints.c
        newest = c.execute(
            sa.select(cp.size, cp.issued_us).order_by(cp.size.desc()).limit(1)
        ).first()
        size, issued = (newest.size, newest.issued_us) if newest is not None else (None, None)
    return DbSnapshot(
        at_us=now_us,
        open_jobs=int(jobs or 0),
        oldest_open_us=int(oldest) if oldest is not None else None,
        tasks_open={r[0]: int(r[1]) for r in open_tasks},
        tasks_retrying={r[0]: int(r[2] or 0) for r in open_tasks},
        event_head=head,
        event_acked=cursors,
        event_oldest_unacked_us=unacked,
        audit_length=length,
        checkpoint_size=int(size) if size is not None else None,
        checkpoint_issued_us=int(issued) if issued is not None else None,
    )
