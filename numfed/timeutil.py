"""UTC timestamps: aware datetimes inside, protobuf Timestamps on the wire."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from numfed.errors import InvalidArgument

__all__ = ["from_timestamp", "require_utc", "to_timestamp"]


def require_utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidArgument("NAIVE_TIMESTAMP", f"{what} must be timezone-aware")
    return t.astimezone(UTC)


def to_timestamp(t: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(require_utc(t, "timestamp"))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime, microsecond precision (nanoseconds below that are dropped)."""
    return ts.ToDatetime(tzinfo=UTC)
