"""The federation's trust model: root keys, the carrier-key bundle, and a verifier's state.

Modelled on TUF's detailed client workflow (specification v1.0, steps 5.1-5.4). Verifiers pin
root version 1. Root version n+1 counts only when signed by a threshold of version n's keys
*and* a threshold of its own keys, and a verifier walks every version in turn. The trust bundle
(carrier keys, each with a validity window and the number prefixes it may attest, and the
numbering plan) is signed by a threshold of the current root's keys and follows the rules of
TUF's timestamp role: its version only goes up (skipping versions is allowed: a verifier that
missed some is not under attack), an equal version keeps the bundle held, and it expires. So
neither a rollback nor a freeze goes unnoticed. Expiry counts for the newest root only: an
expired root that has a valid successor ("intermediate") still vouches for that successor.
Each key id counts once toward a threshold, and key ids are derived from the keys, so one key
cannot pose as two.

:class:`TrustedState` is the pure state machine (bytes in, verified objects kept, typed errors
out, no I/O), as python-tuf's ``TrustedMetadataSet``; :mod:`numfed.trustfiles`,
:mod:`numfed.truststore` and the platform's trust client do the reading and writing.

Every key of a root or a bundle is checked to be a proper key of its algorithm when the root or
bundle is parsed (:func:`numfed.envelope.check_public_key`): one bad key refuses the whole root
or bundle (INVALID_ARGUMENT ``BAD_PUBLIC_KEY``, the key named in the metadata), so that every
verifier, whatever its curve library, reads the same keys from the same signed bytes. The bundle
also publishes the federation's clock skew and maximum claim lifetime (:mod:`numfed.timecheck`).
"""

from __future__ import annotations

import copy
import enum
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from numfed.envelope import Envelope, SigningKey, VerifyKey, sign, verification_result
from numfed.errors import InvalidArgument, Unauthenticated
from numfed.timecheck import (
    DEFAULT_MAX_CLAIM_LIFETIME,
    DEFAULT_MAX_CLOCK_SKEW,
    MAX_CLAIM_LIFETIME_CEILING,
    MAX_CLOCK_SKEW_CEILING,
    check_issued_at,
)
from numfed.timeutil import from_timestamp, require_utc, to_timestamp
from numfed.v1 import trust_pb2

__all__ = [
    "BUNDLE_PAYLOAD_TYPE",
    "MAX_ROOT_ROTATIONS",
    "ROOT_PAYLOAD_TYPE",
    "VERSION_METADATA_KEY",
    "AuditKey",
    "BundleChange",
    "CarrierKey",
    "Root",
    "TrustBundle",
    "TrustReason",
    "TrustedState",
    "UpdateResult",
    "format_versions",
    "parse_versions",
    "sign_bundle",
    "sign_root",
]

log = logging.getLogger(__name__)

ROOT_PAYLOAD_TYPE = "application/vnd.numfed.root+proto"
BUNDLE_PAYLOAD_TYPE = "application/vnd.numfed.trust-bundle+proto"
_PREFIX = re.compile(r"\+[0-9]{1,15}")
_CARRIER = re.compile(r"[a-z0-9_-]{1,32}")
_VERSIONS = re.compile(r"([1-9][0-9]{0,18})/(0|[1-9][0-9]{0,18})")

MAX_ROOT_ROTATIONS = 256
"""Most new root versions one update applies (python-tuf's ``max_root_rotations``); a longer
chain continues at the next refresh, so an endless chain cannot keep a verifier busy."""

VERSION_METADATA_KEY = "numfed-trust-version"
"""gRPC metadata key under which the gateway states the versions it holds, ``<root>/<bundle>``:
in the initial metadata of its answers and in the request metadata of its calls to platforms.
It carries no signature, so it only tells a member to refresh; it never changes trust."""


