"""A platform's accounts and bindings on SQLite (SQLAlchemy Core), with releases applied once,
lifecycle events applied once each, and the event batches it set aside (dead letters)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from numfed.db import DbThread, sqlite_engine
from numfed.events import EventKind, LifecycleEvent
from numfed.portability import NumberPlan, serving_carrier
from numfed.portstate import PortStore, port_tables
from numfed.timeutil import from_us, to_us
from platform_stubs.rules import Binding

__all__ = ["AppliedRelease", "DeadLetter", "PlatformStore"]

P = ParamSpec("P")
R = TypeVar("R")

_md = sa.MetaData()
accounts = sa.Table(
    "accounts",
    _md,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("nickname", sa.String(128), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)
bindings = sa.Table(
    "bindings",
    _md,
    sa.Column("binding_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("number", sa.String(20), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("bound_us", sa.BigInteger, nullable=False),
    sa.Column("released_us", sa.BigInteger, nullable=True),
    sa.Column("stale", sa.Boolean, nullable=False, default=False),
)
applied_releases = sa.Table(
    "applied_releases",
    _md,
    sa.Column("claim_id", sa.LargeBinary(16), primary_key=True),
    sa.Column("result", sa.LargeBinary, nullable=False),
    sa.Column("applied_us", sa.BigInteger, nullable=False),
    sa.Column("replays", sa.Integer, nullable=False, default=0),
)


applied_events = sa.Table(
    "applied_events",
    _md,
    sa.Column("event_id", sa.LargeBinary(16), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("applied_us", sa.BigInteger, nullable=False),
    sa.Column("order", sa.Integer, nullable=False),
)


dead_letters = sa.Table(
    "dead_letters",
    _md,
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("last_seen_us", sa.BigInteger, nullable=False),
)
"""Event batches the platform acknowledged without applying them: refused for a final reason,
or still not judged after the bounded retries. Kept until a replay applies them."""


port_state_tables = port_tables(_md)
"""Completed ports and pending halves, by number: who serves each number (docs/authority.md)."""


_IDS_PER_STATEMENT = 10_000
"""Binding ids per UPDATE (SQLite allows 32,766 bound parameters per statement)."""


def _us(t: datetime) -> int:
    return to_us(t)


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def _dead_letter(r: sa.Row[Any]) -> DeadLetter:
    return DeadLetter(
        seq=r.seq,
        envelope=bytes(r.envelope),
        reason=r.reason,
        attempts=r.attempts,
        first_seen=from_us(r.first_seen_us),
        last_seen=from_us(r.last_seen_us),
    )


@dataclass(frozen=True)
class AppliedRelease:
    """One claim's release as applied (or replayed) by the store."""

    claim_id: bytes
    result: bytes
    replayed: bool


@dataclass(frozen=True)
class DeadLetter:
    """An event batch set aside: the signed envelope as delivered, why, and how often tried."""

    seq: int
    envelope: bytes
    reason: str
    attempts: int
    first_seen: datetime
    last_seen: datetime


Selector = Callable[[list[Binding]], tuple[list[int], bytes]]
"""Given the number's bindings, choose the binding ids to release and the result to store."""


