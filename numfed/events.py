"""Lifecycle events: what carriers announce about numbers, signed a batch at a time.

A carrier signs one :class:`EventBatch` of up to 500 events (one signature per batch). Platforms
verify the batch against the trust bundle like a claim: the signing key belongs to the carrier
named in the batch, covers every number in it (each in the numbering plan), and was valid when
the batch was issued; and the batch's times are compared with the verifier's clock
(:mod:`numfed.timecheck`).
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.message import DecodeError

from numfed.claims import (
    normalize_number,
    require_in_plan,
    require_key_of,
    signed_by_carrier,
    trusted_bundle,
)
from numfed.envelope import Envelope, SigningKey, sign
from numfed.errors import InvalidArgument, PermissionDenied
from numfed.timecheck import LOG_KEY_GRACE, check_happened, check_issued_at, check_key_window
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

    def times(self) -> list[tuple[str, datetime]]:
        """The moments the event says have passed, by field name."""
        found = [("at", self.at), ("as_of", self.as_of), ("tenure_start", self.tenure_start)]
        return [(name, t) for name, t in found if t is not None]

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


def verify_event_batch(
    envelope: Envelope, trust: TrustedState, *, now: datetime, from_log: bool = False
) -> VerifiedBatch:
    """Verify a batch's one carrier signature, its issuer, scope and times; parse its events.

    Times, with the bundle's clock skew: issued_at not in the future (``ISSUED_IN_FUTURE``);
    every event's ``at``, ``as_of`` and ``tenure_start`` not after issued_at nor now
    (``TIME_IN_FUTURE``); the key valid at issued_at. A batch being published (the default:
    the gateway, at PublishEvents and at a carrier's sync) was signed within the bundle's
    maximum claim lifetime (``TOO_OLD``) by a key whose window holds now. A batch read from the
    gateway's log (``from_log``: platforms, pushed or pulled) may have waited there for a
    platform that was away, so it may be of any age, and its key's window may have closed up to
    :data:`~numfed.timecheck.LOG_KEY_GRACE` before now (``KEY_OUT_OF_WINDOW`` beyond).

    Rules: PLAT-EVT-1, PLAT-EVT-2, PLAT-EVT-3.
    """
    _keyid, key = signed_by_carrier(envelope, trust, EVENT_BATCH_PAYLOAD_TYPE, now)
    bundle = trusted_bundle(trust)
    try:
        pb = events_pb2.EventBatch.FromString(envelope.payload)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_BATCH", "batch payload does not parse") from exc
    require_key_of(key, pb.carrier_id)
    if not 1 <= len(pb.events) <= MAX_EVENTS_PER_BATCH:
        raise InvalidArgument("BAD_BATCH_SIZE", f"1 to {MAX_EVENTS_PER_BATCH} events per batch")
    issued_at = from_timestamp(pb.issued_at)
    skew = bundle.max_clock_skew
    max_age = None if from_log else bundle.max_claim_lifetime
    check_issued_at(issued_at, now, skew=skew, max_age=max_age, what="the event batch")
    grace = LOG_KEY_GRACE if from_log else timedelta(0)
    check_key_window(key, issued_at, now, skew=skew, grace=grace)
    events = tuple(LifecycleEvent.from_proto(e) for e in pb.events)
    for e in events:
        require_in_plan(bundle, e.number)
        if not key.covers(e.number):
            raise PermissionDenied("KEY_OUT_OF_SCOPE", "the key may not speak for this number")
        for name, t in e.times():
            check_happened(t, issued_at, now, skew=skew, field=name)
    return VerifiedBatch(pb.carrier_id, issued_at, events)
