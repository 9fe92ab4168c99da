"""Signed claims: the one statement a carrier makes about a number, and how it is checked.

A :class:`TenureClaim` says "number N has been held by its current holder since X" for one
purpose; a :class:`RecycledClaim` answers "has N changed holder after the end of day D?" (a
:class:`RecycledQuestion`) with one bit. Both
check their rules when built, travel as DSSE envelopes with one carrier signature, and are
verified against a :class:`~numfed.trust.TrustedState` before anything in them is believed.
"""

from __future__ import annotations

import enum
import functools
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import phonenumbers
from google.protobuf.message import DecodeError

from numfed.envelope import Envelope, SigningKey, pae, sign
from numfed.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from numfed.timecheck import (
    DEFAULT_MAX_CLAIM_LIFETIME,
    DEFAULT_MAX_CLOCK_SKEW,
    check_happened,
    check_key_window,
    check_lifetime,
)
from numfed.timeutil import from_date, from_timestamp, require_utc, to_date, to_timestamp
from numfed.trust import CarrierKey, TrustBundle, TrustedState
from numfed.v1 import carrier_pb2, claim_pb2, gateway_pb2

__all__ = [
    "RECYCLED_CLAIM_PAYLOAD_TYPE",
    "RELEASE_GRACE",
    "TENURE_CLAIM_PAYLOAD_TYPE",
    "ClaimPolicy",
    "Purpose",
    "RecycledClaim",
    "RecycledQuestion",
    "TenureClaim",
    "VerifiedClaim",
    "VerifiedRecycledClaim",
    "normalize_number",
    "require_in_plan",
    "require_key_of",
    "sign_claim",
    "signed_by_carrier",
    "trusted_bundle",
    "verify_recycled_claim",
    "verify_tenure_claim",
]

TENURE_CLAIM_PAYLOAD_TYPE = "application/vnd.numfed.tenure-claim+proto"
RECYCLED_CLAIM_PAYLOAD_TYPE = "application/vnd.numfed.recycled-claim+proto"
CLAIM_ID_BYTES = 16
MAX_BINDING_REFS = 1000
_ID = re.compile(r"[a-z0-9_-]{1,32}")


class Purpose(enum.Enum):
    """The one use a claim is good for (least privilege)."""

    QUERY_PRIOR = claim_pb2.PURPOSE_QUERY_PRIOR
    RELEASE_PRIOR = claim_pb2.PURPOSE_RELEASE_PRIOR
    QUERY_OWN = claim_pb2.PURPOSE_QUERY_OWN
    RELEASE_OWN = claim_pb2.PURPOSE_RELEASE_OWN
    HOLDER_PROOF = claim_pb2.PURPOSE_HOLDER_PROOF


@dataclass(frozen=True)
class ClaimPolicy:
    """How long a claim may live and how far clocks may disagree.

    Verifiers take it from the trust bundle they hold (:meth:`from_bundle`), so the whole
    federation judges time alike.
    """

    max_lifetime: timedelta = DEFAULT_MAX_CLAIM_LIFETIME
    max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
    release_grace: timedelta = timedelta(0)
    """How long after expiry a RELEASE claim is still applied (platforms: RELEASE_GRACE)."""

    @classmethod
    def from_bundle(
        cls,
        bundle: TrustBundle | None,
        *,
        max_lifetime: timedelta | None = None,
        release_grace: timedelta = timedelta(0),
    ) -> ClaimPolicy:
        """The bundle's clock skew and maximum claim lifetime (the defaults without a bundle).

        ``max_lifetime`` replaces the bundle's for claims meant to live longer (holder proofs).

        Rule PLAT-CLAIM-9.
        """
        skew = bundle.max_clock_skew if bundle is not None else DEFAULT_MAX_CLOCK_SKEW
        lifetime = bundle.max_claim_lifetime if bundle is not None else DEFAULT_MAX_CLAIM_LIFETIME
        return _policy(lifetime if max_lifetime is None else max_lifetime, skew, release_grace)