class PlatformStore:
    def __init__(self, path: Path) -> None:
        self.engine = sqlite_engine(path)
        self._thread = DbThread("platform-db")
        self.run = self._thread.run
        self.ports = PortStore(port_state_tables)
        _md.create_all(self.engine)

    def close(self) -> None:
        self._thread.close()
        self.engine.dispose()

    def is_empty(self) -> bool:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one() == 0

    def add_account(self, account_id: str, nickname: str, created: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(
                sa.insert(accounts).values(
                    account_id=account_id, nickname=nickname, created_us=_us(created)
                )
            )

    def seed(self, rows: Iterable[tuple[str, str, str, str, datetime]]) -> None:
        """(account_id, nickname, number, kind, bound_at) rows; one account per row. In bulk,
        in one transaction (a number marked by 90,000 users takes a second or two)."""
        rows = list(rows)
        if not rows:
            return
        with self.engine.begin() as c:
            c.execute(
                sa.insert(accounts),
                [
                    {"account_id": a, "nickname": nick, "created_us": _us(at)}
                    for a, nick, _number, _kind, at in rows
                ],
            )
            c.execute(
                sa.insert(bindings),
                [
                    {
                        "account_id": a,
                        "number": number,
                        "kind": kind,
                        "bound_us": _us(at),
                        "released_us": None,
                        "stale": False,
                    }
                    for a, _nick, number, kind, at in rows
                ],
            )

    def reset(self) -> int:
        """Conformance mode only: remove every account, binding, applied release or event and
        dead letter."""
        with self.engine.begin() as c:
            removed = c.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one()
            for table in (dead_letters, applied_events, applied_releases, bindings, accounts):
                c.execute(sa.delete(table))
        return int(removed)

    def seed_accounts(
        self,
        new_accounts: Sequence[tuple[str, str, datetime]],
        new_bindings: Sequence[tuple[str, str, str, datetime]],
    ) -> int:
        """Conformance mode only: (account_id, nickname, created) accounts and (account_id,
        number, kind, bound_at) bindings, all in one transaction; returns bindings created."""
        with self.engine.begin() as c:
            for account_id, nickname, created in new_accounts:
                c.execute(
                    sa.insert(accounts).values(
                        account_id=account_id, nickname=nickname, created_us=_us(created)
                    )
                )
            for account_id, number, kind, bound_at in new_bindings:
                c.execute(
                    sa.insert(bindings).values(
                        account_id=account_id,
                        number=number,
                        kind=kind,
                        bound_us=_us(bound_at),
                        released_us=None,
                        stale=False,
                    )
                )
        return len(new_bindings)

    def accounts_with_bindings(self, account_ids: Sequence[str]) -> dict[str, list[Binding] | None]:
        """Each account's bindings, released ones included; None for an unknown account."""
        out: dict[str, list[Binding] | None] = {}
        with self.engine.connect() as c:
            known = {
                r.account_id
                for r in c.execute(
                    sa.select(accounts.c.account_id).where(accounts.c.account_id.in_(account_ids))
                )
            }
            rows = c.execute(
                sa.select(bindings, accounts.c.nickname)
                .join(accounts, accounts.c.account_id == bindings.c.account_id)
                .where(bindings.c.account_id.in_(account_ids))
                .order_by(bindings.c.binding_id)
            ).all()
        for a in account_ids:
            out[a] = [] if a in known else None
        for r in rows:
            found = out[r.account_id]
            assert found is not None
            found.append(
                Binding(
                    binding_id=r.binding_id,
                    account_id=r.account_id,
                    nickname=r.nickname,
                    number=r.number,
                    kind=r.kind,
                    bound_at=_dt(r.bound_us) or datetime.min,
                    released_at=_dt(r.released_us),
                    stale=bool(r.stale),
                )
            )
        return out

    def bindings_for(self, numbers: Sequence[str]) -> dict[str, list[Binding]]:
        out: dict[str, list[Binding]] = {n: [] for n in numbers}
        if not numbers:
            return out
        with self.engine.connect() as c:
            for n in numbers:  # one indexed lookup each; IN lists are capped on SQLite
                out[n] = self._bindings(c, n)
        return out

    def _bindings(self, c: sa.Connection, number: str) -> list[Binding]:
        q = (
            sa.select(bindings, accounts.c.nickname)
            .join(accounts, accounts.c.account_id == bindings.c.account_id)
            .where(bindings.c.number == number)
            .order_by(bindings.c.binding_id)
        )
        return [
            Binding(
                binding_id=r.binding_id,
                account_id=r.account_id,
                nickname=r.nickname,
                number=r.number,
                kind=r.kind,
                bound_at=_dt(r.bound_us) or datetime.min,
                released_at=_dt(r.released_us),
                stale=bool(r.stale),
            )
            for r in c.execute(q)
        ]

    def apply_releases(
        self, work: Sequence[tuple[bytes, str, Selector]], now: datetime
    ) -> list[AppliedRelease]:
        """Apply each (claim_id, number, selector) once, all in one transaction.

        A claim applied before is answered from its stored result (``replayed``) and changes
        nothing; otherwise the selected bindings get ``released_at`` (the account remains).

        The stored result is the selector's, which the SDK bounds (merged, capped summaries),
        so however many bindings one claim released, every replay of it is small; the
        bindings are updated in slices, so no number of them exceeds SQLite's limit on bound
        parameters.

        Rules: PLAT-REL-2, PLAT-REL-3.
        """
        out: list[AppliedRelease] = []
        with self.engine.begin() as c:
            for claim_id, number, select in work:
                done = c.execute(
                    sa.select(applied_releases.c.result).where(
                        applied_releases.c.claim_id == claim_id
                    )
                ).first()
                if done is not None:
                    c.execute(
                        sa.update(applied_releases)
                        .where(applied_releases.c.claim_id == claim_id)
                        .values(replays=applied_releases.c.replays + 1)
                    )
                    out.append(AppliedRelease(claim_id, done.result, True))
                    continue
                ids, result = select(self._bindings(c, number))
                for i in range(0, len(ids), _IDS_PER_STATEMENT):
                    c.execute(
                        sa.update(bindings)
                        .where(
                            bindings.c.binding_id.in_(ids[i : i + _IDS_PER_STATEMENT]),
                            bindings.c.released_us.is_(None),
                        )
                        .values(released_us=_us(now))
                    )
                c.execute(
                    sa.insert(applied_releases).values(
                        claim_id=claim_id, result=result, applied_us=_us(now), replays=0
                    )
                )
                out.append(AppliedRelease(claim_id, result, False))
        return out

    def apply_events(
        self,
        seq: int,
        signer: str,
        events: Sequence[LifecycleEvent],
        now: datetime,
        plan: NumberPlan,
    ) -> int:
        """Judge one batch signed by carrier ``signer``, then apply its events once each (by
        event_id), in one transaction.

        The batch is judged first, against the ports this platform has seen (docs/authority.md):
        PORTED halves move a number once both carriers' are in; every other event must come
        from the number's serving carrier, or PermissionDenied is raised and nothing of the
        batch is applied. The gateway judges the same way, but a platform does not trust it.

        REASSIGNED(X): the number's active bindings made before X become stale (an SMS code
        alone no longer opens them). PENDING_RELEASE(as_of): the number is released from
        bindings made before as_of, and only those, so a late event never touches a binding
        a new holder made since. Returns how many events were new.

        A batch whose every event was applied before is a repeat (a lost acknowledgement, a
        replay): it changes nothing and is not judged again, since the log has moved on since
        it was judged the first time.

        Rules: PLAT-EVT-4, PLAT-EVT-7, PLAT-EVT-8, PLAT-EVT-9, PLAT-EVT-10.
        """
        with self.engine.begin() as c:
            ids = [e.event_id for e in events]
            seen = set(
                c.execute(
                    sa.select(applied_events.c.event_id).where(applied_events.c.event_id.in_(ids))
                ).scalars()
            )
            if seen >= set(ids):
                return 0
            judgement = self.ports.judge(c, signer, events, plan)
            self.ports.save(c, judgement, seq, _us(now))
            order = c.execute(
                sa.select(sa.func.coalesce(sa.func.max(applied_events.c.order), 0))
            ).scalar_one()
            rows = []
            for e in events:
                if e.event_id in seen:
                    continue
                seen.add(e.event_id)  # a batch naming one event twice applies it once
                active = sa.and_(bindings.c.number == e.number, bindings.c.released_us.is_(None))
                if e.kind is EventKind.REASSIGNED and e.tenure_start is not None:
                    c.execute(
                        sa.update(bindings)
                        .where(active, bindings.c.bound_us < _us(e.tenure_start))
                        .values(stale=True)
                    )
                elif e.kind is EventKind.PENDING_RELEASE and e.as_of is not None:
                    c.execute(
                        sa.update(bindings)
                        .where(active, bindings.c.bound_us < _us(e.as_of))
                        .values(released_us=_us(now))
                    )
                order += 1
                rows.append(
                    {
                        "event_id": e.event_id,
                        "seq": seq,
                        "number": e.number,
                        "kind": e.kind.name,
                        "applied_us": _us(now),
                        "order": order,
                    }
                )
            if rows:
                c.execute(sa.insert(applied_events), rows)
        new = len(rows)
        return new

    def set_aside(
        self,
        seq: int,
        envelope: bytes,
        reason: str,
        attempts: int,
        first_seen: datetime,
        now: datetime,
    ) -> DeadLetter:
        """Put batch ``seq`` on the dead-letter list, or count ``attempts`` more tries of one
        already there (its latest reason kept); returns the entry as stored."""
        with self.engine.begin() as c:
            row = c.execute(sa.select(dead_letters).where(dead_letters.c.seq == seq)).first()
            if row is None:
                c.execute(
                    sa.insert(dead_letters).values(
                        seq=seq,
                        envelope=envelope,
                        reason=reason,
                        attempts=attempts,
                        first_seen_us=_us(first_seen),
                        last_seen_us=_us(now),
                    )
                )
            else:
                c.execute(
                    sa.update(dead_letters)
                    .where(dead_letters.c.seq == seq)
                    .values(
                        reason=reason,
                        attempts=dead_letters.c.attempts + attempts,
                        last_seen_us=_us(now),
                    )
                )
            stored = c.execute(sa.select(dead_letters).where(dead_letters.c.seq == seq)).one()
        return _dead_letter(stored)

    def dead_letters(self, seqs: Sequence[int] | None = None) -> list[DeadLetter]:
        """The dead letters (only those of ``seqs``, if given), oldest seq first."""
        q = sa.select(dead_letters).order_by(dead_letters.c.seq)
        if seqs is not None:
            q = q.where(dead_letters.c.seq.in_(list(seqs)))
        with self.engine.connect() as c:
            return [_dead_letter(r) for r in c.execute(q)]

    def dead_letter_count(self) -> int:
        """How many event batches are on the dead-letter list now."""
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one())

    def dead_letter_seqs(self, seqs: Sequence[int]) -> set[int]:
        """Which of ``seqs`` are on the dead-letter list."""
        with self.engine.connect() as c:
            return set(
                c.execute(
                    sa.select(dead_letters.c.seq).where(dead_letters.c.seq.in_(list(seqs)))
                ).scalars()
            )

    def take_back(self, seq: int) -> bool:
        """Remove batch ``seq`` from the dead-letter list (it has been applied)."""
        with self.engine.begin() as c:
            return c.execute(sa.delete(dead_letters).where(dead_letters.c.seq == seq)).rowcount > 0

    def serving_carriers(self, numbers: Sequence[str], plan: NumberPlan) -> dict[str, str | None]:
        """Who serves each of ``numbers`` as far as this platform has seen the event log."""
        with self.engine.connect() as c:
            states = self.ports.load(c, numbers)
        return {n: serving_carrier(n, states.get(n), plan) for n in numbers}

    def applied_event_ids(self) -> list[bytes]:
        """Event ids in the order they were applied."""
        with self.engine.connect() as c:
            return [
                bytes(r.event_id)
                for r in c.execute(
                    sa.select(applied_events.c.event_id).order_by(applied_events.c.order)
                )
            ]

    def login_by_sms(self, number: str, account_id: str) -> bool:
        """Would an SMS code sent to ``number`` open ``account_id``? Not if the binding is
        released, or stale because the number has a new holder."""
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(bindings.c.stale, bindings.c.released_us).where(
                    bindings.c.number == number, bindings.c.account_id == account_id
                )
            ).first()
        return row is not None and row.released_us is None and not row.stale

    def replay_releases(self, claim_ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored first results of those claims that were applied, each counted a replay.

        Applies nothing: it answers the retry of a release whose claim expired after it was
        applied (the first answer was lost); a claim never applied is simply absent.
        """
        out: dict[bytes, bytes] = {}
        with self.engine.begin() as c:
            for claim_id in dict.fromkeys(claim_ids):
                row = c.execute(
                    sa.select(applied_releases.c.result).where(
                        applied_releases.c.claim_id == claim_id
                    )
                ).first()
                if row is None:
                    continue
                c.execute(
                    sa.update(applied_releases)
                    .where(applied_releases.c.claim_id == claim_id)
                    .values(replays=applied_releases.c.replays + 1)
                )
                out[claim_id] = row.result
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table, and released bindings (for tests and the demo)."""
        with self.engine.connect() as c:
            return {
                "accounts": c.execute(
                    sa.select(sa.func.count()).select_from(accounts)
                ).scalar_one(),
                "bindings": c.execute(
                    sa.select(sa.func.count()).select_from(bindings)
                ).scalar_one(),
                "released": c.execute(
                    sa.select(sa.func.count())
                    .select_from(bindings)
                    .where(bindings.c.released_us.is_not(None))
                ).scalar_one(),
                "applied": c.execute(
                    sa.select(sa.func.count()).select_from(applied_releases)
                ).scalar_one(),
                "replays": c.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(applied_releases.c.replays), 0))
                ).scalar_one(),
            }
