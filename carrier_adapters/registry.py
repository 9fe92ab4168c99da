"""A carrier's subscriber registry on SQLite: who holds each number, and its history.

Names and ID numbers live here and nowhere else in the federation.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from numfed.errors import NotFound
from numfed.history import EventKind, NumberEvent, NumberHistory
from numfed.scenario import Holder
from numfed.timeutil import from_us, to_us

__all__ = ["SubscriberRegistry"]

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


def _us(t: datetime) -> int:
    return to_us(t)


class SubscriberRegistry:
    """Histories are read into memory at start; the database is their durable copy."""

    def __init__(self, path: Path, carrier_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.carrier_id = carrier_id
        self.engine = sa.create_engine(f"sqlite:///{path}")
        _md.create_all(self.engine)
        self._histories: dict[str, NumberHistory] = {}
        self._holders: dict[str, Holder] = {}
        self._load()

    def _load(self) -> None:
        with self.engine.connect() as c:
            self._holders = {
                r.holder_id: Holder(r.holder_id, r.name, r.id_number)
                for r in c.execute(sa.select(subscribers))
            }
            events: dict[str, list[NumberEvent]] = {}
            q = sa.select(number_events).order_by(number_events.c.number, number_events.c.seq)
            for r in c.execute(q):
                events.setdefault(r.number, []).append(
                    NumberEvent(
                        EventKind(r.kind),
                        from_us(r.at_us),
                        r.carrier_id,
                        r.holder_id,
                    )
                )
        self._histories = {n: NumberHistory(n, tuple(e)) for n, e in events.items()}

    def is_empty(self) -> bool:
        return not self._histories

    def seed(self, holders: Iterable[Holder], histories: Iterable[NumberHistory]) -> None:
        with self.engine.begin() as c:
            for h in holders:
                c.execute(
                    sa.insert(subscribers).values(
                        holder_id=h.holder_id, name=h.name, id_number=h.id_number
                    )
                )
            for hist in histories:
                for seq, e in enumerate(hist.events):
                    c.execute(
                        sa.insert(number_events).values(
                            number=hist.number,
                            seq=seq,
                            kind=e.kind.value,
                            at_us=_us(e.at),
                            carrier_id=e.carrier_id,
                            holder_id=e.holder_id,
                        )
                    )
        self._load()

    def history(self, number: str) -> NumberHistory:
        h = self._histories.get(number)
        if h is None:
            raise NotFound("UNKNOWN_NUMBER", "this carrier has no record of the number")
        return h

    def holder(self, holder_id: str) -> Holder:
        return self._holders[holder_id]

    def served_numbers(self, now: datetime) -> list[str]:
        """Numbers this carrier serves now (held by a subscriber, ported in or not), sorted."""
        return sorted(
            n
            for n, h in self._histories.items()
            if h.carrier_at(now) == self.carrier_id and h.current_tenure(now) is not None
        )
