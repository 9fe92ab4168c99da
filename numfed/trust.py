"""The federation's trust model: root keys, the carrier-key bundle, and a verifier's state.

Modelled on TUF. Verifiers pin root version 1. Root version n+1 counts only when signed by a
threshold of version n's keys *and* a threshold of its own keys. The trust bundle (carrier keys,
each with a validity window and the number prefixes it may attest) is signed by a threshold of
the current root's keys; its version must grow by exactly one and it expires, so neither a
rollback, a fast-forward nor a freeze goes unnoticed. Each key id counts once toward a threshold,
and key ids are derived from the keys, so one key cannot pose as two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from google.protobuf.message import DecodeError

from numfed.envelope import Envelope, SigningKey, VerifyKey, sign, verification_result
from numfed.errors import InvalidArgument, Unauthenticated
from numfed.timeutil import from_timestamp, require_utc, to_timestamp
from numfed.v1 import trust_pb2

__all__ = [
    "BUNDLE_PAYLOAD_TYPE",
    "ROOT_PAYLOAD_TYPE",
    "AuditKey",
    "CarrierKey",
    "Root",
    "TrustBundle",
    "TrustedState",
    "sign_bundle",
    "sign_root",
]

ROOT_PAYLOAD_TYPE = "application/vnd.numfed.root+proto"
BUNDLE_PAYLOAD_TYPE = "application/vnd.numfed.trust-bundle+proto"
_PREFIX = re.compile(r"\+[0-9]{1,15}")
_CARRIER = re.compile(r"[a-z0-9_-]{1,32}")


def _bad(reason: str, what: str) -> InvalidArgument:
    return InvalidArgument(reason, what)


def _freeze(obj: object, name: str, value: object) -> None:
    """Replace a field of a frozen dataclass with an immutable copy, so rules checked stay true."""
    object.__setattr__(obj, name, value)


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
            raise _bad("MALFORMED_ROOT", "root version starts at 1")
        if not 1 <= self.threshold <= len(self.keys):
            raise _bad("MALFORMED_ROOT", "root threshold must be within 1..number of keys")
        if any(k != v.key_id for k, v in self.keys.items()):
            raise _bad("MALFORMED_ROOT", "root keys must be indexed by their own key id")

    @classmethod
    def from_proto(cls, pb: trust_pb2.RootMetadata) -> Root:
        keys = [VerifyKey.from_proto(k) for k in pb.keys]
        by_id = {k.key_id: k for k in keys}
        if len(by_id) != len(keys):
            raise _bad("MALFORMED_ROOT", "a root key is listed twice")
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
            raise _bad("MALFORMED_BUNDLE", "a carrier key's not_after must follow not_before")
        if not _CARRIER.fullmatch(self.carrier_id):
            raise _bad("MALFORMED_BUNDLE", f"bad carrier id {self.carrier_id!r}")
        if not self.number_prefixes or not all(_PREFIX.fullmatch(p) for p in self.number_prefixes):
            raise _bad("MALFORMED_BUNDLE", "number prefixes are '+' and digits, at least one")

    def covers(self, number: str) -> bool:
        """True when ``number`` (E.164) starts with one of the key's prefixes."""
        return any(number.startswith(p) for p in self.number_prefixes)

    def valid_at(self, t: datetime) -> bool:
        """True when ``t`` lies in the key's window [not_before, not_after], both inclusive."""
        return self.not_before <= require_utc(t, "t") <= self.not_after

    @classmethod
    def from_proto(cls, pb: trust_pb2.CarrierKey) -> CarrierKey:
        return cls(
            VerifyKey.from_proto(pb.key),
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
            raise _bad("MALFORMED_BUNDLE", "an audit key's not_after must follow not_before")

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
    """

    version: int
    issued_at: datetime
    expires_at: datetime
    carrier_keys: Mapping[str, CarrierKey]
    revoked_key_ids: frozenset[str] = field(default_factory=frozenset)
    number_ranges: Mapping[str, str] = field(default_factory=dict)
    audit_keys: Mapping[str, AuditKey] = field(default_factory=dict)
    """The gateway's audit keys by key id: they sign audit checkpoints (numfed/checkpoint.py)."""

    def __post_init__(self) -> None:
        _freeze(self, "audit_keys", MappingProxyType(dict(self.audit_keys)))
        if any(k != v.key.key_id for k, v in self.audit_keys.items()):
            raise _bad("MALFORMED_BUNDLE", "audit keys must be indexed by their own key id")
        _freeze(self, "issued_at", require_utc(self.issued_at, "bundle issued_at"))
        _freeze(self, "expires_at", require_utc(self.expires_at, "bundle expires_at"))
        _freeze(self, "carrier_keys", MappingProxyType(dict(self.carrier_keys)))
        _freeze(self, "revoked_key_ids", frozenset(self.revoked_key_ids))
        _freeze(self, "number_ranges", MappingProxyType(dict(self.number_ranges)))
        for prefix, carrier in self.number_ranges.items():
            if not _PREFIX.fullmatch(prefix) or not _CARRIER.fullmatch(carrier):
                raise _bad("MALFORMED_BUNDLE", f"bad number range {prefix!r} -> {carrier!r}")
        if self.version < 1:
            raise _bad("MALFORMED_BUNDLE", "bundle version starts at 1")
        if self.expires_at <= self.issued_at:
            raise _bad("MALFORMED_BUNDLE", "bundle must expire after it is issued")
        if any(k != v.key.key_id for k, v in self.carrier_keys.items()):
            raise _bad("MALFORMED_BUNDLE", "carrier keys must be indexed by their own key id")

    @classmethod
    def from_proto(cls, pb: trust_pb2.TrustBundle) -> TrustBundle:
        keys = [CarrierKey.from_proto(k) for k in pb.carrier_keys]
        by_id = {k.key.key_id: k for k in keys}
        if len(by_id) != len(keys):
            raise _bad("MALFORMED_BUNDLE", "a carrier key is listed twice")
        ranges = {r.prefix: r.carrier_id for r in pb.number_ranges}
        if len(ranges) != len(pb.number_ranges):
            raise _bad("MALFORMED_BUNDLE", "a number range is listed twice")
        audit = {k.key.key_id: k for k in (AuditKey.from_proto(a) for a in pb.audit_keys)}
        if len(audit) != len(pb.audit_keys):
            raise _bad("MALFORMED_BUNDLE", "an audit key is listed twice")
        return cls(
            pb.version,
            from_timestamp(pb.issued_at),
            from_timestamp(pb.expires_at),
            by_id,
            frozenset(pb.revoked_key_ids),
            ranges,
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


def _threshold(envelope: Envelope, root: Root, payload_type: str, reason: str) -> None:
    result = verification_result(
        envelope, root.keys, threshold=root.threshold, payload_type=payload_type
    )
    if not result.type_ok:
        raise Unauthenticated("WRONG_PAYLOAD_TYPE", f"expected {payload_type}")
    if not result.verified:
        raise Unauthenticated(
            reason,
            f"{len(result.signers)} distinct valid root signature(s); {root.threshold} required",
        )


def _parse_root(envelope: Envelope) -> Root:
    try:
        return Root.from_proto(trust_pb2.RootMetadata.FromString(envelope.payload))
    except DecodeError as exc:
        raise _bad("MALFORMED_ROOT", "root payload does not parse") from exc


class TrustedState:
    """What a verifier trusts now: a root chain from its pin, and the newest bundle it accepted.

    The pin (normally root version 1) is trusted out of band, yet it must still verify with a
    threshold of its own keys. An expired pin is still a pin: it can rotate to a newer root,
    but no bundle is accepted while the current root is expired.
    """

    def __init__(self, pinned_root: Envelope, *, now: datetime) -> None:
        require_utc(now, "now")
        if pinned_root.payload_type != ROOT_PAYLOAD_TYPE:
            raise Unauthenticated("WRONG_PAYLOAD_TYPE", f"expected {ROOT_PAYLOAD_TYPE}")
        # Self-signed: the keys that verify the pin are inside it, so it is parsed first.
        root = _parse_root(pinned_root)
        _threshold(pinned_root, root, ROOT_PAYLOAD_TYPE, "ROOT_THRESHOLD_NOT_MET")
        self._root = root
        self._accepted_roots = {pinned_root.payload}
        self._bundle: TrustBundle | None = None
        self._bundle_envelope: Envelope | None = None

    @property
    def root(self) -> Root:
        return self._root

    @property
    def bundle(self) -> TrustBundle | None:
        return self._bundle

    def update_root(self, envelope: Envelope, *, now: datetime) -> None:
        """Accept root version current+1, signed by both the current and its own threshold."""
        # Parse only to learn the new keys; nothing is trusted until both thresholds verify.
        if envelope.payload_type != ROOT_PAYLOAD_TYPE:
            raise Unauthenticated("WRONG_PAYLOAD_TYPE", f"expected {ROOT_PAYLOAD_TYPE}")
        _threshold(envelope, self._root, ROOT_PAYLOAD_TYPE, "ROOT_THRESHOLD_NOT_MET")
        new = _parse_root(envelope)
        _threshold(envelope, new, ROOT_PAYLOAD_TYPE, "ROOT_THRESHOLD_NOT_MET")
        if new.version != self._root.version + 1:
            raise Unauthenticated(
                "ROOT_VERSION_NOT_NEXT",
                f"root version {new.version} does not follow {self._root.version}",
            )
        if new.expires_at <= require_utc(now, "now"):
            raise Unauthenticated("ROOT_EXPIRED", f"root version {new.version} has expired")
        self._root = new
        self._accepted_roots.add(envelope.payload)
        # The bundle was signed under the old root: keep it only if the new root still signs it.
        old = self._bundle_envelope
        if (
            old is not None
            and not verification_result(
                old, new.keys, threshold=new.threshold, payload_type=BUNDLE_PAYLOAD_TYPE
            ).verified
        ):
            self._bundle = None
            self._bundle_envelope = None

    def update_bundle(self, envelope: Envelope, *, now: datetime) -> None:
        """Accept the next bundle: version current+1, or any version if none is held yet.

        The bundle held, sent again byte for byte, is a refresh and changes nothing (it must
        still be unexpired); another bundle at the same version is a rollback.
        """
        now = require_utc(now, "now")
        if self._root.expires_at <= now:
            raise Unauthenticated("ROOT_EXPIRED", "the trusted root has expired")
        _threshold(envelope, self._root, BUNDLE_PAYLOAD_TYPE, "BUNDLE_THRESHOLD_NOT_MET")
        try:
            bundle = TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(envelope.payload))
        except DecodeError as exc:
            raise _bad("MALFORMED_BUNDLE", "bundle payload does not parse") from exc
        if bundle.expires_at <= now:
            raise Unauthenticated("BUNDLE_EXPIRED", f"bundle version {bundle.version} has expired")
        current, current_envelope = self._bundle, self._bundle_envelope
        if current is not None and current_envelope is not None:
            if envelope.payload == current_envelope.payload:
                return  # the same bundle again: a refresh, not a rollback
            if bundle.version <= current.version:
                raise Unauthenticated(
                    "BUNDLE_ROLLBACK",
                    f"bundle version {bundle.version} is not newer than {current.version}",
                )
            if bundle.version > current.version + 1:
                raise Unauthenticated(
                    "BUNDLE_FAST_FORWARD",
                    f"bundle version {bundle.version} skips past {current.version + 1}",
                )
        self._bundle = bundle
        self._bundle_envelope = envelope

    def update(self, roots: Sequence[Envelope], bundle: Envelope, *, now: datetime) -> None:
        """Apply a GetTrustBundle answer: each newer root in order, then the bundle.

        Roots this state has already accepted (byte for byte) are skipped, so asking again
        for the whole chain is a refresh, not an error.
        """
        for r in roots:
            if r.payload not in self._accepted_roots:
                self.update_root(r, now=now)
        self.update_bundle(bundle, now=now)

    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        """The carrier key named ``key_id``, if the current bundle trusts it now."""
        bundle = self._bundle
        if bundle is None:
            raise Unauthenticated("NO_TRUST_BUNDLE", "no trust bundle has been accepted yet")
        if bundle.expires_at <= require_utc(now, "now"):
            raise Unauthenticated("BUNDLE_EXPIRED", "the trust bundle has expired")
        if key_id in bundle.revoked_key_ids:
            raise Unauthenticated("KEY_REVOKED", "the signing key has been revoked")
        key = bundle.carrier_keys.get(key_id)
        if key is None:
            raise Unauthenticated(
                "UNKNOWN_KEY",
                "the signing key is not in the trust bundle",
                metadata={"keyid": key_id[:16]},
            )
        return key
