"""Checkpoints of the audit log: signing them, and checking the log against them.

:class:`Checkpointer` signs the head of the *committed* chain with the gateway's audit key, at
most every ``limits.audit_checkpoint_interval`` seconds and only when the chain grew, and stores
the envelope in ``audit_checkpoints`` (one row per size). It reads the head in a transaction of
its own, so a checkpoint never covers an entry that is not committed; entries commit in
sequence order under the chain's append lock, so what it reads is always a prefix. Replicas on
one PostgreSQL read the same table, so any replica that signs size n signs the same head, and
the primary key keeps one envelope per size. It hands out the largest checkpoint stored.

:func:`check_log` is what ``numfed audit verify`` does with the chain and every checkpoint it
is given (the gateway's own and those members exported): a checkpoint larger than the log is
``AUDIT_TRUNCATED``, one whose entry has another hash ``AUDIT_REWRITTEN``, two of one size with
different heads ``AUDIT_EQUIVOCATION``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.audit import ChainReport
from gateway.schema import audit_checkpoints, audit_log
from numfed.checkpoint import Checkpoint, HeadScheme, sign_checkpoint, verify_checkpoint
from numfed.envelope import Envelope, SigningKey
from numfed.errors import NumfedError
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.timeutil import to_us
from numfed.trust import TrustBundle
from numfed.v1 import claim_pb2

__all__ = ["AuditVerdict", "Checkpointer", "Finding", "HeldBy", "check_log", "stored_checkpoints"]

log = logging.getLogger(__name__)

GATEWAY_HOLDER = "the gateway's own audit_checkpoints table"


def _latest(conn: sa.Connection) -> sa.Row[Any, Any, Any] | None:
    c = audit_checkpoints.c
    return conn.execute(
        sa.select(c.size, c.head, c.envelope).order_by(c.size.desc()).limit(1)
    ).first()


class Checkpointer:
    """Signs checkpoints of the committed audit chain and keeps the latest one to hand out."""

    def __init__(
        self,
        engine: sa.Engine,
        run: Callable[..., Awaitable[Any]],
        *,
        signer: SigningKey | None,
        origin: str,
        interval: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._run = run
        self._signer = signer
        self._origin = origin
        self._interval = interval
        self._clock = clock
        self._latest: claim_pb2.Envelope | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = RetrySummary(
            log, "signing an audit checkpoint failed", "signing audit checkpoints working again"
        )

    @property
    def latest(self) -> claim_pb2.Envelope | None:
        """The largest checkpoint stored when last looked (None before any)."""
        return self._latest

    def sign_if_grown(self) -> claim_pb2.Envelope | None:
        """Sign the committed head if it is past the largest checkpoint stored; return the
        largest checkpoint stored afterwards (by any replica).

        Refuses to sign (and logs) when the chain no longer matches that checkpoint: a log cut
        below it or rewritten at it must not be anchored anew.
        """
        c = audit_log.c
        with self._engine.connect() as conn:
            head = conn.execute(sa.select(c.seq, c.hash).order_by(c.seq.desc()).limit(1)).first()
            held = _latest(conn)
            at_held = None
            if held is not None:
                at_held = conn.execute(
                    sa.select(c.hash).where(c.seq == held.size)
                ).scalar_one_or_none()
        if held is not None and at_held != held.head:
            log.error(
                "SECURITY: the audit log no longer holds entry %d as checkpointed (cut or "
                "rewritten); no checkpoint is signed until `numfed audit verify` is clean",
                held.size,
            )
            return self._keep(held)
        if head is None or self._signer is None or (held is not None and head.seq <= held.size):
            return self._keep(held)
        checkpoint = Checkpoint(
            origin=self._origin,
            size=int(head.seq),
            head=bytes.fromhex(str(head.hash)),
            head_scheme=HeadScheme.CHAIN_V1,
            issued_at=self._clock(),
        )
        envelope = sign_checkpoint(checkpoint, self._signer).to_proto()
        with self._engine.begin() as conn:
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
                audit_checkpoints
            )
            conn.execute(
                insert.values(
                    size=checkpoint.size,
                    head=str(head.hash),
                    issued_us=to_us(checkpoint.issued_at),
                    envelope=envelope.SerializeToString(deterministic=True),
                ).on_conflict_do_nothing(index_elements=[audit_checkpoints.c.size])
            )  # another replica signed this size first: the same head, its envelope stays
            return self._keep(_latest(conn))

    def _keep(self, row: sa.Row[Any, Any, Any] | None) -> claim_pb2.Envelope | None:
        if row is not None:
            self._latest = claim_pb2.Envelope.FromString(bytes(row.envelope))
        return self._latest

    async def checkpoint(self) -> claim_pb2.Envelope | None:
        """Sign now if the chain grew (on a database thread)."""
        result: claim_pb2.Envelope | None = await self._run(self.sign_if_grown)
        return result

    async def run(self) -> None:
        while True:
            try:
                await self.checkpoint()
                self._failing.succeeded()
            except Exception as exc:
                log.debug("signing an audit checkpoint failed", exc_info=exc)
                self._failing.failed(failure_reason(exc))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._signer is None:
            log.warning(
                "no audit key in the PKI (gateway/<id>/audit.key.pem): the audit log is not "
                "checkpointed, so a cut at its tail cannot be detected"
            )
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """Stop the loop, then sign what the last flush committed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.checkpoint()
        except Exception as exc:
            log.warning("signing the last audit checkpoint failed (%s)", exc)