@functools.lru_cache(maxsize=64)
def _policy(max_lifetime: timedelta, max_skew: timedelta, release_grace: timedelta) -> ClaimPolicy:
    """One policy per set of values (it is frozen): every claim verified asks for one."""
    return ClaimPolicy(max_lifetime=max_lifetime, max_skew=max_skew, release_grace=release_grace)


_PURPOSES = {p.value: p for p in Purpose}
"""Purpose by its wire value (a dict lookup costs less than calling the enum)."""


RELEASE_GRACE = timedelta(hours=1)
"""A platform still applies a release claim this long after it expired. The gateway accepted
the claim while it was fresh and retries it until the platform answers; a platform that was down
for a while must not refuse it then. Safe: a release touches only bindings made before X, and a
number's next holder comes no sooner than the 90-day quiet period."""


def normalize_number(number: str) -> str:
    """``number`` itself if it is written in E.164, else INVALID_ARGUMENT ``MALFORMED_NUMBER``.

    Syntax only: '+', a country code libphonenumber knows, and a length possible for it. Which
    numbers exist is the carriers' word, the numbering plan in the signed trust bundle
    (:func:`require_in_plan`), never the library's snapshot of allocated blocks, which lags
    behind the carriers (it refused all of +86 149 while ctcc used it). The verdict on each of
    the last 64k well-formed numbers is remembered: a number is checked once however many
    claims, events and platforms name it (a refusal is not remembered: it is checked again).
    """
    return _valid_e164(number)


_E164_SHAPE = re.compile(r"\+[1-9][0-9]{1,14}")


@functools.lru_cache(maxsize=65536)
def _valid_e164(number: str) -> str:
    if len(number) > 32 or not _E164_SHAPE.fullmatch(number):
        raise InvalidArgument("MALFORMED_NUMBER", f"{number[:40]!r} is not an E.164 number")
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument("MALFORMED_NUMBER", f"{number!r} is not an E.164 number") from exc
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 != number:
        raise InvalidArgument("MALFORMED_NUMBER", f"{number!r} is not written in E.164")
    if phonenumbers.is_possible_number_with_reason(parsed) != _POSSIBLE:
        raise InvalidArgument(
            "MALFORMED_NUMBER",
            f"{number!r} has no length a number of +{parsed.country_code} can have",
        )
    return e164


_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE
"""A whole number (not one dialled locally only) of a length its country code allows."""


def require_in_plan(bundle: TrustBundle, number: str) -> None:
    """``number`` lies in a range of the federation's numbering plan (the trust bundle's
    ``number_ranges``); else PERMISSION_DENIED ``NUMBER_NOT_IN_PLAN``: no carrier serves it, so
    no carrier may attest it, whatever its signing key covers.

    Rule PLAT-CLAIM-11.
    """
    if not number.startswith(bundle.range_prefixes):
        raise PermissionDenied(
            "NUMBER_NOT_IN_PLAN", "the number lies in no range of the federation's numbering plan"
        )


