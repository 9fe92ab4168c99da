"""UTC timestamps: aware datetimes inside, protobuf Timestamps on the wire; calendar dates as
``datetime.date`` inside and ``google.type.Date`` on the wire."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from google.protobuf import timestamp_pb2
from google.type import date_pb2

from numfed.errors import InvalidArgument

__all__ = [
    "from_date",
    "from_timestamp",
    "from_us",
    "require_utc",
    "to_date",
    "to_timestamp",
    "to_us",
]


def require_utc(t: datetime, what: str) -> datetime:
    """``t`` in UTC; INVALID_ARGUMENT ``NAIVE_TIMESTAMP`` when it names no offset."""
    if t.tzinfo is UTC:
        return t  # what astimezone(UTC) returns for it, at a fraction of the cost
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidArgument("NAIVE_TIMESTAMP", f"{what} must be timezone-aware")
    return t.astimezone(UTC)


def to_timestamp(t: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(require_utc(t, "timestamp"))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime, microsecond precision (nanoseconds below that are dropped).

    A Timestamp outside years 1-9999 or with nanos outside [0, 1e9) is INVALID_ARGUMENT.
    """
    seconds, nanos = ts.seconds, ts.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        raise InvalidArgument(
            "BAD_TIMESTAMP", f"not a valid timestamp: seconds={seconds} nanos={nanos}"
        )
    # The same as Timestamp.ToDatetime, at a fraction of its cost (it is on the claim path).
    return EPOCH + timedelta(0, seconds, nanos // 1000)  # positional: keywords cost more


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MIN_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z"""
_MAX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z"""


def to_us(t: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (require_utc(t, "timestamp") - EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    """The aware UTC datetime ``us`` microseconds after the epoch, exactly."""
    return EPOCH + timedelta(microseconds=us)


def to_date(d: date) -> date_pb2.Date:
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)


def from_date(pb: date_pb2.Date) -> date:
    """The calendar day ``pb`` names; INVALID_ARGUMENT / BAD_DATE unless it is a full, real date.

    google.type.Date lets year, month or day be 0 for partial dates (a birthday, a card's expiry
    month); numfed asks about whole days, so each must be set, and the day must exist.
    """
    try:
        return date(pb.year, pb.month, pb.day)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(
            "BAD_DATE", f"not a calendar date: year={pb.year} month={pb.month} day={pb.day}"
        ) from exc