def stored_checkpoints(conn: sa.Connection) -> list[Envelope]:
    """Every checkpoint in the gateway's own table, by size."""
    c = audit_checkpoints.c
    rows = conn.execute(sa.select(c.envelope).order_by(c.size)).all()
    return [Envelope.from_proto(claim_pb2.Envelope.FromString(bytes(r.envelope))) for r in rows]


@dataclass(frozen=True)
class HeldBy:
    """A checkpoint envelope and who held it (a member's id, or the gateway's table)."""

    envelope: Envelope
    holder: str


@dataclass(frozen=True)
class Finding:
    """One problem :func:`check_log` found. ``reason`` is UPPER_SNAKE; ``evidence`` holds the
    envelopes that show it."""

    reason: str
    message: str
    evidence: tuple[HeldBy, ...] = ()

    def envelopes_b64(self) -> list[str]:
        return [
            base64.b64encode(h.envelope.to_proto().SerializeToString(deterministic=True)).decode()
            for h in self.evidence
        ]


@dataclass(frozen=True)
class AuditVerdict:
    """What ``numfed audit verify`` found: the chain walk, the problems, and how much of the
    log the checkpoints anchor."""

    chain: ChainReport
    entries: int
    """The largest sequence number in the table (0: empty)."""
    checkpoints: int
    """Checkpoints that verified (the gateway's and members', each counted once)."""
    anchored: int
    """The largest checkpoint size that matches the log (0: none)."""
    findings: tuple[Finding, ...]

    @property
    def unanchored(self) -> int:
        """Entries after the largest matching checkpoint: a cut among them would not show."""
        return max(self.entries - self.anchored, 0)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.findings


def check_log(
    *,
    chain: ChainReport,
    entries: int,
    hash_at: Callable[[Iterable[int]], dict[int, str]],
    held: Sequence[HeldBy],
    bundle: TrustBundle,
    origin: str,
) -> AuditVerdict:
    """Check every checkpoint in ``held`` against the log, then against one another.

    ``entries`` is the largest sequence number in the log; ``hash_at(sizes)`` returns the
    stored hash of each of those entries that exists. A checkpoint that does not verify
    (another origin, an unknown or expired key, a bad signature) proves nothing and is
    reported as ``CHECKPOINT_REFUSED``.
    """
    findings: list[Finding] = []
    good: list[tuple[Checkpoint, HeldBy]] = []
    holders: dict[bytes, tuple[Envelope, list[str]]] = {}
    for h in held:  # one envelope held by several is checked once, naming them all
        key = h.envelope.to_proto().SerializeToString(deterministic=True)
        holders.setdefault(key, (h.envelope, []))[1].append(h.holder)
    for envelope, names in holders.values():
        h = HeldBy(envelope, ", ".join(dict.fromkeys(names)))
        try:
            good.append((verify_checkpoint(h.envelope, bundle, origin=origin), h))
        except NumfedError as err:
            findings.append(
                Finding(
                    "CHECKPOINT_REFUSED",
                    f"a checkpoint held by {h.holder} does not verify: {err.reason}: {err.message}",
                    (h,),
                )
            )
    hashes = hash_at(sorted({cp.size for cp, _h in good}))
    anchored = 0
    for cp, h in sorted(good, key=lambda g: g[0].size):
        if cp.size > entries:
            first = entries + 1
            findings.append(
                Finding(
                    "AUDIT_TRUNCATED",
                    f"entries {first:,}-{cp.size:,} missing; checkpoint of size {cp.size:,} "
                    f"held by {h.holder}",
                    (h,),
                )
            )
        elif hashes.get(cp.size) is None:
            findings.append(
                Finding(
                    "AUDIT_TRUNCATED",
                    f"entry {cp.size:,} missing; checkpoint of size {cp.size:,} held by {h.holder}",
                    (h,),
                )
            )
        elif hashes[cp.size] != cp.head.hex():
            findings.append(
                Finding(
                    "AUDIT_REWRITTEN",
                    f"entry {cp.size:,} has hash {hashes[cp.size][:16]}…, the checkpoint held "
                    f"by {h.holder} says {cp.head.hex()[:16]}…: entries 1-{cp.size:,} were "
                    "rewritten",
                    (h,),
                )
            )
        else:
            anchored = max(anchored, cp.size)
    by_size: dict[int, dict[bytes, HeldBy]] = defaultdict(dict)
    for cp, h in good:
        by_size[cp.size].setdefault(cp.head, h)
    for size, heads in sorted(by_size.items()):
        if len(heads) > 1:
            pair = tuple(heads.values())
            who = " and ".join(sorted({p.holder for p in pair}))
            findings.append(
                Finding(
                    "AUDIT_EQUIVOCATION",
                    f"{len(heads)} different heads signed for size {size:,} (held by {who})",
                    pair,
                )
            )
    return AuditVerdict(chain, entries, len(good), anchored, tuple(findings))