class TrustReason(enum.StrEnum):
    """Every ``reason`` the trust model raises (or logs), in one place."""

    WRONG_PAYLOAD_TYPE = "WRONG_PAYLOAD_TYPE"
    """The envelope holds another kind of payload (a bundle offered as a root, say)."""
    MALFORMED_ROOT = "MALFORMED_ROOT"
    MALFORMED_BUNDLE = "MALFORMED_BUNDLE"
    ROOT_THRESHOLD_NOT_MET = "ROOT_THRESHOLD_NOT_MET"
    """A root lacks a threshold of its own keys, or of its predecessor's."""
    ROOT_VERSION_NOT_NEXT = "ROOT_VERSION_NOT_NEXT"
    """A new root's version is not the held one's plus one."""
    ROOT_ROLLBACK = "ROOT_ROLLBACK"
    """A root older than the one held is offered as the newest (a persisted root below the pin,
    or a trust directory that lost root files the gateway serves)."""
    ROOT_EQUIVOCATION = "ROOT_EQUIVOCATION"
    """Two different roots under one version."""
    ROOT_EXPIRED = "ROOT_EXPIRED"
    """The newest root held (the final one) has expired; an intermediate root's expiry does
    not count."""
    BUNDLE_THRESHOLD_NOT_MET = "BUNDLE_THRESHOLD_NOT_MET"
    BUNDLE_ROLLBACK = "BUNDLE_ROLLBACK"
    """A bundle older than the one held."""
    BUNDLE_EQUIVOCATION = "BUNDLE_EQUIVOCATION"
    """A bundle with the held version but other bytes: the root key holders signed two bundles
    under one version. Logged, never raised: the held bundle stays."""
    BUNDLE_EXPIRED = "BUNDLE_EXPIRED"
    NO_TRUST_BUNDLE = "NO_TRUST_BUNDLE"
    KEY_REVOKED = "KEY_REVOKED"
    UNKNOWN_KEY = "UNKNOWN_KEY"


def _bad(reason: TrustReason, what: str) -> InvalidArgument:
    return InvalidArgument(reason, what)


def _freeze(obj: object, name: str, value: object) -> None:
    """Replace a field of a frozen dataclass with an immutable copy, so rules checked stay true."""
    object.__setattr__(obj, name, value)


def _key_from_proto(pb: trust_pb2.PublicKey, where: str) -> VerifyKey:
    """A root or carrier key, checked; a bad one refuses all of ``where`` (the root or bundle)."""
    try:
        return VerifyKey.from_proto(pb)
    except InvalidArgument as exc:
        raise InvalidArgument(
            exc.reason,
            f"{where} holds a key that is refused: {exc.message}",
            metadata={"in": where, "key_id": pb.key_id[:16]},
        ) from exc


