"""The gateway's audit log: append-only, hash-chained, pseudonymous.

Every entry carries the hash of the one before it; an entry's own hash covers its sequence
number, time, event, actor, pseudonymised number, outcome, details and the previous hash. So
changing, removing or reordering any entry breaks the chain from that entry on, and
:func:`verify_chain` says where. Numbers appear only as keyed HMAC pseudonyms; names and ID
numbers never reach the gateway at all.
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

from gateway.schema import audit_log
from numfed.db import serialize

__all__ = [
    "GENESIS",
    "AuditRecord",
    "AuditWriter",
    "ChainReport",
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


def append(conn: sa.Connection, records: Sequence[AuditRecord]) -> None:
    """Chain ``records`` after the newest entry, inside the caller's transaction."""
    if not records:
        return
    serialize(conn, AUDIT_LOCK)  # replicas on one PostgreSQL chain one after another
    last = conn.execute(
        sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
    rows = []
    for rec in records:
        seq += 1
        h = entry_hash(seq, rec, prev)
        rows.append(
            {
                "seq": seq,
                "at_us": rec.at_us,
                "event": rec.event,
                "actor": rec.actor,
                "number_key": rec.number_key,
                "outcome": rec.outcome,
                "detail": json.dumps(dict(rec.detail), sort_keys=True, ensure_ascii=False),
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
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


class AuditWriter:
    """Queues records and appends them in one transaction per flush (group commit)."""

    def __init__(
        self, engine: sa.Engine, run: Callable[..., Awaitable[Any]], *, interval: float = 0.05
    ) -> None:
        self._engine = engine
        self._run = run
        self._interval = interval
        self._queue: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        """One flush at a time: records stay in order even with several database threads, and
        :meth:`flush` returns only once everything recorded before it is committed."""

    def record(self, rec: AuditRecord) -> None:
        self._queue.append(rec)
        self._wake.set()

    def _append(self, records: list[AuditRecord]) -> None:
        with self._engine.begin() as conn:
            append(conn, records)

    async def flush(self) -> None:
        async with self._flushing:
            batch, self._queue = self._queue, []
            if batch:
                await self._run(self._append, batch)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("appending to the audit log failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
