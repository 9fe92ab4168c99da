"""UTC timestamps: aware datetimes inside, protobuf Timestamps on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from numfed.errors import InvalidArgument

__all__ = ["from_timestamp", "from_us", "require_utc", "to_timestamp", "to_us"]


def require_utc(t: datetime, what: str) -> datetime:
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
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument("BAD_TIMESTAMP", f"not a valid timestamp: {exc}") from exc


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (require_utc(t, "timestamp") - EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    """The aware UTC datetime ``us`` microseconds after the epoch, exactly."""
    return EPOCH + timedelta(microseconds=us)
