"""A number's life at the carriers: who held it, when, and which carrier served it.

Plain domain rules, shared by carrier adapters (which answer from it), the demo scenario and the
property tests. The one rule everything rests on: a holder's tenure starts when the number was
assigned to them, and a port between carriers does not move it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from numfed.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange

__all__ = [
    "MIN_QUIET_PERIOD",
    "EventKind",
    "NumberEvent",
    "NumberHistory",
    "RecycledAnswer",
    "Tenure",
    "day_end",
]

MIN_QUIET_PERIOD = timedelta(days=90)
"""A deactivated number waits at least this long before it is assigned to someone new."""


class EventKind(enum.Enum):
    ASSIGNED = "assigned"
    DEACTIVATED = "deactivated"
    PORTED = "ported"


@dataclass(frozen=True)
class NumberEvent:
    """One step in a number's life. ``carrier_id`` is the carrier serving it after the event."""

    kind: EventKind
    at: datetime
    carrier_id: str
    holder_id: str | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise InvalidArgument("NAIVE_TIMESTAMP", "event times must be timezone-aware UTC")
        if (self.kind is EventKind.ASSIGNED) != (self.holder_id is not None):
            raise InvalidArgument("BAD_EVENT", "exactly the ASSIGNED events name a holder")


@dataclass(frozen=True)
class Tenure:
    """One holder's time with a number: [start, end), end None while it lasts."""

    holder_id: str
    start: datetime
    end: datetime | None

    def covers(self, t: datetime) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


def day_end(day: date, zone: tzinfo) -> datetime:
    """The end of ``day`` in ``zone``: the midnight that starts the next day, in UTC."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class RecycledAnswer:
    """The answer to "has the number changed holder after the end of ``day``?"."""

    day: date
    """The calendar day asked about, in the carrier's time zone."""
    as_of: datetime
    """The moment the answer is for: the end of ``day``, or now if ``day`` has not ended."""
    changed: bool


@dataclass(frozen=True)
class NumberHistory:
    """The ordered events of one number, checked when built.

    Rules: events in time order; a number is assigned only when it has no holder, and, after a
    deactivation, only once the quiet period has passed; deactivation and ports need a holder;
    a port moves the number to another carrier and keeps the holder (and their tenure start).
    """

    number: str
    events: tuple[NumberEvent, ...]
    quiet_period: timedelta = MIN_QUIET_PERIOD

    def __post_init__(self) -> None:
        holder: str | None = None
        carrier: str | None = None
        last: datetime | None = None
        deactivated_at: datetime | None = None
        for e in self.events:
            if last is not None and e.at < last:
                raise InvalidArgument("EVENTS_OUT_OF_ORDER", f"{self.number}: events out of order")
            last = e.at
            if e.kind is EventKind.ASSIGNED:
                if holder is not None:
                    raise InvalidArgument("ALREADY_HELD", f"{self.number} is held at {e.at}")
                if deactivated_at is not None and e.at - deactivated_at < self.quiet_period:
                    raise InvalidArgument(
                        "QUIET_PERIOD", f"{self.number} reassigned within the quiet period"
                    )
                if carrier is not None and e.carrier_id != carrier:
                    raise InvalidArgument(
                        "WRONG_CARRIER", "a free number is reassigned by its carrier"
                    )
                holder = e.holder_id
            elif e.kind is EventKind.DEACTIVATED:
                if holder is None or e.carrier_id != carrier:
                    raise InvalidArgument("NOT_HELD", f"{self.number} deactivated without a holder")
                holder, deactivated_at = None, e.at
            else:
                if holder is None or e.carrier_id == carrier:
                    raise InvalidArgument(
                        "BAD_PORT", f"{self.number}: a port needs a holder and a new carrier"
                    )
            carrier = e.carrier_id

    def tenures(self) -> list[Tenure]:
        out: list[Tenure] = []
        for e in self.events:
            if e.kind is EventKind.ASSIGNED:
                assert e.holder_id is not None
                out.append(Tenure(e.holder_id, e.at, None))
            elif e.kind is EventKind.DEACTIVATED:
                out[-1] = Tenure(out[-1].holder_id, out[-1].start, e.at)
        return out

    def current_tenure(self, now: datetime) -> Tenure | None:
        """The tenure running at ``now``, or None when the number has no holder.

        Rule CARR-CLAIM-3.
        """
        for t in self.tenures():
            if t.covers(now):
                return t
        return None

    def tenure_start(self, now: datetime) -> datetime:
        """X: when the current holder's tenure began. Ports do not move it."""
        t = self.current_tenure(now)
        if t is None:
            raise FailedPrecondition("NO_CURRENT_HOLDER", f"{self.number} has no holder now")
        return t.start

    def carrier_at(self, now: datetime) -> str | None:
        carrier: str | None = None
        for e in self.events:
            if e.at > now:
                break
            carrier = e.carrier_id
        return carrier

    def ports(self) -> list[tuple[datetime, str, str]]:
        """Every port of the number: (when, donor, recipient), in time order."""
        out: list[tuple[datetime, str, str]] = []
        carrier: str | None = None
        for e in self.events:
            if e.kind is EventKind.PORTED and carrier is not None:
                out.append((e.at, carrier, e.carrier_id))
            carrier = e.carrier_id
        return out

    def history_start(self) -> datetime:
        if not self.events:
            raise NotFound("UNKNOWN_NUMBER", f"{self.number} has no history")
        return self.events[0].at

    def recycled_after(
        self, day: date, zone: tzinfo, now: datetime, *, asked: str = "SPECIFIED_DATE"
    ) -> RecycledAnswer:
        """The CAMARA Number Recycling answer for a calendar day in the carrier's ``zone``.

        True when the holder now is not the one who held the number at the end of ``day`` (a
        moment without a holder in between counts as a change): the answer moves only at the
        midnights of ``zone``, so it never tells a time of day. For the carrier's today it is the
        answer as of ``now``. A day after today, or one that ended before the carrier's history
        of the number begins, cannot be answered truthfully: OUT_OF_RANGE, with reasons named
        after the field the platform ``asked`` with, and the day in the error's metadata.

        Rules: CARR-REC-1, CARR-REC-2.
        """
        metadata = {"specified_date": day.isoformat()}
        if day > now.astimezone(zone).date():
            raise OutOfRange(f"{asked}_IN_FUTURE", f"{day} is after today", metadata=metadata)
        as_of = min(day_end(day, zone), now)
        if as_of < self.history_start():
            raise OutOfRange(
                f"{asked}_BEFORE_HISTORY",
                f"{day} ended before the carrier's history of the number",
                metadata=metadata,
            )
        return RecycledAnswer(day, as_of, self.changed_holder_since(as_of, now))

    def recycled_since(self, since: datetime, zone: tzinfo, now: datetime) -> RecycledAnswer:
        """The deprecated question "changed since ``since``?", answered for the day in ``zone``
        that contains ``since`` (:meth:`recycled_after`): nothing finer than a day.

        ``since`` in the future is OUT_OF_RANGE (SINCE_IN_FUTURE); the other refusals are
        those of :meth:`recycled_after`, named SINCE_….
        """
        if since > now:
            raise OutOfRange("SINCE_IN_FUTURE", "since is in the future")
        return self.recycled_after(since.astimezone(zone).date(), zone, now, asked="SINCE")

    def changed_holder_since(self, since: datetime, now: datetime) -> bool:
        """True when the holder at ``now`` is not the one who held it continuously since ``since``.

        A moment without a holder in between counts as a change.
        """
        t = self.current_tenure(now)
        return t is None or since < t.start
