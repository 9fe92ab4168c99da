"""Lifecycle events: what carriers announce about numbers, signed a batch at a time.

A carrier signs one :class:`EventBatch` of up to 500 events (one signature per batch). Platforms
verify the batch against the trust bundle like a claim: the signing key belongs to the carrier
named in the batch, covers every number in it, and was valid when the batch was issued.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import DecodeError

from numfed.claims import normalize_number, require_key_of, signed_by_carrier
from numfed.envelope import Envelope, SigningKey, sign
from numfed.errors import InvalidArgument, PermissionDenied, Unauthenticated
from numfed.timeutil import from_timestamp, require_utc, to_timestamp
from numfed.trust import TrustedState
from numfed.v1 import events_pb2

__all__ = [
    "EVENT_BATCH_PAYLOAD_TYPE",
    "MAX_EVENTS_PER_BATCH",
    "EventKind",
    "LifecycleEvent",
    "sign_event_batch",
    "verify_event_batch",
]

EVENT_BATCH_PAYLOAD_TYPE = "application/vnd.numfed.event-batch+proto"
_MEMBER_ID = re.compile(r"[a-z0-9_-]{1,32}")
MAX_EVENTS_PER_BATCH = 500


class EventKind(enum.Enum):
    DEACTIVATED = events_pb2.LIFECYCLE_KIND_DEACTIVATED
    PENDING_RELEASE = events_pb2.LIFECYCLE_KIND_PENDING_RELEASE
    REASSIGNED = events_pb2.LIFECYCLE_KIND_REASSIGNED
    PORTED = events_pb2.LIFECYCLE_KIND_PORTED


@dataclass(frozen=True)
class LifecycleEvent:
    event_id: bytes
    number: str
    kind: EventKind
    at: datetime
    as_of: datetime | None = None
    tenure_start: datetime | None = None
    from_carrier: str = ""
    to_carrier: str = ""

    def __post_init__(self) -> None:
        normalize_number(self.number)
        require_utc(self.at, "at")
        if len(self.event_id) != 16:
            raise InvalidArgument("MALFORMED_EVENT", "event_id must have 16 bytes")
        if (self.kind is EventKind.PENDING_RELEASE) != (self.as_of is not None):
            raise InvalidArgument("MALFORMED_EVENT", "as_of is set on PENDING_RELEASE only")
        if (self.kind is EventKind.REASSIGNED) != (self.tenure_start is not None):
            raise InvalidArgument("MALFORMED_EVENT", "tenure_start is set on REASSIGNED only")
        if (self.kind is EventKind.PORTED) != bool(self.from_carrier and self.to_carrier):
            raise InvalidArgument("MALFORMED_EVENT", "from/to carriers are set on PORTED only")
        if self.kind is EventKind.PORTED:
            for carrier in (self.from_carrier, self.to_carrier):
                if not _MEMBER_ID.fullmatch(carrier):
                    raise InvalidArgument(
                        "MALFORMED_EVENT", f"{carrier[:40]!r} is not a carrier id"
                    )
            if self.from_carrier == self.to_carrier:
                raise InvalidArgument("MALFORMED_EVENT", "a port moves a number to another carrier")

    @classmethod
    def new(cls, number: str, kind: EventKind, at: datetime, **kw: object) -> LifecycleEvent:
        return cls(secrets.token_bytes(16), number, kind, at, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_proto(cls, pb: events_pb2.LifecycleEvent) -> LifecycleEvent:
        try:
            kind = EventKind(pb.kind)
        except ValueError as exc:
            raise InvalidArgument("MALFORMED_EVENT", "unknown event kind") from exc
        return cls(
            pb.event_id,
            pb.number,
            kind,
            from_timestamp(pb.at),
            from_timestamp(pb.as_of) if pb.HasField("as_of") else None,
            from_timestamp(pb.tenure_start) if pb.HasField("tenure_start") else None,
            pb.from_carrier,
            pb.to_carrier,
        )

    def to_proto(self) -> events_pb2.LifecycleEvent:
        pb = events_pb2.LifecycleEvent(
            event_id=self.event_id,
            number=self.number,
            kind=self.kind.value,
            at=to_timestamp(self.at),
            from_carrier=self.from_carrier,
            to_carrier=self.to_carrier,
        )
        if self.as_of is not None:
            pb.as_of.CopyFrom(to_timestamp(self.as_of))
        if self.tenure_start is not None:
            pb.tenure_start.CopyFrom(to_timestamp(self.tenure_start))
        return pb


def sign_event_batch(
    carrier_id: str, events: Sequence[LifecycleEvent], key: SigningKey, *, now: datetime
) -> Envelope:
    if not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise InvalidArgument("BAD_BATCH_SIZE", f"1 to {MAX_EVENTS_PER_BATCH} events per batch")
    batch = events_pb2.EventBatch(
        carrier_id=carrier_id,
        issued_at=to_timestamp(now),
        events=[e.to_proto() for e in events],
    )
    return sign(EVENT_BATCH_PAYLOAD_TYPE, batch.SerializeToString(deterministic=True), [key])


@dataclass(frozen=True)
class VerifiedBatch:
    carrier_id: str
    issued_at: datetime
    events: tuple[LifecycleEvent, ...]


def verify_event_batch(envelope: Envelope, trust: TrustedState, *, now: datetime) -> VerifiedBatch:
    """Verify a batch's one carrier signature, its issuer and scope; parse its events."""
    _keyid, key = signed_by_carrier(envelope, trust, EVENT_BATCH_PAYLOAD_TYPE, now)
    try:
        pb = events_pb2.EventBatch.FromString(envelope.payload)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_BATCH", "batch payload does not parse") from exc
    require_key_of(key, pb.carrier_id)
    if not 1 <= len(pb.events) <= MAX_EVENTS_PER_BATCH:
        raise InvalidArgument("BAD_BATCH_SIZE", f"1 to {MAX_EVENTS_PER_BATCH} events per batch")
    issued_at = from_timestamp(pb.issued_at)
    if not key.valid_at(issued_at):
        raise Unauthenticated("KEY_OUT_OF_WINDOW", "batch issued outside the key's window")
    events = tuple(LifecycleEvent.from_proto(e) for e in pb.events)
    for e in events:
        if not key.covers(e.number):
            raise PermissionDenied("KEY_OUT_OF_SCOPE", "the key may not speak for this number")
    return VerifiedBatch(pb.carrier_id, issued_at, events)
