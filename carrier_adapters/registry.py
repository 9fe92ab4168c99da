"""A carrier's subscriber registry on SQLite: its subscribers and the history of its numbers.

It stands in for the carrier's own subscriber system. Names and ID numbers live here and
nowhere else in the federation. The file sits in the adapter's state directory (WAL mode); the
histories are read into memory at start and after each write.

What a carrier knows: every number whose history touches it (it served the number at some
point, ported in or out) with the whole history, because a ported-in number's X is its
assignment at the previous carrier. Personal details only of the holders who were its own
subscribers: a ported-in number's earlier holders at another carrier are never copied here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from numfed.errors import AlreadyExists, InvalidArgument, NotFound
from numfed.history import MIN_QUIET_PERIOD, EventKind, NumberEvent, NumberHistory
from numfed.scenario import Holder, Scenario
from numfed.timeutil import from_us, to_us

__all__ = ["CurrentHolder", "SubscriberRegistry", "seed_from_scenario", "subscribers_of"]

_md = sa.MetaData()
subscribers = sa.Table(
    "subscribers",
    _md,
    sa.Column("holder_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("id_number", sa.String(18), nullable=False),
)
number_events = sa.Table(
    "number_events",
    _md,
    sa.Column("number", sa.String(20), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    sa.Column("carrier_id", sa.String(32), nullable=False),
    sa.Column("holder_id", sa.String(32), nullable=True),
)


@dataclass(frozen=True)
class CurrentHolder:
    """Who holds a number now, and since when (X; a port does not move it)."""

    holder: Holder
    tenure_start: datetime


def subscribers_of(carrier_id: str, history: NumberHistory) -> set[str]:
    """Holders of ``history`` who held the number while ``carrier_id`` served it."""
    out: set[str] = set()
    holder: str | None = None
    for e in history.events:
        if e.kind is EventKind.ASSIGNED:
            holder = e.holder_id
        elif e.kind is EventKind.DEACTIVATED:
            holder = None
        if holder is not None and e.carrier_id == carrier_id:
            out.add(holder)
    return out


def _check_quiet_period(history: NumberHistory, carrier_id: str, quiet: timedelta) -> None:
    """This carrier reassigns a deactivated number only after its own quiet period."""
    deactivated: datetime | None = None
    for e in history.events:
        if e.kind is EventKind.DEACTIVATED:
            deactivated = e.at
        elif (
            e.kind is EventKind.ASSIGNED
            and e.carrier_id == carrier_id
            and deactivated is not None
            and e.at - deactivated < quiet
        ):
            raise InvalidArgument(
                "QUIET_PERIOD",
                f"{history.number} reassigned {e.at - deactivated} after deactivation; "
                f"{carrier_id} waits {quiet.days} days",
            )


def _wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class SubscriberRegistry:
    def __init__(
        self, path: Path, carrier_id: str, *, quiet_period: timedelta = MIN_QUIET_PERIOD
    ) -> None:
        if quiet_period < MIN_QUIET_PERIOD:
            raise InvalidArgument("BAD_CONFIG", f"a quiet period is at least {MIN_QUIET_PERIOD}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.carrier_id = carrier_id
        self.quiet_period = quiet_period
        self.engine = sa.create_engine(f"sqlite:///{path}")
        sa.event.listen(self.engine, "connect", _wal)
        _md.create_all(self.engine)
        self._histories: dict[str, NumberHistory] = {}
        self._holders: dict[str, Holder] = {}
        self._load()

    def _load(self) -> None:
        with self.engine.connect() as c:
            holders = {
                r.holder_id: Holder(r.holder_id, r.name, r.id_number)
                for r in c.execute(sa.select(subscribers))
            }
            events: dict[str, list[NumberEvent]] = {}
            q = sa.select(number_events).order_by(number_events.c.number, number_events.c.seq)
            for r in c.execute(q):
                events.setdefault(r.number, []).append(
                    NumberEvent(EventKind(r.kind), from_us(r.at_us), r.carrier_id, r.holder_id)
                )
        self._holders = holders
        self._histories = {n: NumberHistory(n, tuple(e)) for n, e in events.items()}

    def is_empty(self) -> bool:
        return not self._histories

    def seed(self, holders: Iterable[Holder], histories: Iterable[NumberHistory]) -> None:
        """Record new subscribers and numbers in one transaction; all or nothing."""
        histories = list(histories)
        for hist in histories:
            if not any(e.carrier_id == self.carrier_id for e in hist.events):
                raise InvalidArgument("NOT_OUR_NUMBER", f"{self.carrier_id} never served it")
            _check_quiet_period(hist, self.carrier_id, self.quiet_period)
        people = [
            {"holder_id": h.holder_id, "name": h.name, "id_number": h.id_number} for h in holders
        ]
        events = [
            {
                "number": hist.number,
                "seq": seq,
                "kind": e.kind.value,
                "at_us": to_us(e.at),
                "carrier_id": e.carrier_id,
                "holder_id": e.holder_id,
            }
            for hist in histories
            for seq, e in enumerate(hist.events)
        ]
        try:
            with self.engine.begin() as c:
                if people:
                    c.execute(sa.insert(subscribers), people)
                if events:
                    c.execute(sa.insert(number_events), events)
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists("ALREADY_RECORDED", "a subscriber or number is known") from exc
        self._load()

    def histories(self) -> list[NumberHistory]:
        """Every number this carrier knows, sorted by number."""
        return [self._histories[n] for n in sorted(self._histories)]

    def history(self, number: str) -> NumberHistory:
        h = self._histories.get(number)
        if h is None:
            raise NotFound("UNKNOWN_NUMBER", "this carrier has no record of the number")
        return h

    def holder(self, holder_id: str) -> Holder:
        h = self._holders.get(holder_id)
        if h is None:
            raise NotFound("UNKNOWN_HOLDER", "not a subscriber of this carrier")
        return h

    def current_holder(self, number: str, now: datetime) -> CurrentHolder:
        """The subscriber holding ``number`` at ``now`` if this carrier serves it, and X.

        Rules: CARR-CLAIM-2, CARR-CLAIM-4.
        """
        history = self.history(number)
        if history.carrier_at(now) != self.carrier_id:
            raise NotFound("NUMBER_NOT_SERVED", "this carrier does not serve the number")
        tenure = history.current_tenure(now)
        if tenure is None:
            raise NotFound("NO_CURRENT_HOLDER", "the number has no holder")
        return CurrentHolder(self.holder(tenure.holder_id), tenure.start)

    def served_numbers(self, now: datetime) -> list[str]:
        """Every number this carrier serves at ``now``, sorted: held ones and those between
        holders (in the quiet period). The gateway's portability registry records who serves a
        number, which a carrier's lifecycle events need for numbers without a holder too; a
        claim needs a current holder anyway, and only a verified one gets one.

        Rule CARR-NUM-1.
        """
        return sorted(n for n, h in self._histories.items() if h.carrier_at(now) == self.carrier_id)

    def close(self) -> None:
        self.engine.dispose()


def seed_from_scenario(registry: SubscriberRegistry, world: Scenario) -> None:
    """Seed from the demo world: the numbers whose history touches the carrier, and the
    personal details of its own subscribers only."""
    known = world.histories_known_to(registry.carrier_id)
    ours = set().union(*(subscribers_of(registry.carrier_id, h) for h in known))
    registry.seed([world.holders[h] for h in sorted(ours)], known)