def _duration(pb: duration_pb2.Duration, what: str, ceiling: timedelta) -> timedelta:
    if pb.seconds < 0 or not 0 <= pb.nanos < 1_000_000_000:
        raise _bad(TrustReason.MALFORMED_BUNDLE, f"{what} is not a duration of zero or more")
    # Compared in seconds first: a huge value would overflow timedelta.
    value = timedelta(seconds=min(pb.seconds, ceiling.days * 86400 + ceiling.seconds + 1))
    value += timedelta(microseconds=pb.nanos // 1000)
    if value > ceiling:
        raise _bad(TrustReason.MALFORMED_BUNDLE, f"{what} is above its ceiling of {ceiling}")
    return value


def _to_duration(value: timedelta) -> duration_pb2.Duration:
    pb = duration_pb2.Duration()
    pb.FromTimedelta(value)
    return pb


@dataclass(frozen=True)
class Root:
    """Root metadata: the federation root keys and their threshold."""

    version: int
    expires_at: datetime
    keys: Mapping[str, VerifyKey]
    threshold: int

    def __post_init__(self) -> None:
        _freeze(self, "expires_at", require_utc(self.expires_at, "root expires_at"))
        _freeze(self, "keys", MappingProxyType(dict(self.keys)))
        if self.version < 1:
            raise _bad(TrustReason.MALFORMED_ROOT, "root version starts at 1")
        if not 1 <= self.threshold <= len(self.keys):
            raise _bad(
                TrustReason.MALFORMED_ROOT, "root threshold must be within 1..number of keys"
            )
        if any(k != v.key_id for k, v in self.keys.items()):
            raise _bad(TrustReason.MALFORMED_ROOT, "root keys must be indexed by their own key id")

    @classmethod
    def from_proto(cls, pb: trust_pb2.RootMetadata) -> Root:
        keys = [_key_from_proto(k, "root") for k in pb.keys]
        by_id = {k.key_id: k for k in keys}
        if len(by_id) != len(keys):
            raise _bad(TrustReason.MALFORMED_ROOT, "a root key is listed twice")
        return cls(pb.version, from_timestamp(pb.expires_at), by_id, pb.threshold)

    def to_proto(self) -> trust_pb2.RootMetadata:
        return trust_pb2.RootMetadata(
            version=self.version,
            expires_at=to_timestamp(self.expires_at),
            keys=[self.keys[k].to_proto() for k in sorted(self.keys)],
            threshold=self.threshold,
        )


@dataclass(frozen=True)
class CarrierKey:
    """One carrier signing key, when it may sign, and which numbers it may attest."""

    key: VerifyKey
    carrier_id: str
    not_before: datetime
    not_after: datetime
    number_prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        _freeze(self, "not_before", require_utc(self.not_before, "not_before"))
        _freeze(self, "not_after", require_utc(self.not_after, "not_after"))
        _freeze(self, "number_prefixes", tuple(self.number_prefixes))
        if self.not_after <= self.not_before:
            raise _bad(
                TrustReason.MALFORMED_BUNDLE, "a carrier key's not_after must follow not_before"
            )
        if not _CARRIER.fullmatch(self.carrier_id):
            raise _bad(TrustReason.MALFORMED_BUNDLE, f"bad carrier id {self.carrier_id!r}")
        if not self.number_prefixes or not all(_PREFIX.fullmatch(p) for p in self.number_prefixes):
            raise _bad(
                TrustReason.MALFORMED_BUNDLE, "number prefixes are '+' and digits, at least one"
            )

    def covers(self, number: str) -> bool:
        """True when ``number`` (E.164) starts with one of the key's prefixes."""
        return number.startswith(self.number_prefixes)

    def valid_at(self, t: datetime) -> bool:
        """True when ``t`` lies in the key's window [not_before, not_after], both inclusive."""
        return self.not_before <= require_utc(t, "t") <= self.not_after

    @classmethod
    def from_proto(cls, pb: trust_pb2.CarrierKey) -> CarrierKey:
        return cls(
            _key_from_proto(pb.key, "bundle"),
            pb.carrier_id,
            from_timestamp(pb.not_before),
            from_timestamp(pb.not_after),
            tuple(pb.number_prefixes),
        )

    def to_proto(self) -> trust_pb2.CarrierKey:
        return trust_pb2.CarrierKey(
            key=self.key.to_proto(),
            carrier_id=self.carrier_id,
            not_before=to_timestamp(self.not_before),
            not_after=to_timestamp(self.not_after),
            number_prefixes=list(self.number_prefixes),
        )


@dataclass(frozen=True)
class AuditKey:
    """One gateway audit key: it signs audit checkpoints issued within its window."""

    key: VerifyKey
    not_before: datetime
    not_after: datetime

    def __post_init__(self) -> None:
        _freeze(self, "not_before", require_utc(self.not_before, "not_before"))
        _freeze(self, "not_after", require_utc(self.not_after, "not_after"))
        if self.not_after <= self.not_before:
            raise _bad(
                TrustReason.MALFORMED_BUNDLE, "an audit key's not_after must follow not_before"
            )

    def valid_at(self, t: datetime) -> bool:
        """True when ``t`` lies in the key's window [not_before, not_after], both inclusive."""
        return self.not_before <= require_utc(t, "t") <= self.not_after

    @classmethod
    def from_proto(cls, pb: trust_pb2.AuditKey) -> AuditKey:
        return cls(
            VerifyKey.from_proto(pb.key),
            from_timestamp(pb.not_before),
            from_timestamp(pb.not_after),
        )

    def to_proto(self) -> trust_pb2.AuditKey:
        return trust_pb2.AuditKey(
            key=self.key.to_proto(),
            not_before=to_timestamp(self.not_before),
            not_after=to_timestamp(self.not_after),
        )


@dataclass(frozen=True)
class TrustBundle:
    """The carrier keys of the federation at one version, and its numbering plan.

    ``number_ranges`` maps an E.164 prefix to the carrier the block is allocated to (its number
    range holder): a number's serving carrier until a port moves it (docs/authority.md).
    ``max_clock_skew`` and ``max_claim_lifetime`` are the federation's: every verifier holding
    the bundle judges signed times with them (absent on the wire: 60 s and 30 min).
    """

    version: int
    issued_at: datetime
    expires_at: datetime
    carrier_keys: Mapping[str, CarrierKey]
    revoked_key_ids: frozenset[str] = field(default_factory=frozenset)
    number_ranges: Mapping[str, str] = field(default_factory=dict)
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
    max_claim_lifetime: timedelta = DEFAULT_MAX_CLAIM_LIFETIME
    audit_keys: Mapping[str, AuditKey] = field(default_factory=dict)
    """The gateway's audit keys by key id: they sign audit checkpoints (numfed/checkpoint.py)."""
    range_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The prefixes of ``number_ranges``, as one tuple: :meth:`str.startswith` tries them all."""

    def __post_init__(self) -> None:
        _freeze(self, "audit_keys", MappingProxyType(dict(self.audit_keys)))
        if any(k != v.key.key_id for k, v in self.audit_keys.items()):
            raise _bad(
                TrustReason.MALFORMED_BUNDLE, "audit keys must be indexed by their own key id"
            )
        _freeze(self, "issued_at", require_utc(self.issued_at, "bundle issued_at"))
        _freeze(self, "expires_at", require_utc(self.expires_at, "bundle expires_at"))
        _freeze(self, "carrier_keys", MappingProxyType(dict(self.carrier_keys)))
        _freeze(self, "revoked_key_ids", frozenset(self.revoked_key_ids))
        _freeze(self, "number_ranges", MappingProxyType(dict(self.number_ranges)))
        _freeze(self, "range_prefixes", tuple(self.number_ranges))
        for prefix, carrier in self.number_ranges.items():
            if not _PREFIX.fullmatch(prefix) or not _CARRIER.fullmatch(carrier):
                raise _bad(
                    TrustReason.MALFORMED_BUNDLE, f"bad number range {prefix!r} -> {carrier!r}"
                )
        if self.version < 1:
            raise _bad(TrustReason.MALFORMED_BUNDLE, "bundle version starts at 1")
        if self.expires_at <= self.issued_at:
            raise _bad(TrustReason.MALFORMED_BUNDLE, "bundle must expire after it is issued")
        if any(k != v.key.key_id for k, v in self.carrier_keys.items()):
            raise _bad(
                TrustReason.MALFORMED_BUNDLE, "carrier keys must be indexed by their own key id"
            )
        if not timedelta(0) <= self.max_clock_skew <= MAX_CLOCK_SKEW_CEILING:
            raise _bad(
                TrustReason.MALFORMED_BUNDLE,
                f"max_clock_skew must be 0 to {MAX_CLOCK_SKEW_CEILING}",
            )
        if not timedelta(0) < self.max_claim_lifetime <= MAX_CLAIM_LIFETIME_CEILING:
            raise _bad(
                TrustReason.MALFORMED_BUNDLE,
                f"max_claim_lifetime must be above 0 and at most {MAX_CLAIM_LIFETIME_CEILING}",
            )

    def check_issued(self, now: datetime) -> None:
        """The bundle's issued_at is not in the future beyond its skew (``ISSUED_IN_FUTURE``)."""
        check_issued_at(self.issued_at, now, skew=self.max_clock_skew, what="the trust bundle")

    @classmethod
    def from_proto(cls, pb: trust_pb2.TrustBundle) -> TrustBundle:
        keys = [CarrierKey.from_proto(k) for k in pb.carrier_keys]
        by_id = {k.key.key_id: k for k in keys}
        if len(by_id) != len(keys):
            raise _bad(TrustReason.MALFORMED_BUNDLE, "a carrier key is listed twice")
        ranges = {r.prefix: r.carrier_id for r in pb.number_ranges}
        if len(ranges) != len(pb.number_ranges):
            raise _bad(TrustReason.MALFORMED_BUNDLE, "a number range is listed twice")
        audit = {k.key.key_id: k for k in (AuditKey.from_proto(a) for a in pb.audit_keys)}
        if len(audit) != len(pb.audit_keys):
            raise _bad(TrustReason.MALFORMED_BUNDLE, "an audit key is listed twice")
        return cls(
            pb.version,
            from_timestamp(pb.issued_at),
            from_timestamp(pb.expires_at),
            by_id,
            frozenset(pb.revoked_key_ids),
            ranges,
            _duration(pb.max_clock_skew, "max_clock_skew", MAX_CLOCK_SKEW_CEILING)
            if pb.HasField("max_clock_skew")
            else DEFAULT_MAX_CLOCK_SKEW,
            _duration(pb.max_claim_lifetime, "max_claim_lifetime", MAX_CLAIM_LIFETIME_CEILING)
            if pb.HasField("max_claim_lifetime")
            else DEFAULT_MAX_CLAIM_LIFETIME,
            audit_keys=audit,
        )

    def to_proto(self) -> trust_pb2.TrustBundle:
        return trust_pb2.TrustBundle(
            version=self.version,
            issued_at=to_timestamp(self.issued_at),
            expires_at=to_timestamp(self.expires_at),
            carrier_keys=[self.carrier_keys[k].to_proto() for k in sorted(self.carrier_keys)],
            revoked_key_ids=sorted(self.revoked_key_ids),
            number_ranges=[
                trust_pb2.NumberRange(prefix=p, carrier_id=self.number_ranges[p])
                for p in sorted(self.number_ranges)
            ],
            max_clock_skew=_to_duration(self.max_clock_skew),
            max_claim_lifetime=_to_duration(self.max_claim_lifetime),
            audit_keys=[self.audit_keys[k].to_proto() for k in sorted(self.audit_keys)],
        )


def sign_root(root: Root, signers: Sequence[SigningKey]) -> Envelope:
    """Sign root metadata (deterministic bytes) with each of ``signers``.

    A rotation to version n+1 is signed by a threshold of version n's keys and a threshold of
    its own keys; pass both sets.
    """
    payload = root.to_proto().SerializeToString(deterministic=True)
    return sign(ROOT_PAYLOAD_TYPE, payload, signers)


def sign_bundle(bundle: TrustBundle, signers: Sequence[SigningKey]) -> Envelope:
    """Sign a trust bundle (deterministic bytes) with a threshold of the current root's keys."""
    payload = bundle.to_proto().SerializeToString(deterministic=True)
    return sign(BUNDLE_PAYLOAD_TYPE, payload, signers)


def format_versions(root_version: int, bundle_version: int) -> str:
    """The value of :data:`VERSION_METADATA_KEY`: ``"<root>/<bundle>"``."""
    return f"{root_version}/{bundle_version}"


def parse_versions(value: str | bytes) -> tuple[int, int] | None:
    """(root version, bundle version) from a :data:`VERSION_METADATA_KEY` value; None when it is
    not of that form (a hint that does not parse is ignored: it could change nothing anyway)."""
    if not isinstance(value, str):
        return None
    m = _VERSIONS.fullmatch(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _threshold(envelope: Envelope, root: Root, payload_type: str, reason: TrustReason) -> None:
    result = verification_result(
        envelope, root.keys, threshold=root.threshold, payload_type=payload_type
    )
    if not result.type_ok:
        raise Unauthenticated(TrustReason.WRONG_PAYLOAD_TYPE, f"expected {payload_type}")
    if not result.verified:
        raise Unauthenticated(
            reason,
            f"{len(result.signers)} distinct valid root signature(s); {root.threshold} required",
        )


def _signed_by(envelope: Envelope, root: Root, payload_type: str) -> bool:
    return verification_result(
        envelope, root.keys, threshold=root.threshold, payload_type=payload_type
    ).verified


def _root_metadata(envelope: Envelope) -> trust_pb2.RootMetadata:
    if envelope.payload_type != ROOT_PAYLOAD_TYPE:
        raise Unauthenticated(TrustReason.WRONG_PAYLOAD_TYPE, f"expected {ROOT_PAYLOAD_TYPE}")
    try:
        return trust_pb2.RootMetadata.FromString(envelope.payload)
    except DecodeError as exc:
        raise _bad(TrustReason.MALFORMED_ROOT, "root payload does not parse") from exc


def _self_signed_root(envelope: Envelope) -> Root:
    """A root that verifies with a threshold of its own keys (a pin, or a persisted root)."""
    # The keys that verify it are inside it, so it is parsed first; nothing in it is believed
    # until its own threshold verifies.
    root = Root.from_proto(_root_metadata(envelope))
    _threshold(envelope, root, ROOT_PAYLOAD_TYPE, TrustReason.ROOT_THRESHOLD_NOT_MET)
    return root


def _parse_bundle(envelope: Envelope) -> TrustBundle:
    try:
        return TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(envelope.payload))
    except DecodeError as exc:
        raise _bad(TrustReason.MALFORMED_BUNDLE, "bundle payload does not parse") from exc


class BundleChange(enum.Enum):
    """What :meth:`TrustedState.update_bundle` did with a bundle that verified."""

    ACCEPTED = "accepted"
    """A newer version: it is the bundle held now (persist it)."""
    UNCHANGED = "unchanged"
    """The held version again: the held bundle stays (same bytes, or an equivocation, logged)."""


@dataclass(frozen=True)
class UpdateResult:
    """The versions a :meth:`TrustedState.update` moved from and to (bundle 0: none held)."""

    root_from: int
    root_to: int
    bundle_from: int
    bundle_to: int

    @property
    def changed(self) -> bool:
        return (self.root_from, self.bundle_from) != (self.root_to, self.bundle_to)

    def describe(self) -> str:
        def step(what: str, a: int, b: int) -> str:
            return f"{what} v{a}" if a == b else f"{what} v{a} -> v{b}"

        return (
            f"{step('root', self.root_from, self.root_to)}, "
            f"{step('bundle', self.bundle_from, self.bundle_to)}"
        )


class TrustedState:
    """What a verifier trusts now: the newest root it verified, and the newest bundle.

    The pin (normally root version 1) is trusted out of band, yet it must still verify with a
    threshold of its own keys. The root held may be expired: it is then "intermediate", good
    only to verify its successor, and nothing is trusted under it (:meth:`check_final_root`).
    The bundle held may be expired too (it expired while held, or it was restored so): it still
    sets the floor below which no bundle is accepted, but no claim verifies under it. A caller
    that needs an update to apply whole or not at all updates a :meth:`copy` and swaps it in.
    """

    def __init__(self, pinned_root: Envelope, *, now: datetime) -> None:
        require_utc(now, "now")
        self._root = _self_signed_root(pinned_root)
        self._root_envelope = pinned_root
        self._bundle: TrustBundle | None = None
        self._bundle_envelope: Envelope | None = None

    @classmethod
    def restore(
        cls,
        pin: Envelope,
        *,
        root: Envelope | None = None,
        bundle: Envelope | None = None,
        now: datetime,
    ) -> TrustedState:
        """Start from what a verifier persisted: its newest root (else the pin) and its bundle.

        The persisted root must verify with a threshold of its own keys and be no older than
        the pin (``ROOT_ROLLBACK``); at the pin's version it must be the pin itself
        (``ROOT_EQUIVOCATION``). Its expiry does not matter (TUF 5.2). The persisted bundle must
        verify under that root (``BUNDLE_THRESHOLD_NOT_MET``); its expiry does not matter
        either: it is held to refuse older bundles, not to verify claims.
        """
        state = cls(pin, now=now)
        if root is not None and root.payload != pin.payload:
            newest = _self_signed_root(root)
            if newest.version < state._root.version:
                raise Unauthenticated(
                    TrustReason.ROOT_ROLLBACK,
                    f"the persisted root v{newest.version} is older than the pin "
                    f"v{state._root.version}",
                )
            if newest.version == state._root.version:
                raise Unauthenticated(
                    TrustReason.ROOT_EQUIVOCATION,
                    f"the persisted root v{newest.version} is not the pinned root",
                )
            state._root, state._root_envelope = newest, root
        if bundle is not None:
            state._signed(
                bundle, state._root, BUNDLE_PAYLOAD_TYPE, TrustReason.BUNDLE_THRESHOLD_NOT_MET
            )
            state._bundle, state._bundle_envelope = _parse_bundle(bundle), bundle
        return state

    def copy(self) -> TrustedState:
        """An independent state to update while readers keep this one (everything it holds is
        immutable, so a shallow copy is a whole one)."""
        return copy.copy(self)

    @property
    def root(self) -> Root:
        return self._root

    @property
    def root_envelope(self) -> Envelope:
        return self._root_envelope

    @property
    def bundle(self) -> TrustBundle | None:
        return self._bundle

    @property
    def bundle_envelope(self) -> Envelope | None:
        return self._bundle_envelope

    @property
    def versions(self) -> tuple[int, int]:
        """(root version, bundle version); bundle 0 when none is held."""
        return self._root.version, self._bundle.version if self._bundle is not None else 0

    def behind(self, versions: tuple[int, int]) -> bool:
        """True when ``versions`` (what someone else holds) name a newer root or bundle."""
        root, bundle = self.versions
        return versions[0] > root or versions[1] > bundle

    def update_root(self, envelope: Envelope) -> None:
        """Accept root version current+1, signed by both the current and its own threshold
        (rules PLAT-TRUST-11, PLAT-TRUST-12).

        Its expiry is not checked (PLAT-TRUST-14): an expired root still vouches for its
        successor (TUF 5.3.6); only the final one counts (:meth:`check_final_root`).
        """
        # Parse only to learn the new keys; nothing is trusted until both thresholds verify.
        if envelope.payload_type != ROOT_PAYLOAD_TYPE:
            raise Unauthenticated(TrustReason.WRONG_PAYLOAD_TYPE, f"expected {ROOT_PAYLOAD_TYPE}")
        self._signed(envelope, self._root, ROOT_PAYLOAD_TYPE, TrustReason.ROOT_THRESHOLD_NOT_MET)
        new = Root.from_proto(_root_metadata(envelope))
        self._signed(envelope, new, ROOT_PAYLOAD_TYPE, TrustReason.ROOT_THRESHOLD_NOT_MET)
        self._check_next(new)
        self._root, self._root_envelope = new, envelope
        # Fast-forward recovery (TUF 5.3.11, PLAT-TRUST-16): the bundle was signed under the
        # old root; keep it,
        # and the floor its version sets, only if the new root still signs it.
        old = self._bundle_envelope
        if old is not None and not _signed_by(old, new, BUNDLE_PAYLOAD_TYPE):
            self._bundle = None
            self._bundle_envelope = None

    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        """``envelope`` is of ``payload_type`` (PLAT-TRUST-4) and signed by a threshold of
        distinct keys of ``root`` (PLAT-TRUST-1, PLAT-TRUST-2): signatures under other key ids
        are ignored, and a key counts once however often it signs (PLAT-TRUST-3); else
        UNAUTHENTICATED ``reason``."""
        _threshold(envelope, root, payload_type, reason)

    def _check_next(self, new: Root) -> None:
        """Rule PLAT-TRUST-13: a new root's version is the held one's plus one."""
        if new.version != self._root.version + 1:
            raise Unauthenticated(
                TrustReason.ROOT_VERSION_NOT_NEXT,
                f"root version {new.version} does not follow {self._root.version}",
            )

    def update_roots(
        self, roots: Sequence[Envelope], *, on_root: Callable[[Envelope], None] | None = None
    ) -> None:
        """Apply the roots newer than the one held, in order, at most :data:`MAX_ROOT_ROTATIONS`.

        Roots at or below the held version are history: only their version is read. Each root
        accepted goes to ``on_root`` (to persist it) before the next is looked at, so a later
        failure keeps the progress made (TUF 5.3.8).
        """
        applied = 0
        for envelope in roots:
            if _root_metadata(envelope).version <= self._root.version:
                continue
            if applied == MAX_ROOT_ROTATIONS:
                log.warning(
                    "root chain longer than %d rotations: root v%d held until the next refresh",
                    MAX_ROOT_ROTATIONS,
                    self._root.version,
                )
                return
            self.update_root(envelope)
            applied += 1
            if on_root is not None:
                on_root(envelope)

    def check_final_root(self, now: datetime) -> None:
        """Raise ``ROOT_EXPIRED`` when the newest root held has expired (TUF 5.3.10; rule
        PLAT-TRUST-15)."""
        if self._root.expires_at <= require_utc(now, "now"):
            raise Unauthenticated(
                TrustReason.ROOT_EXPIRED, f"the trusted root v{self._root.version} has expired"
            )

    def update_bundle(self, envelope: Envelope, *, now: datetime) -> BundleChange:
        """Accept a newer bundle; keep the held one at the same version; refuse an older one
        (rules PLAT-TRUST-5, PLAT-TRUST-7, PLAT-TRUST-8, PLAT-TRUST-9).

        A higher version is accepted whatever the gap (TUF 5.4.3: skipping is allowed). The
        held version again, byte for byte, is a refresh; with other bytes it is logged as
        ``BUNDLE_EQUIVOCATION`` and the held bundle stays. Either way the bundle held afterwards
        must be unexpired (TUF 5.4.4): an expired newer bundle is refused and changes nothing,
        and an expired held one is reported as such (it stays, as the floor).
        """
        now = require_utc(now, "now")
        self.check_final_root(now)
        self._signed(
            envelope, self._root, BUNDLE_PAYLOAD_TYPE, TrustReason.BUNDLE_THRESHOLD_NOT_MET
        )
        bundle = _parse_bundle(envelope)
        held, held_envelope = self._bundle, self._bundle_envelope
        change = BundleChange.ACCEPTED
        if held is not None and held_envelope is not None:
            if bundle.version < held.version:
                raise Unauthenticated(
                    TrustReason.BUNDLE_ROLLBACK,
                    f"bundle version {bundle.version} is older than {held.version}",
                )
            if bundle.version == held.version:
                if envelope.payload != held_envelope.payload:
                    log.warning(
                        "%s: another bundle signed as version %d; the one held stays",
                        TrustReason.BUNDLE_EQUIVOCATION,
                        held.version,
                    )
                bundle, envelope, change = held, held_envelope, BundleChange.UNCHANGED
        if bundle.expires_at <= now:
            raise Unauthenticated(
                TrustReason.BUNDLE_EXPIRED, f"bundle version {bundle.version} has expired"
            )
        bundle.check_issued(now)
        self._bundle, self._bundle_envelope = bundle, envelope
        return change

    def update(
        self,
        roots: Sequence[Envelope],
        bundle: Envelope,
        *,
        now: datetime,
        on_root: Callable[[Envelope], None] | None = None,
    ) -> UpdateResult:
        """Apply a GetTrustBundle answer (or a trust directory): the newer roots in order, the
        final root's expiry, then the bundle (TUF 5.3, 5.4).

        Asking again for the whole chain is a refresh, not an error. On an error the state
        keeps what was accepted before it (the roots so far, TUF 5.3.8).
        """
        root_from, bundle_from = self.versions
        self.update_roots(roots, on_root=on_root)
        self.check_final_root(now)
        self.update_bundle(bundle, now=now)
        root_to, bundle_to = self.versions
        return UpdateResult(root_from, root_to, bundle_from, bundle_to)

    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        """The carrier key named ``key_id``, if the final root and the bundle trust it now: not
        under an expired bundle (PLAT-TRUST-10), not revoked (PLAT-CLAIM-4)."""
        self.check_final_root(now)
        bundle = self._bundle
        if bundle is None:
            raise Unauthenticated(
                TrustReason.NO_TRUST_BUNDLE, "no trust bundle has been accepted yet"
            )
        if bundle.expires_at <= require_utc(now, "now"):
            raise Unauthenticated(TrustReason.BUNDLE_EXPIRED, "the trust bundle has expired")
        if key_id in bundle.revoked_key_ids:
            raise Unauthenticated(TrustReason.KEY_REVOKED, "the signing key has been revoked")
        key = bundle.carrier_keys.get(key_id)
        if key is None:
            raise Unauthenticated(
                TrustReason.UNKNOWN_KEY,
                "the signing key is not in the trust bundle",
                metadata={"keyid": key_id[:16]},
            )
        return key
