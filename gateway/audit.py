"""The gateway's audit log: append-only, hash-chained, pseudonymous.

Every entry carries the hash of the one before it; an entry's own hash covers its sequence
number, time, event, actor, pseudonymised number, outcome, details and the previous hash. So
changing, removing or reordering any entry breaks the chain from that entry on, and
:func:`verify_chain` says where. A cut at the tail, or a rewrite with every hash recomputed, is
seen only against the signed checkpoints members keep (``gateway/checkpoints.py``). Numbers
appear only as keyed HMAC pseudonyms; names and ID numbers never reach the gateway at all.

An action the gateway commits to its database (a release job, an event batch, a completed
port) has its entry appended by :func:`append` in the same transaction, so the two never
disagree. Everything else (verdicts on claims, refusals, deliveries, recycled checks) goes
through :class:`AuditWriter`, which keeps its records until a flush commits them, retrying with
backoff, and holds at most ``max_backlog`` of them before the gateway refuses new audited work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gateway.backoff import backoff_seconds
from gateway.schema import audit_log
from numfed.db import serialize
from numfed.errors import Unavailable
from numfed.observability.logs import RetrySummary, failure_reason

__all__ = [
    "AUDIT_LOCK",
    "GENESIS",
    "AuditRecord",
    "AuditWriter",
    "ChainReport",
    "append",
    "entry_hash",
    "read_chain",
    "verify_chain",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
"""The previous hash of the first entry."""

AUDIT_LOCK = 0x6E756D66_0002
"""Advisory lock key for appending to the chain (PostgreSQL)."""


@dataclass(frozen=True)
class AuditRecord:
    """What happened, before it is chained."""

    at_us: int
    event: str
    actor: str
    number_key: str = ""
    outcome: str = "OK"
    detail: Mapping[str, str] = field(default_factory=dict)


def entry_hash(seq: int, rec: AuditRecord, prev_hash: str) -> str:
    body = json.dumps(
        [
            seq,
            rec.at_us,
            rec.event,
            rec.actor,
            rec.number_key,
            rec.outcome,
            dict(rec.detail),
            prev_hash,
        ],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _row(seq: int, rec: AuditRecord, prev: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "at_us": rec.at_us,
        "event": rec.event,
        "actor": rec.actor,
        "number_key": rec.number_key,
        "outcome": rec.outcome,
        "detail": json.dumps(dict(rec.detail), sort_keys=True, ensure_ascii=False),
        "prev_hash": prev,
        "hash": entry_hash(seq, rec, prev),
    }


def _is_tail(conn: sa.Connection, records: Sequence[AuditRecord], last_seq: int) -> bool:
    """True when the newest entries are ``records``, field for field, in order."""
    if last_seq < len(records):
        return False
    c = audit_log.c
    rows = conn.execute(
        sa.select(c.at_us, c.event, c.actor, c.number_key, c.outcome, c.detail)
        .where(c.seq > last_seq - len(records))
        .order_by(c.seq)
    ).all()
    wanted = [
        (r.at_us, r.event, r.actor, r.number_key, r.outcome, _row(0, r, GENESIS)["detail"])
        for r in records
    ]
    return [tuple(r) for r in rows] == wanted


def append(
    conn: sa.Connection, records: Sequence[AuditRecord], *, unless_tail: bool = False
) -> None:
    """Chain ``records`` after the newest entry, inside the caller's transaction.

    Takes the chain's append lock (PostgreSQL), held until the caller's transaction ends; take
    it last, after every other lock the transaction needs, so that appends stay short and no
    two lock orders meet. With ``unless_tail`` nothing is appended when the newest entries are
    already ``records`` (a retry after a commit whose answer was lost).
    """
    if not records:
        return
    serialize(conn, AUDIT_LOCK)  # replicas on one PostgreSQL chain one after another
    last = conn.execute(
        sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (int(last.seq), str(last.hash)) if last else (0, GENESIS)
    if unless_tail and _is_tail(conn, records, seq):
        return
    rows = []
    for rec in records:
        seq += 1
        row = _row(seq, rec, prev)
        rows.append(row)
        prev = row["hash"]
    conn.execute(sa.insert(audit_log), rows)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    ok: bool
    first_bad_seq: int | None = None
    problem: str = ""


def verify_chain(rows: Iterable[Mapping[str, Any]]) -> ChainReport:
    """Check every entry's hash and link, in sequence order (rows as read from the table)."""
    prev, expected_seq, count = GENESIS, 1, 0
    for row in rows:
        count += 1
        seq = int(str(row["seq"]))
        if seq != expected_seq:
            return ChainReport(count, False, expected_seq, f"entry {expected_seq} is missing")
        if row["prev_hash"] != prev:
            return ChainReport(count, False, seq, f"entry {seq} does not follow entry {seq - 1}")
        rec = AuditRecord(
            at_us=int(str(row["at_us"])),
            event=str(row["event"]),
            actor=str(row["actor"]),
            number_key=str(row["number_key"]),
            outcome=str(row["outcome"]),
            detail=json.loads(str(row["detail"])),
        )
        if entry_hash(seq, rec, prev) != row["hash"]:
            return ChainReport(count, False, seq, f"entry {seq} was changed")
        prev, expected_seq = str(row["hash"]), seq + 1
    return ChainReport(count, True)