def _member_id(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument("MALFORMED_CLAIM", f"{what} {value!r} is not a member id")
    return value


def _utc(obj: object, *names: str) -> None:
    """Check that a frozen claim's timestamps are aware and store them in UTC."""
    for name in names:
        t = getattr(obj, name)
        utc = require_utc(t, name)
        if utc is not t:
            object.__setattr__(obj, name, utc)


def _window(issued_at: datetime, expires_at: datetime) -> None:
    if expires_at <= issued_at:
        raise InvalidArgument("MALFORMED_CLAIM", "expires_at must follow issued_at")


@dataclass(frozen=True)
class TenureClaim:
    """Number N has been held by its current holder since ``tenure_start`` (X).

    The lifetime is not bounded here but by the verifier's :class:`ClaimPolicy`: a holder proof
    may live for weeks, a query claim for minutes.
    """

    number: str
    carrier_id: str
    tenure_start: datetime
    purpose: Purpose
    issued_at: datetime
    expires_at: datetime
    claim_id: bytes
    binding_refs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        normalize_number(self.number)
        _member_id(self.carrier_id, "carrier_id")
        # Times read from the wire are in UTC already; others are checked and converted.
        if not (self.tenure_start.tzinfo is self.issued_at.tzinfo is self.expires_at.tzinfo is UTC):
            _utc(self, "tenure_start", "issued_at", "expires_at")
        if type(self.binding_refs) is not tuple:
            object.__setattr__(self, "binding_refs", tuple(self.binding_refs))
        _window(self.issued_at, self.expires_at)
        if self.tenure_start > self.issued_at:
            raise InvalidArgument("MALFORMED_CLAIM", "tenure_start is after the claim was issued")
        if len(self.claim_id) != CLAIM_ID_BYTES:
            raise InvalidArgument("MALFORMED_CLAIM", "claim_id must have 16 bytes")
        if self.purpose is Purpose.RELEASE_OWN:
            if not self.binding_refs:
                raise InvalidArgument(
                    "NO_BINDINGS_SELECTED", "RELEASE_OWN names the bindings the holder picked"
                )
            if len(self.binding_refs) > MAX_BINDING_REFS or len(set(self.binding_refs)) != len(
                self.binding_refs
            ):
                raise InvalidArgument("MALFORMED_CLAIM", "binding_refs repeat or are too many")
        elif self.binding_refs:
            raise InvalidArgument("MALFORMED_CLAIM", "only RELEASE_OWN claims name bindings")

    @classmethod
    def new(
        cls,
        *,
        number: str,
        carrier_id: str,
        tenure_start: datetime,
        purpose: Purpose,
        now: datetime,
        lifetime: timedelta = timedelta(minutes=10),
        binding_refs: tuple[str, ...] = (),
    ) -> TenureClaim:
        """A claim issued at ``now`` for ``lifetime``, with a fresh random claim_id."""
        return cls(
            number=number,
            carrier_id=carrier_id,
            tenure_start=tenure_start,
            purpose=purpose,
            issued_at=now,
            expires_at=now + lifetime,
            claim_id=secrets.token_bytes(CLAIM_ID_BYTES),
            binding_refs=tuple(binding_refs),
        )

    @classmethod
    def from_proto(cls, pb: claim_pb2.TenureClaim) -> TenureClaim:
        """Rule PLAT-CLAIM-10."""
        if pb.purpose == claim_pb2.PURPOSE_UNSPECIFIED:
            raise InvalidArgument("PURPOSE_UNSPECIFIED", "a claim states its purpose")
        purpose = _PURPOSES.get(pb.purpose)
        if purpose is None:
            raise InvalidArgument("MALFORMED_CLAIM", "unknown purpose")
        for name in ("tenure_start", "issued_at", "expires_at"):
            if not pb.HasField(name):
                raise InvalidArgument("MALFORMED_CLAIM", f"claim has no {name}")
        return cls(  # positional (keywords cost more on the claim path), in field order
            pb.number,
            pb.carrier_id,
            from_timestamp(pb.tenure_start),
            purpose,
            from_timestamp(pb.issued_at),
            from_timestamp(pb.expires_at),
            pb.claim_id,
            tuple(pb.binding_refs) if pb.binding_refs else (),  # iterating an empty one costs
        )

    def to_proto(self) -> claim_pb2.TenureClaim:
        return claim_pb2.TenureClaim(
            number=self.number,
            carrier_id=self.carrier_id,
            tenure_start=to_timestamp(self.tenure_start),
            purpose=self.purpose.value,
            issued_at=to_timestamp(self.issued_at),
            expires_at=to_timestamp(self.expires_at),
            claim_id=self.claim_id,
            binding_refs=list(self.binding_refs),
        )


@dataclass(frozen=True)
class RecycledQuestion:
    """What a platform asks: has the number changed holder after the end of a calendar day?

    Exactly one of ``specified_date`` (the day, in the serving carrier's time zone) and the
    deprecated ``since`` (a moment; the carrier answers for the day that contains it) is set.
    """

    specified_date: date | None = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        if self.specified_date is None and self.since is None:
            raise InvalidArgument("MISSING_SPECIFIED_DATE", "specified_date is required")
        if self.specified_date is not None and self.since is not None:
            raise InvalidArgument(
                "SINCE_AND_SPECIFIED_DATE", "set specified_date or the deprecated since, not both"
            )
        if self.since is not None:
            _utc(self, "since")

    @classmethod
    def from_request(
        cls, pb: gateway_pb2.CheckRecycledRequest | carrier_pb2.AnswerRecycledCheckRequest
    ) -> RecycledQuestion:
        """The question of a CheckRecycled or AnswerRecycledCheck request (BAD_DATE,
        BAD_TIMESTAMP for a field that holds no date or moment)."""
        return cls(
            specified_date=from_date(pb.specified_date) if pb.HasField("specified_date") else None,
            since=from_timestamp(pb.since) if pb.HasField("since") else None,
        )

    def fill(
        self, pb: gateway_pb2.CheckRecycledRequest | carrier_pb2.AnswerRecycledCheckRequest
    ) -> None:
        """Set the question's field on a request."""
        if self.specified_date is not None:
            pb.specified_date.CopyFrom(to_date(self.specified_date))
        if self.since is not None:
            pb.since.CopyFrom(to_timestamp(self.since))


@dataclass(frozen=True)
class RecycledClaim:
    """Has N changed holder after the end of ``specified_date``? One signed bit for one platform.

    ``specified_date`` is a calendar day in the carrier's time zone; ``since`` (deprecated on the
    wire) is the moment the answer is for: the end of that day, or the signing time if the day
    has not ended. Neither ever tells the tenure start.
    """

    number: str
    carrier_id: str
    since: datetime
    changed: bool
    platform_id: str
    issued_at: datetime
    expires_at: datetime
    specified_date: date
    claim_id: bytes = field(default_factory=lambda: secrets.token_bytes(CLAIM_ID_BYTES))

    def __post_init__(self) -> None:
        normalize_number(self.number)
        _member_id(self.carrier_id, "carrier_id")
        _member_id(self.platform_id, "platform_id")
        _utc(self, "since", "issued_at", "expires_at")
        _window(self.issued_at, self.expires_at)
        if len(self.claim_id) != CLAIM_ID_BYTES:
            raise InvalidArgument("MALFORMED_CLAIM", "claim_id must have 16 bytes")

    @classmethod
    def from_proto(cls, pb: claim_pb2.RecycledClaim) -> RecycledClaim:
        for name in ("since", "issued_at", "expires_at", "specified_date"):
            if not pb.HasField(name):
                raise InvalidArgument("MALFORMED_CLAIM", f"claim has no {name}")
        try:
            specified_date = from_date(pb.specified_date)
        except InvalidArgument as exc:
            raise InvalidArgument("MALFORMED_CLAIM", exc.message) from exc
        return cls(
            number=pb.number,
            carrier_id=pb.carrier_id,
            since=from_timestamp(pb.since),
            changed=pb.changed,
            platform_id=pb.platform_id,
            issued_at=from_timestamp(pb.issued_at),
            expires_at=from_timestamp(pb.expires_at),
            specified_date=specified_date,
            claim_id=pb.claim_id,
        )

    def to_proto(self) -> claim_pb2.RecycledClaim:
        return claim_pb2.RecycledClaim(
            number=self.number,
            carrier_id=self.carrier_id,
            since=to_timestamp(self.since),
            changed=self.changed,
            platform_id=self.platform_id,
            issued_at=to_timestamp(self.issued_at),
            expires_at=to_timestamp(self.expires_at),
            specified_date=to_date(self.specified_date),
            claim_id=self.claim_id,
        )


def sign_claim(claim: TenureClaim | RecycledClaim, key: SigningKey) -> Envelope:
    """Sign a claim with a carrier's key."""
    payload_type = (
        TENURE_CLAIM_PAYLOAD_TYPE if isinstance(claim, TenureClaim) else RECYCLED_CLAIM_PAYLOAD_TYPE
    )
    return sign(payload_type, claim.to_proto().SerializeToString(deterministic=True), [key])


@dataclass(frozen=True)
class VerifiedClaim:
    """A tenure claim whose signature, issuer, scope, time and purpose all checked out."""

    claim: TenureClaim
    key_id: str
    carrier_id: str


@dataclass(frozen=True)
class VerifiedRecycledClaim:
    """A recycled-check answer that verified and is addressed to the expected platform."""

    claim: RecycledClaim
    key_id: str
    carrier_id: str


def signed_by_carrier(
    envelope: Envelope, trust: TrustedState, payload_type: str, now: datetime
) -> tuple[str, CarrierKey]:
    """Check the payload type and the one carrier signature; return the key that made it.

    Claims and event batches alike carry exactly one signature, by a key of the trust bundle.
    The caller then parses the payload and calls :func:`require_key_of` with the carrier it
    names before believing anything in it.

    Rules: PLAT-CLAIM-1, PLAT-CLAIM-2, PLAT-CLAIM-3.
    """
    if envelope.payload_type != payload_type:
        raise Unauthenticated(
            "WRONG_PAYLOAD_TYPE",
            f"expected payload type {payload_type!r}, got {envelope.payload_type!r}",
        )
    if len(envelope.signatures) != 1:
        raise Unauthenticated("ONE_SIGNATURE_REQUIRED", "exactly one carrier signature is required")
    sig = envelope.signatures[0]
    key = trust.carrier_key(sig.keyid, now=now)
    if not key.key.verify_raw(sig.sig, pae(envelope.payload_type, envelope.payload)):
        raise Unauthenticated("BAD_SIGNATURE", "the carrier signature does not verify")
    return sig.keyid, key


def trusted_bundle(trust: TrustedState) -> TrustBundle:
    """The bundle ``trust`` holds (the one :func:`signed_by_carrier` found the key in)."""
    bundle = trust.bundle
    if bundle is None:
        raise Unauthenticated("NO_TRUST_BUNDLE", "no trust bundle has been accepted yet")
    return bundle


def require_key_of(key: CarrierKey, carrier_id: str) -> None:
    """Rule PLAT-CLAIM-KEY-CARRIER: what a carrier signs speaks for that carrier only.

    A signed claim or event batch is believed only when the trust bundle lists the key that
    signed it for ``carrier_id``, the carrier the signed payload itself names. The key's number
    prefixes do not settle this: with number portability each carrier's key may cover a whole
    country code, so one carrier's key covers every claim another carrier could make. Nor may a
    verifier take the carrier from anywhere else (the envelope's keyid, call metadata, the
    gateway). Every verifier of carrier-signed data, platform or gateway, calls this; otherwise
    PERMISSION_DENIED ``CARRIER_KEY_MISMATCH``, with the rule id in the ErrorInfo's metadata.
    """
    if carrier_id != key.carrier_id:
        raise PermissionDenied(
            "CARRIER_KEY_MISMATCH",
            f"signed for carrier {carrier_id[:40]!r} with a key of carrier {key.carrier_id!r}",
            metadata={"rule": "PLAT-CLAIM-KEY-CARRIER"},
        )


def _check_issuer(key: CarrierKey, bundle: TrustBundle, carrier_id: str, number: str) -> None:
    """Rules: PLAT-CLAIM-5, PLAT-CLAIM-KEY-CARRIER."""
    require_key_of(key, carrier_id)
    require_in_plan(bundle, number)
    if not key.covers(number):
        raise PermissionDenied("KEY_OUT_OF_SCOPE", "the signing key may not attest this number")


def _check_time(
    key: CarrierKey,
    issued_at: datetime,
    expires_at: datetime,
    now: datetime,
    policy: ClaimPolicy,
    grace: timedelta = timedelta(0),
) -> None:
    """The claim's own window against the verifier's clock, then its key's window."""
    check_lifetime(
        issued_at,
        expires_at,
        now,
        skew=policy.max_skew,
        max_lifetime=policy.max_lifetime,
        grace=grace,
    )
    check_key_window(key, issued_at, now, skew=policy.max_skew, grace=grace)


_RELEASES = (Purpose.RELEASE_PRIOR, Purpose.RELEASE_OWN)
_NO_GRACE = timedelta(0)


def verify_tenure_claim(
    envelope: Envelope,
    trust: TrustedState,
    *,
    now: datetime,
    purposes: Collection[Purpose],
    policy: ClaimPolicy | None = None,
) -> VerifiedClaim:
    """Verify signature, issuer, scope, time and purpose; raise the precise error otherwise.

    ``policy`` defaults to the one the trust bundle publishes (:meth:`ClaimPolicy.from_bundle`).

    Rules: PLAT-CLAIM-13, PLAT-ANS-3.
    """
    key_id, key = signed_by_carrier(envelope, trust, TENURE_CLAIM_PAYLOAD_TYPE, now)
    bundle = trusted_bundle(trust)
    policy = ClaimPolicy.from_bundle(bundle) if policy is None else policy
    try:
        pb = claim_pb2.TenureClaim.FromString(envelope.payload)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_CLAIM", "claim payload does not parse") from exc
    try:
        claim = TenureClaim.from_proto(pb)
    except InvalidArgument as exc:
        if exc.reason in {"MALFORMED_NUMBER", "PURPOSE_UNSPECIFIED", "NO_BINDINGS_SELECTED"}:
            raise
        raise InvalidArgument("MALFORMED_CLAIM", exc.message) from exc
    _check_issuer(key, bundle, claim.carrier_id, claim.number)
    grace = policy.release_grace if claim.purpose in _RELEASES else _NO_GRACE
    _check_time(key, claim.issued_at, claim.expires_at, now, policy, grace)
    if claim.purpose not in purposes:
        raise InvalidArgument(
            "WRONG_PURPOSE",
            f"a {claim.purpose.name} claim is not accepted here",
            metadata={"purpose": claim.purpose.name},
        )
    return VerifiedClaim(claim, key_id, key.carrier_id)


def verify_recycled_claim(
    envelope: Envelope,
    trust: TrustedState,
    *,
    now: datetime,
    audience: str,
    policy: ClaimPolicy | None = None,
) -> VerifiedRecycledClaim:
    """Verify a recycled-check answer addressed to platform ``audience``; its ``since`` is a
    moment that has passed (``TIME_IN_FUTURE`` otherwise)."""
    key_id, key = signed_by_carrier(envelope, trust, RECYCLED_CLAIM_PAYLOAD_TYPE, now)
    bundle = trusted_bundle(trust)
    policy = ClaimPolicy.from_bundle(bundle) if policy is None else policy
    try:
        claim = RecycledClaim.from_proto(claim_pb2.RecycledClaim.FromString(envelope.payload))
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_CLAIM", "claim payload does not parse") from exc
    _check_issuer(key, bundle, claim.carrier_id, claim.number)
    _check_time(key, claim.issued_at, claim.expires_at, now, policy)
    check_happened(claim.since, claim.issued_at, now, skew=policy.max_skew, field="since")
    if claim.platform_id != audience:
        raise PermissionDenied("WRONG_AUDIENCE", "the answer is addressed to another platform")
    return VerifiedRecycledClaim(claim, key_id, key.carrier_id)
