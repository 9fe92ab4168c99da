"""The gateway's durable state: release jobs and their per-platform tasks, and portability.

SQLAlchemy 2.0 Core at the edge. Every public method is synchronous and runs on the store's
own single worker thread (:meth:`Store.run`), so the asyncio servers never block on the
database and SQLite sees one writer. Tasks are leased with an atomic conditional UPDATE on
SQLite (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so an expired lease can be taken over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from gateway.schema import portability, release_jobs, release_tasks
from numfed.db import DbThread, sqlite_engine

__all__ = ["JobRow", "Store", "TaskRow", "TaskUpdate"]

P = ParamSpec("P")
R = TypeVar("R")

_TASK_COLUMNS = (
    release_tasks.c.job_id,
    release_tasks.c.platform_id,
    release_tasks.c.state,
    release_tasks.c.outcome,
    release_tasks.c.attempts,
    release_tasks.c.next_attempt_us,
    release_tasks.c.result,
)
"""The columns a TaskRow holds."""

TASK_PENDING = 0
TASK_DONE = 1


@dataclass(frozen=True)
class JobRow:
    job_id: str
    carrier_id: str
    request_id: str
    request_digest: bytes
    number_key: str
    purpose: int
    claim: bytes | None
    created_us: int
    deadline_us: int
    done_us: int | None


@dataclass(frozen=True)
class TaskRow:
    job_id: str
    platform_id: str
    state: int
    outcome: int
    attempts: int
    next_attempt_us: int
    result: bytes | None


@dataclass(frozen=True)
class TaskUpdate:
    """What one dispatch attempt came to for one task."""

    job_id: str
    platform_id: str
    done: bool
    outcome: int
    result: bytes
    next_attempt_us: int


class Store:
    """Jobs, tasks and portability on one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine: Engine = sqlite_engine(url)
        else:
            self.engine = sa.create_engine(url, pool_size=4, max_overflow=4)
        self.dialect = self.engine.dialect.name
        self._thread = DbThread("gateway-db")
        self.run = self._thread.run
        """Run one store method on the database thread."""

    def close(self) -> None:
        self._thread.close()
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # -- release jobs -------------------------------------------------------------------------

    def find_job(self, carrier_id: str, request_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(release_jobs).where(
                    release_jobs.c.carrier_id == carrier_id,
                    release_jobs.c.request_id == request_id,
                )
            ).first()
        return JobRow(**row._mapping) if row else None

    def get_job(self, job_id: str) -> tuple[JobRow, list[TaskRow]] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(release_jobs).where(release_jobs.c.job_id == job_id)
            ).first()
            if row is None:
                return None
            tasks = conn.execute(
                sa.select(*_TASK_COLUMNS)
                .where(release_tasks.c.job_id == job_id)
                .order_by(release_tasks.c.platform_id)
            ).all()
        return JobRow(**row._mapping), [TaskRow(**t._mapping) for t in tasks]

    def create_job(self, job: JobRow, platform_ids: Sequence[str]) -> JobRow:
        """Insert a job and one pending task per platform in one transaction.

        If a job with the same (carrier, request_id) exists already, nothing is written and the
        existing job is returned, so concurrent retries of one request create one job.
        """
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(release_jobs).where(
                    release_jobs.c.carrier_id == job.carrier_id,
                    release_jobs.c.request_id == job.request_id,
                )
            ).first()
            if existing is not None:
                return JobRow(**existing._mapping)
            conn.execute(sa.insert(release_jobs).values(**job.__dict__))
            conn.execute(
                sa.insert(release_tasks),
                [
                    {
                        "job_id": job.job_id,
                        "platform_id": p,
                        "state": TASK_PENDING,
                        "outcome": 0,
                        "attempts": 0,
                        "next_attempt_us": job.created_us,
                        "lease_owner": None,
                        "lease_until_us": None,
                        "result": None,
                        "updated_us": job.created_us,
                    }
                    for p in platform_ids
                ],
            )
        return job

    def claim_due(
        self, owner: str, now_us: int, lease_us: int, limit: int
    ) -> list[tuple[TaskRow, JobRow]]:
        """Lease up to ``limit`` due pending tasks for ``owner``; return them with their jobs."""
        with self.engine.begin() as conn:
            keys = self._lease(conn, owner, now_us, lease_us, limit)
            if not keys:
                return []
            job_ids = sorted({k[0] for k in keys})
            jobs = {
                r.job_id: JobRow(**r._mapping)
                for r in conn.execute(
                    sa.select(release_jobs).where(release_jobs.c.job_id.in_(job_ids))
                )
            }
            tasks = conn.execute(
                sa.select(*_TASK_COLUMNS).where(
                    release_tasks.c.lease_owner == owner,
                    release_tasks.c.lease_until_us == now_us + lease_us,
                    release_tasks.c.job_id.in_(job_ids),
                )
            ).all()
        return [(TaskRow(**t._mapping), jobs[t.job_id]) for t in tasks]

    def _lease(
        self, conn: Connection, owner: str, now_us: int, lease_us: int, limit: int
    ) -> list[tuple[str, str]]:
        t = release_tasks
        due = (
            sa.select(t.c.job_id, t.c.platform_id)
            .where(
                t.c.state == TASK_PENDING,
                t.c.next_attempt_us <= now_us,
                sa.or_(t.c.lease_until_us.is_(None), t.c.lease_until_us < now_us),
            )
            .order_by(t.c.next_attempt_us)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        candidates = [(r.job_id, r.platform_id) for r in conn.execute(due)]
        leased: list[tuple[str, str]] = []
        for job_id, platform_id in candidates:
            # The conditional UPDATE is the lease: it succeeds for one replica only.
            res = conn.execute(
                sa.update(t)
                .where(
                    t.c.job_id == job_id,
                    t.c.platform_id == platform_id,
                    t.c.state == TASK_PENDING,
                    sa.or_(t.c.lease_until_us.is_(None), t.c.lease_until_us < now_us),
                )
                .values(lease_owner=owner, lease_until_us=now_us + lease_us)
            )
            if res.rowcount == 1:
                leased.append((job_id, platform_id))
        return leased

    def record(self, owner: str, updates: Iterable[TaskUpdate], now_us: int) -> set[str]:
        """Store dispatch outcomes (only for tasks ``owner`` still leases) in one transaction.

        Jobs whose tasks are now all done are marked done and their claim is dropped. Returns
        the ids of the jobs that changed.
        """
        t = release_tasks
        changed: set[str] = set()
        with self.engine.begin() as conn:
            for u in updates:
                res = conn.execute(
                    sa.update(t)
                    .where(
                        t.c.job_id == u.job_id,
                        t.c.platform_id == u.platform_id,
                        t.c.lease_owner == owner,
                        t.c.state == TASK_PENDING,
                    )
                    .values(
                        state=TASK_DONE if u.done else TASK_PENDING,
                        outcome=u.outcome,
                        attempts=t.c.attempts + 1,
                        next_attempt_us=u.next_attempt_us,
                        result=u.result,
                        lease_owner=None,
                        lease_until_us=None,
                        updated_us=now_us,
                    )
                )
                if res.rowcount == 1:
                    changed.add(u.job_id)
            for job_id in changed:
                pending = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t)
                    .where(t.c.job_id == job_id, t.c.state == TASK_PENDING)
                ).scalar_one()
                if pending == 0:
                    conn.execute(
                        sa.update(release_jobs)
                        .where(release_jobs.c.job_id == job_id, release_jobs.c.done_us.is_(None))
                        .values(done_us=now_us, claim=None)
                    )
        return changed

    def release_leases(self, owner: str | None = None) -> int:
        """Drop leases (of ``owner``, or every lease when None: a lone SQLite replica starting)."""
        stmt = sa.update(release_tasks).where(release_tasks.c.lease_owner.is_not(None))
        if owner is not None:
            stmt = stmt.where(release_tasks.c.lease_owner == owner)
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(lease_owner=None, lease_until_us=None)).rowcount

    def next_due_us(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(release_tasks.c.next_attempt_us)).where(
                    release_tasks.c.state == TASK_PENDING
                )
            ).scalar_one_or_none()

    # -- portability ----------------------------------------------------------------------------

    def put_portability(self, entries: Iterable[tuple[str, str]], now_us: int) -> None:
        rows = [{"number_key": k, "carrier_id": c, "updated_us": now_us} for k, c in entries]
        if not rows:
            return
        with self.engine.begin() as conn:
            keys = [r["number_key"] for r in rows]
            conn.execute(sa.delete(portability).where(portability.c.number_key.in_(keys)))
            conn.execute(sa.insert(portability), rows)

    def load_portability(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {r.number_key: r.carrier_id for r in conn.execute(sa.select(portability))}