def read_chain(engine: sa.Engine) -> ChainReport:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()
        return verify_chain(dict(r) for r in rows)


RETRY_INITIAL = 0.05
"""Seconds before the first retry of a failed flush; doubled per failure up to RETRY_MAX."""
RETRY_MAX = 2.0


class AuditWriter:
    """Queues records and appends them in one transaction per flush (group commit).

    A flush that fails keeps its records, in order, at the head of the queue, and the writer
    retries with backoff until one commits: nothing recorded is dropped while the gateway runs.
    The queue is bounded: at ``max_backlog`` records :meth:`admit` refuses new audited calls
    (UNAVAILABLE ``AUDIT_BACKLOG``) and :meth:`room` holds deliveries back until a flush
    commits, so memory stays bounded however long the database refuses writes.
    """

    def __init__(
        self,
        engine: sa.Engine,
        run: Callable[..., Awaitable[Any]],
        *,
        interval: float = 0.05,
        max_backlog: int = 10_000,
    ) -> None:
        self._engine = engine
        self._run = run
        self._interval = interval
        self._max_backlog = max_backlog
        self._queue: list[AuditRecord] = []
        self._writing = 0
        """Records of the flush under way (still in memory until it commits)."""
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._doubtful = False
        """The last flush failed: it may have committed all the same (its answer lost)."""
        self.failures = 0
        """Flushes in a row that failed (0 once one commits)."""
        self._failing = RetrySummary(
            log, "appending to the audit log failed", "appending to the audit log working again"
        )
        """A refusing database: its first failure, a summary a minute, its recovery."""
        self._flushing = asyncio.Lock()
        """One flush at a time: records stay in order even with several database threads, and
        :meth:`flush` returns only once everything recorded before it is committed."""

    @property
    def max_backlog(self) -> int:
        """The backlog at which new audited work is refused (``limits.audit_max_backlog``)."""
        return self._max_backlog

    @property
    def backlog(self) -> int:
        """Records in memory: queued, or in a flush that has not committed yet."""
        return len(self._queue) + self._writing

    def record(self, rec: AuditRecord) -> None:
        self._queue.append(rec)
        if self.backlog >= self._max_backlog:
            self._room.clear()
        self._wake.set()

    def admit(self) -> None:
        """Refuse new audited work while the backlog is full (UNAVAILABLE ``AUDIT_BACKLOG``)."""
        if self.backlog >= self._max_backlog:
            raise Unavailable(
                "AUDIT_BACKLOG",
                "the gateway's audit log is behind; nothing is accepted that it cannot audit",
                metadata={"backlog": str(self.backlog)},
                retry_after=RETRY_MAX,
            )

    async def room(self) -> None:
        """Return once the backlog is below its bound (deliveries wait here)."""
        while self.backlog >= self._max_backlog:
            self._room.clear()
            await self._room.wait()

    def _append(self, records: list[AuditRecord], doubtful: bool) -> None:
        with self._engine.begin() as conn:
            append(conn, records, unless_tail=doubtful)

    async def flush(self) -> None:
        """Commit every record queued so far; on failure they stay queued and this raises."""
        async with self._flushing:
            batch, self._queue = self._queue, []
            if not batch:
                return
            self._writing = len(batch)
            try:
                await self._run(self._append, batch, self._doubtful)
            except BaseException:
                self._queue[:0] = batch  # kept, in order, ahead of what came meanwhile
                self._doubtful = True
                raise
            finally:
                self._writing = 0
            self._doubtful = False
            if self.backlog < self._max_backlog:
                self._room.set()

    async def run(self) -> None:
        while not self._stopping:
            if self.failures == 0:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(self._interval)
            else:
                delay = backoff_seconds(
                    self.failures - 1, initial=RETRY_INITIAL, maximum=RETRY_MAX, multiplier=2.0
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
            await self._flush_once()

    async def _flush_once(self) -> bool:
        try:
            await self.flush()
        except Exception as exc:
            self.failures += 1
            log.debug("appending to the audit log failed", exc_info=exc)
            self._failing.failed(f"{failure_reason(exc)}; {len(self._queue)} records kept")
            return False
        self.failures = 0
        self._failing.succeeded()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the loop between flushes (never cancelling one), then flush what is left,
        retrying for up to ``grace`` seconds; records still unwritten then are logged."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.error(
                    "stopping while a flush of the audit log still waits for the database; "
                    "%d more records are unwritten",
                    len(self._queue),
                )
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        attempt = 0
        while not await self._flush_once():
            delay = backoff_seconds(attempt, initial=RETRY_INITIAL, maximum=RETRY_MAX, multiplier=2)
            if loop.time() + delay > deadline:
                log.error(
                    "stopping with %d audit records unwritten: the database refused them for "
                    "%.1f s",
                    len(self._queue),
                    grace,
                )
                return
            attempt += 1
            await asyncio.sleep(delay)
