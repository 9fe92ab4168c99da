"""The gateway's durable state: release jobs and their per-platform tasks, and the days
platforms asked the recycled check about.

SQLAlchemy 2.0 Core at the edge. Every public method is synchronous and runs on the store's
own worker threads (:meth:`Store.run`: one for SQLite, so it sees one writer; several for
PostgreSQL, so that commits overlap), and the asyncio servers never block on the database.
The same code runs on SQLite (one replica) and on PostgreSQL (several replicas, one database).

Tasks are leased by one statement: an UPDATE of the due rows that a sub-select picks, with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (so replicas leasing at the same moment take disjoint
rows without waiting) and as one atomic conditional UPDATE on SQLite. A lease lasts
``lease_us``; its holder renews it while the task is in flight (a heartbeat), and any replica
takes over a lease that expired. Every grant is recorded in ``task_leases``, the database's
own record that no task was ever held by two replicas at once.

Lock order (PostgreSQL): a transaction that changes leases locks the task rows first, in
(job_id, platform_id) order, and their lease records after; leasing skips locked rows and never
waits. So recording outcomes, renewing and giving back leases at the same moment wait for one
another and never deadlock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from gateway.audit import AuditRecord
from gateway.audit import append as append_audit
from gateway.probing import ProbeBudget
from gateway.schema import recycled_asked_dates, release_jobs, release_tasks, task_leases
from numfed.db import DbThread, serialize, sqlite_engine
from numfed.errors import FailedPrecondition, Unavailable

__all__ = ["JobAudit", "JobRow", "Renewal", "Store", "TaskRow", "TaskUpdate", "claim_digest"]

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

DB_WORKERS = 8
"""Database threads (and pooled connections) per replica on PostgreSQL; SQLite has one."""

MIGRATION_LOCK = 0x6E756D66_0001
"""Advisory lock key: replicas starting together migrate one at a time (PostgreSQL)."""


def _probe_lock(platform_id: str, number_key: str) -> int:
    """Advisory lock key of one (platform, number)'s probe budget: a signed 64-bit hash."""
    digest = hashlib.sha256(f"recycled\0{platform_id}\0{number_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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
    claim_digest: bytes | None = None
    """:func:`claim_digest` of the job's claim: one release claim makes at most one job."""
    trace_context: str | None = None
    """The W3C ``traceparent`` of the ReleaseBindings call that made the job (tracing on):
    its dispatch continues that trace (``numfed.observability.tracing``)."""


JobAudit = Callable[[JobRow, Sequence[str]], AuditRecord]
"""The audit record of a job created for (job, platform ids), committed with the job."""


def claim_digest(carrier_id: str, claim_id: bytes) -> bytes:
    """The key that makes a release claim good for one job: SHA-256 of (carrier, claim_id).

    The signing carrier is part of it, so a claim id can only ever meet the same carrier's job.
    """
    return hashlib.sha256(
        b"numfed/release-claim\x00" + carrier_id.encode() + b"\x00" + claim_id
    ).digest()


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


def _lease_record(owner: str) -> sa.Update:
    """UPDATE of ``owner``'s lease records, one row per (j, p, f) parameter set (executemany)."""
    tl = task_leases
    return sa.update(tl).where(
        tl.c.job_id == sa.bindparam("j"),
        tl.c.platform_id == sa.bindparam("p"),
        tl.c.owner == owner,
        tl.c.from_us == sa.bindparam("f"),
    )


@dataclass(frozen=True)
class Renewal:
    """What one heartbeat found of the leases it renewed."""

    held: int
    """Tasks still leased to the owner, now renewed."""
    lost: int
    """Tasks still pending that another owner leases now (it took them over once the lease ran
    out). A task finished since the heartbeat looked (its outcome recorded) is neither."""


class Store:
    """Jobs and tasks on one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        workers = 1
        if url.startswith("sqlite"):
            self.engine: Engine = sqlite_engine(url)
        else:
            workers = DB_WORKERS
            self.engine = sa.create_engine(url, pool_size=DB_WORKERS + 2, max_overflow=4)
        self.dialect = self.engine.dialect.name
        self._thread = DbThread("gateway-db", workers)
        self._lock_fd: int | None = None

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one store method on a database thread.

        A database that cannot be reached (connection refused or lost) is UNAVAILABLE to the
        caller, who may retry; nothing was acknowledged, so nothing is lost.
        """
        try:
            return await self._thread.run(fn, *args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Unavailable(
                "DATABASE_UNAVAILABLE", "the gateway's database is unavailable; retry later"
            ) from exc

    async def run_first(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """As :meth:`run`, ahead of the background work queued for the database threads (the
        dispatcher's, the pushers'): for a caller waiting on its commit."""
        try:
            return await self._thread.run_first(fn, *args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Unavailable(
                "DATABASE_UNAVAILABLE", "the gateway's database is unavailable; retry later"
            ) from exc

    def close(self) -> None:
        self._thread.close()
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock_single_replica(self) -> None:
        """On SQLite, make this process the file's only gateway, or refuse to start.

        SQLite serves one replica: a second gateway on the same file would fight the first for
        its leases. The lock is an ``flock`` on ``<file>.lock``, dropped when the process ends
        however it ends, so a killed gateway never blocks its successor. Readers (``numfed
        audit``) do not take it. PostgreSQL needs no such lock.
        """
        if self.dialect != "sqlite" or self._lock_fd is not None:
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            return
        fd = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise FailedPrecondition(
                "DATABASE_IN_USE",
                "another gateway replica is running on this SQLite file; "
                "several replicas need a shared PostgreSQL database_url",
            ) from exc
        self._lock_fd = fd

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (one replica at a time)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            serialize(conn, MIGRATION_LOCK)
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

    def find_job_by_claim(self, digest: bytes) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(release_jobs).where(release_jobs.c.claim_digest == digest)
            ).first()
        return JobRow(**row._mapping) if row else None

    def create_job(self, job: JobRow, platform_ids: Sequence[str]) -> JobRow:
        """Insert a job and one pending task per platform in one transaction.

        If a job with the same (carrier, request_id) exists already, or one made from the same
        claim (``claim_digest``), nothing is written and the existing job is returned, so
        concurrent retries of one request, or one claim sent twice, create one job.
        """
        return self.create_jobs([(job, platform_ids)])[0]

    def create_jobs(
        self, work: Sequence[tuple[JobRow, Sequence[str]]], *, audit: JobAudit | None = None
    ) -> list[JobRow]:
        """Create many jobs in one transaction (a group commit); return each one's job.

        ``audit`` gives the audit record of each job created; the records are chained in the
        same transaction, so a job is committed if and only if its audit entry is.

        Each entry returns the job stored for its (carrier, request_id) or else for its
        ``claim_digest``: the new one, or the one that existed already (also when an earlier
        entry of the same group created it). The caller tells a retry from a reused claim by
        the returned job's request. When two replicas take the same request or claim at once,
        the loser's insert hits a unique key and the group is retried entry by entry, each
        returning the winner's job: a conflict costs its own entry, never the group.
        """
        try:
            return self._insert_jobs(work, audit)
        except sa.exc.IntegrityError:
            if len(work) == 1:
                job = work[0][0]
                found = self.find_job(job.carrier_id, job.request_id)
                if found is None and job.claim_digest is not None:
                    found = self.find_job_by_claim(job.claim_digest)
                if found is None:
                    raise
                return [found]
            return [self.create_jobs([w], audit=audit)[0] for w in work]

    def _insert_jobs(
        self, work: Sequence[tuple[JobRow, Sequence[str]]], audit: JobAudit | None
    ) -> list[JobRow]:
        j = release_jobs
        keys = {(job.carrier_id, job.request_id) for job, _p in work}
        digests = {job.claim_digest for job, _p in work if job.claim_digest is not None}
        with self.engine.begin() as conn:
            stored = {
                (r.carrier_id, r.request_id): JobRow(**r._mapping)
                for r in conn.execute(
                    sa.select(j).where(
                        j.c.request_id.in_(sorted({r for _c, r in keys})),
                    )
                )
                if (r.carrier_id, r.request_id) in keys
            }
            by_claim: dict[bytes, JobRow] = {}
            if digests:
                by_claim = {
                    bytes(r.claim_digest): JobRow(**r._mapping)
                    for r in conn.execute(sa.select(j).where(j.c.claim_digest.in_(sorted(digests))))
                }
            jobs, tasks = [], []
            records: list[AuditRecord] = []
            out: list[JobRow] = []
            for job, platform_ids in work:
                key = (job.carrier_id, job.request_id)
                if key not in stored and job.claim_digest in by_claim:
                    out.append(by_claim[job.claim_digest])  # the claim made a job already
                    continue
                if key not in stored:
                    stored[key] = job
                    if job.claim_digest is not None:
                        by_claim[job.claim_digest] = job
                    jobs.append(job.__dict__)
                    if audit is not None:
                        records.append(audit(job, platform_ids))
                    tasks += [
                        {
                            "job_id": job.job_id,
                            "platform_id": p,
                            "state": TASK_PENDING,
                            "outcome": 0,
                            "attempts": 0,
                            "next_attempt_us": job.created_us,
                            "lease_owner": None,
                            "lease_until_us": None,
                            "lease_from_us": None,
                            "result": None,
                            "updated_us": job.created_us,
                        }
                        for p in platform_ids
                    ]
                out.append(stored[key])
            if jobs:
                conn.execute(sa.insert(j), jobs)
            if tasks:
                conn.execute(sa.insert(release_tasks), tasks)
            append_audit(conn, records)  # last: the chain's lock is held only to the commit
        return out

    def claim_due(
        self, owner: str, now_us: int, lease_us: int, limit: int
    ) -> list[tuple[TaskRow, JobRow]]:
        """Lease up to ``limit`` due pending tasks for ``owner``; return them with their jobs."""
        with self.engine.begin() as conn:
            tasks = self._lease(conn, owner, now_us, lease_us, limit)
            if not tasks:
                return []
            job_ids = sorted({t.job_id for t in tasks})
            jobs = {
                r.job_id: JobRow(**r._mapping)
                for r in conn.execute(
                    sa.select(release_jobs).where(release_jobs.c.job_id.in_(job_ids))
                )
            }
        return [(t, jobs[t.job_id]) for t in tasks]

    def _lease(
        self, conn: Connection, owner: str, now_us: int, lease_us: int, limit: int
    ) -> list[TaskRow]:
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
        # One statement is the lease; the conditions are checked again on the rows it updates,
        # so a row another replica took meanwhile is not taken twice.
        update = sa.update(t).values(
            lease_owner=owner, lease_until_us=now_us + lease_us, lease_from_us=now_us
        )
        if self.dialect == "postgresql":
            # A materialised CTE runs the locking sub-select exactly once (a sub-select inside
            # IN may be re-run by the planner, each run skipping rows the last one locked).
            picked = (
                due.with_for_update(skip_locked=True)
                .cte("due")
                .prefix_with("MATERIALIZED", dialect="postgresql")
            )
            update = update.where(
                t.c.job_id == picked.c.job_id, t.c.platform_id == picked.c.platform_id
            )
        else:
            rowids: sa.Select[Any] = due.with_only_columns(sa.literal_column("rowid"))
            update = update.where(sa.literal_column("rowid").in_(rowids))
        rows = conn.execute(
            update.where(
                t.c.state == TASK_PENDING,
                sa.or_(t.c.lease_until_us.is_(None), t.c.lease_until_us < now_us),
            ).returning(*_TASK_COLUMNS)
        ).all()
        if rows:
            conn.execute(
                sa.insert(task_leases),
                [
                    {
                        "job_id": r.job_id,
                        "platform_id": r.platform_id,
                        "owner": owner,
                        "from_us": now_us,
                        "until_us": now_us + lease_us,
                        "finished": False,
                    }
                    for r in rows
                ],
            )
        return [TaskRow(**r._mapping) for r in rows]

    def _held(
        self, conn: Connection, owner: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """Of these tasks, those ``owner`` still leases (locked until commit on PostgreSQL),
        with the start of each lease."""
        if not keys:
            return {}
        t = release_tasks
        wanted = set(keys)
        # job_id IN (...) walks the primary key; a row-value IN would scan the table on SQLite.
        stmt = (
            sa.select(t.c.job_id, t.c.platform_id, t.c.lease_from_us)
            .where(
                t.c.job_id.in_(sorted({j for j, _p in wanted})),
                t.c.lease_owner == owner,
                t.c.state == TASK_PENDING,
            )
            .order_by(t.c.job_id, t.c.platform_id)  # the lock order (see the module's doc)
        )
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return {
            (r.job_id, r.platform_id): int(r.lease_from_us or 0)
            for r in conn.execute(stmt)
            if (r.job_id, r.platform_id) in wanted
        }

    def renew(
        self, owner: str, keys: Iterable[tuple[str, str]], now_us: int, lease_us: int
    ) -> Renewal:
        """Extend ``owner``'s leases on these tasks (a heartbeat); say how many it still held and
        how many another owner took over.

        A lease that already expired is renewed only if nobody took it over meanwhile.
        """
        t = release_tasks
        until = now_us + lease_us
        wanted = list(keys)
        with self.engine.begin() as conn:
            held = self._held(conn, owner, wanted)
            others = set(wanted) - set(held)
            lost = 0
            if others:
                rows = conn.execute(
                    sa.select(t.c.job_id, t.c.platform_id).where(
                        t.c.job_id.in_(sorted({j for j, _p in others})),
                        t.c.state == TASK_PENDING,
                        t.c.lease_owner != owner,
                    )
                )
                lost = sum(1 for r in rows if (r.job_id, r.platform_id) in others)
            if held:
                params = [{"j": j, "p": p, "f": f, "until": until} for (j, p), f in held.items()]
                conn.execute(
                    sa.update(t)
                    .where(t.c.job_id == sa.bindparam("j"), t.c.platform_id == sa.bindparam("p"))
                    .values(lease_until_us=sa.bindparam("until")),
                    params,
                )
                conn.execute(_lease_record(owner).values(until_us=sa.bindparam("until")), params)
        return Renewal(held=len(held), lost=lost)

    def record(self, owner: str, updates: Iterable[TaskUpdate], now_us: int) -> set[str]:
        """:meth:`record_tasks`, returning the ids of the jobs that changed."""
        return {job_id for job_id, _platform_id in self.record_tasks(owner, updates, now_us)}

    def record_tasks(
        self, owner: str, updates: Iterable[TaskUpdate], now_us: int
    ) -> set[tuple[str, str]]:
        """Store dispatch outcomes (only for tasks ``owner`` still leases) in one transaction.

        Jobs whose tasks are now all done are marked done and their claim is dropped. Returns
        the (job id, platform id) of the tasks recorded. Statements are built once and run for
        all the rows (executemany), so hundreds of outcomes, of one platform's batch or of
        several, cost a handful of round trips.
        """
        t = release_tasks
        todo = list(updates)
        with self.engine.begin() as conn:
            held = self._held(conn, owner, [(u.job_id, u.platform_id) for u in todo])
            mine = [u for u in todo if (u.job_id, u.platform_id) in held]
            if not mine:
                return set()
            conn.execute(
                sa.update(t)
                .where(t.c.job_id == sa.bindparam("j"), t.c.platform_id == sa.bindparam("p"))
                .values(
                    state=sa.bindparam("st"),
                    outcome=sa.bindparam("oc"),
                    attempts=t.c.attempts + 1,
                    next_attempt_us=sa.bindparam("next"),
                    result=sa.bindparam("res"),
                    lease_owner=None,
                    lease_until_us=None,
                    lease_from_us=None,
                    updated_us=now_us,
                ),
                [
                    {
                        "j": u.job_id,
                        "p": u.platform_id,
                        "st": TASK_DONE if u.done else TASK_PENDING,
                        "oc": u.outcome,
                        "next": u.next_attempt_us,
                        "res": u.result,
                    }
                    for u in mine
                ],
            )
            conn.execute(
                _lease_record(owner).values(until_us=now_us, finished=True),
                [
                    {"j": u.job_id, "p": u.platform_id, "f": held[(u.job_id, u.platform_id)]}
                    for u in mine
                ],
            )
            changed = {u.job_id for u in mine}
            still_pending = set(
                conn.execute(
                    sa.select(t.c.job_id)
                    .where(t.c.job_id.in_(sorted(changed)), t.c.state == TASK_PENDING)
                    .group_by(t.c.job_id)
                ).scalars()
            )
            finished = sorted(changed - still_pending)
            if finished:
                conn.execute(
                    sa.update(release_jobs)
                    .where(release_jobs.c.job_id.in_(finished), release_jobs.c.done_us.is_(None))
                    .values(done_us=now_us, claim=None)
                )
        return {(u.job_id, u.platform_id) for u in mine}

    def release_leases(self, owner: str | None, now_us: int) -> int:
        """Drop leases (of ``owner``, or every lease when None: a lone SQLite replica starting).

        Their record ends now, so another replica may take the tasks at once.
        """
        t = release_tasks
        held: sa.ColumnElement[bool] = t.c.lease_owner.is_not(None)
        if owner is not None:
            held = sa.and_(held, t.c.lease_owner == owner)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # The tasks first, in key order, then their lease records, as recording outcomes
                # does: the other way round, a batch recorded while its replica stopped
                # deadlocked with this.
                conn.execute(
                    sa.select(t.c.job_id)
                    .where(held)
                    .order_by(t.c.job_id, t.c.platform_id)
                    .with_for_update()
                )
            conn.execute(
                sa.update(task_leases)
                .where(
                    task_leases.c.finished.is_(False),
                    task_leases.c.until_us > now_us,
                    sa.tuple_(
                        task_leases.c.job_id,
                        task_leases.c.platform_id,
                        task_leases.c.owner,
                        task_leases.c.from_us,
                    ).in_(
                        sa.select(
                            t.c.job_id, t.c.platform_id, t.c.lease_owner, t.c.lease_from_us
                        ).where(held)
                    ),
                )
                .values(until_us=now_us, finished=True)
            )
            return conn.execute(
                sa.update(t)
                .where(held)
                .values(lease_owner=None, lease_until_us=None, lease_from_us=None)
            ).rowcount

    def next_due_us(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(release_tasks.c.next_attempt_us)).where(
                    release_tasks.c.state == TASK_PENDING
                )
            ).scalar_one_or_none()

    # -- recycled-check probe budget ----------------------------------------------------------

    def asked_dates(self, platform_id: str, number_key: str) -> dict[date, int]:
        """The days ``platform_id`` asked about this number, each with when it first asked (µs)."""
        a = recycled_asked_dates
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(a.c.specified_date, a.c.asked_us).where(
                    a.c.platform_id == platform_id, a.c.number_key == number_key
                )
            ).all()
        return {r.specified_date: r.asked_us for r in rows}

    def spend_asked_date(
        self, platform_id: str, number_key: str, day: date, now_us: int, budget: ProbeBudget
    ) -> tuple[int, int] | None:
        """Count ``day`` against the platform's budget for this number, or raise
        RESOURCE_EXHAUSTED (RECYCLED_PROBE_BUDGET) and record nothing.

        Returns None when the platform had asked about ``day`` already, else how many distinct
        days all platforms together asked about this number within the window, and how many
        platforms asked: what colluding platforms could pool (the caller audits it).

        Check and record are one transaction, taken one at a time per (platform, number): on
        PostgreSQL under an advisory lock, so replicas asking at once never both take the last
        date; on SQLite by its single writer (one replica, one database thread). Days whose
        window has passed are dropped here, so a pair keeps at most a budget's worth of rows.
        """
        a = recycled_asked_dates
        pair = sa.and_(a.c.platform_id == platform_id, a.c.number_key == number_key)
        with self.engine.begin() as conn:
            serialize(conn, _probe_lock(platform_id, number_key))
            asked = {
                r.specified_date: r.asked_us
                for r in conn.execute(sa.select(a.c.specified_date, a.c.asked_us).where(pair))
            }
            budget.check(asked, [day], now_us)
            live = budget.live(asked, now_us)
            if day in live:
                return None
            stale = sorted(set(asked) - set(live))
            if stale:
                conn.execute(sa.delete(a).where(pair, a.c.specified_date.in_(stale)))
            conn.execute(
                sa.insert(a).values(
                    platform_id=platform_id,
                    number_key=number_key,
                    specified_date=day,
                    asked_us=now_us,
                )
            )
            pooled = conn.execute(
                sa.select(
                    sa.func.count(sa.distinct(a.c.specified_date)),
                    sa.func.count(sa.distinct(a.c.platform_id)),
                ).where(a.c.number_key == number_key, a.c.asked_us > now_us - budget.period_us)
            ).one()
            return int(pooled[0]), int(pooled[1])
