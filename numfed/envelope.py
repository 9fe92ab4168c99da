"""DSSE envelopes: sign and verify payload bytes over the pre-authentication encoding.

The signature covers ``PAE(payload_type, payload)`` only, so the payload bytes are verified
exactly as they travel and are parsed only after a signature verifies. Ed25519 is the
default; ECDSA P-256 with SHA-256 (raw r||s, 64 bytes) is accepted. A key's id is derived from
the key itself (SHA-256 of its SubjectPublicKeyInfo), so one key cannot count twice toward a
threshold under two names.

Every :class:`VerifyKey` is checked to be a proper key of its algorithm when it is built
(:func:`check_public_key`, :mod:`numfed.keycheck`), before any signature is verified with it,
and a key read from the wire must be written in its one DER encoding.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from numfed.errors import InvalidArgument, Unauthenticated
from numfed.keycheck import ed25519_key_problem
from numfed.v1 import claim_pb2, trust_pb2

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "Envelope",
    "KeyAlgorithm",
    "Signature",
    "SigningKey",
    "VerificationResult",
    "VerifyKey",
    "check_public_key",
    "key_id_for",
    "key_map",
    "pae",
    "sign",
    "verification_result",
    "verify",
]

MAX_ENVELOPE_BYTES = 64 * 1024
"""Largest serialized envelope accepted (payload plus signatures)."""
MAX_SIGNATURES = 16
"""Most signatures one envelope may carry."""
SIGNATURE_BYTES = 64
"""Ed25519 signatures and raw ECDSA P-256 r||s signatures are both exactly 64 bytes."""
_P256_HALF = 32


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id_for(spki_der: bytes) -> str:
    """Lowercase hex SHA-256 of a DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).hexdigest()


class KeyAlgorithm(enum.Enum):
    """A signature scheme numfed accepts."""

    ED25519 = trust_pb2.KEY_ALGORITHM_ED25519
    ECDSA_P256_SHA256 = trust_pb2.KEY_ALGORITHM_ECDSA_P256_SHA256


_PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def _spki_of(key: _PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _bad_key(message: str) -> InvalidArgument:
    return InvalidArgument("BAD_PUBLIC_KEY", message)


def _check_loaded(key: object, algorithm: KeyAlgorithm) -> _PublicKey:
    """``key`` as a public key of ``algorithm``, or BAD_PUBLIC_KEY saying what is wrong."""
    if algorithm is KeyAlgorithm.ED25519:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise _bad_key("key is not an Ed25519 key")
        problem = ed25519_key_problem(
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        if problem is not None:
            raise _bad_key(f"not a proper Ed25519 public key: {problem}")
        return key
    # cryptography refuses on load a point off the curve, a coordinate not below p and the point
    # at infinity; P-256's cofactor is 1, so no subgroup check is due.
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise _bad_key("key is not a P-256 key")
    return key


def check_public_key(algorithm: KeyAlgorithm, spki: bytes) -> None:
    """Refuse ``spki`` unless it is a proper public key of ``algorithm`` in its one encoding.

    Call it wherever a key enters a root or a trust bundle; every verifier checks the same when
    it parses one (:meth:`VerifyKey.from_spki`). ``spki`` is a DER SubjectPublicKeyInfo, written
    exactly as numfed writes it: the algorithm's own OID (Ed25519, or id-ecPublicKey with the
    named curve P-256, never explicit parameters), P-256 points uncompressed, nothing after it.
    Ed25519: canonical, on the curve, in the prime-order subgroup, not the identity (no
    small-order point). P-256: on the curve, not the point at infinity. Otherwise
    INVALID_ARGUMENT ``BAD_PUBLIC_KEY`` with a message saying what is wrong.
    """
    VerifyKey.from_spki(spki, algorithm)


def _verifier(key: _PublicKey) -> Callable[[bytes, bytes], None]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.verify

    def verify_p256(sig: bytes, message: bytes) -> None:
        r = int.from_bytes(sig[:_P256_HALF], "big")
        s = int.from_bytes(sig[_P256_HALF:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))

    return verify_p256


@dataclass(frozen=True)
class VerifyKey:
    """A public key that verifies signatures of one algorithm; checked when built."""

    key_id: str
    algorithm: KeyAlgorithm
    spki: bytes
    _key: _PublicKey = field(repr=False, compare=False)
    _verify: Callable[[bytes, bytes], None] = field(init=False, repr=False, compare=False)
    """Raises InvalidSignature unless a 64-byte signature is good; chosen for the algorithm
    once, so that verifying costs no type test."""

    def __post_init__(self) -> None:
        # Every way of building a key passes here, so no key escapes the check.
        key = _check_loaded(self._key, self.algorithm)
        if self.spki != _spki_of(self._key) or self.key_id != key_id_for(self.spki):
            raise _bad_key("spki and key_id must be the key's own")
        object.__setattr__(self, "_verify", _verifier(key))

    @classmethod
    def from_spki(cls, spki: bytes, algorithm: KeyAlgorithm) -> VerifyKey:
        """Load a DER SubjectPublicKeyInfo; the key must be a proper key of ``algorithm``,
        written in its one encoding (:func:`check_public_key`)."""
        try:
            key = serialization.load_der_public_key(spki)
        except (ValueError, TypeError) as exc:
            raise _bad_key(f"public key does not parse: {exc}") from exc
        checked = cls._checked(key, algorithm)
        if checked.spki != spki:
            # One key, one encoding, one id: a compressed P-256 point, explicit curve parameters
            # (which cryptography maps to the named curve) or another DER spelling of the same
            # key would otherwise count as a second key.
            raise _bad_key(
                "the key is not in its one DER encoding (the algorithm's own OID, a named curve,"
                " an uncompressed point, nothing after it)"
            )
        return checked

    @classmethod
    def from_public_key(cls, key: _PublicKey) -> VerifyKey:
        """Wrap a ``cryptography`` public key (Ed25519 or P-256)."""
        if isinstance(key, ed25519.Ed25519PublicKey):
            return cls._checked(key, KeyAlgorithm.ED25519)
        return cls._checked(key, KeyAlgorithm.ECDSA_P256_SHA256)

    @classmethod
    def from_raw_ed25519(cls, raw: bytes) -> VerifyKey:
        """An Ed25519 key from its 32 raw bytes."""
        if len(raw) != 32:
            raise _bad_key("an Ed25519 public key has 32 bytes")
        return cls._checked(ed25519.Ed25519PublicKey.from_public_bytes(raw), KeyAlgorithm.ED25519)

    @classmethod
    def from_p256_point(cls, point: bytes) -> VerifyKey:
        """A P-256 key from its SEC1 encoded point (uncompressed or compressed)."""
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError as exc:
            raise _bad_key(f"not a P-256 point: {exc}") from exc
        return cls._checked(key, KeyAlgorithm.ECDSA_P256_SHA256)

    @classmethod
    def _checked(cls, key: object, algorithm: KeyAlgorithm) -> VerifyKey:
        loaded = _check_loaded(key, algorithm)
        spki = _spki_of(loaded)
        return cls(key_id=key_id_for(spki), algorithm=algorithm, spki=spki, _key=loaded)

    @classmethod
    def from_proto(cls, pb: trust_pb2.PublicKey) -> VerifyKey:
        """Build from the wire form; the stated key_id must be the key's own."""
        try:
            algorithm = KeyAlgorithm(pb.algorithm)
        except ValueError as exc:
            raise InvalidArgument("BAD_PUBLIC_KEY", "unknown key algorithm") from exc
        key = cls.from_spki(pb.public_key_spki, algorithm)
        if pb.key_id != key.key_id:
            raise InvalidArgument("KEY_ID_MISMATCH", "key_id is not the SHA-256 of the key")
        return key

    def to_proto(self) -> trust_pb2.PublicKey:
        return trust_pb2.PublicKey(
            key_id=self.key_id, algorithm=self.algorithm.value, public_key_spki=self.spki
        )

    def verify_raw(self, sig: bytes, message: bytes) -> bool:
        """True only when ``sig`` is a valid signature of ``message`` under this key."""
        if len(sig) != SIGNATURE_BYTES:
            return False
        try:
            self._verify(sig, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs envelopes. Carriers and root key holders keep these."""

    algorithm: KeyAlgorithm
    _key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm = KeyAlgorithm.ED25519) -> SigningKey:
        if algorithm is KeyAlgorithm.ED25519:
            return cls(algorithm, ed25519.Ed25519PrivateKey.generate())
        return cls(algorithm, ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(KeyAlgorithm.ED25519, key)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(KeyAlgorithm.ECDSA_P256_SHA256, key)
        raise InvalidArgument("BAD_PRIVATE_KEY", "signing keys are Ed25519 or P-256")

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public(self) -> VerifyKey:
        return VerifyKey.from_public_key(self._key.public_key())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign_raw(self, message: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_P256_HALF, "big") + s.to_bytes(_P256_HALF, "big")


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: payload bytes as signed, their type, and signatures."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    @classmethod
    def from_proto(cls, pb: claim_pb2.Envelope) -> Envelope:
        """Check the envelope's shape (size, signature count); signatures are not verified."""
        if pb.ByteSize() > MAX_ENVELOPE_BYTES:
            raise InvalidArgument(
                "ENVELOPE_TOO_LARGE",
                f"envelope has {pb.ByteSize()} bytes; at most {MAX_ENVELOPE_BYTES} are accepted",
            )
        if not pb.payload_type:
            raise InvalidArgument("MISSING_PAYLOAD_TYPE", "envelope has no payload_type")
        if not pb.signatures:
            raise Unauthenticated("UNSIGNED", "envelope has no signature")
        if len(pb.signatures) > MAX_SIGNATURES:
            raise InvalidArgument(
                "TOO_MANY_SIGNATURES", f"at most {MAX_SIGNATURES} signatures are accepted"
            )
        return cls(
            payload=pb.payload,
            payload_type=pb.payload_type,
            signatures=tuple(Signature(s.keyid, s.sig) for s in pb.signatures),
        )

    def to_proto(self) -> claim_pb2.Envelope:
        return claim_pb2.Envelope(
            payload=self.payload,
            payload_type=self.payload_type,
            signatures=[claim_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in self.signatures],
        )


def sign(payload_type: str, payload: bytes, signers: Sequence[SigningKey]) -> Envelope:
    """Sign ``payload`` with every key in ``signers``."""
    message = pae(payload_type, payload)
    return Envelope(
        payload=payload,
        payload_type=payload_type,
        signatures=tuple(Signature(k.key_id, k.sign_raw(message)) for k in signers),
    )


@dataclass(frozen=True)
class VerificationResult:
    """What verifying an envelope against a set of keys came to.

    ``signers`` holds the distinct key ids whose signature verified; each counts once however
    often it signs. ``verified`` is True when they reach ``threshold`` and the payload type is
    the expected one.
    """

    threshold: int
    signers: frozenset[str]
    unknown: frozenset[str]
    bad: frozenset[str]
    type_ok: bool

    @property
    def verified(self) -> bool:
        return self.type_ok and len(self.signers) >= self.threshold


def verification_result(
    envelope: Envelope,
    keys: Mapping[str, VerifyKey],
    *,
    threshold: int = 1,
    payload_type: str,
) -> VerificationResult:
    """Verify every signature of ``envelope`` against ``keys`` (by key id) and report."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    message = pae(envelope.payload_type, envelope.payload)
    signers: set[str] = set()
    unknown: set[str] = set()
    bad: set[str] = set()
    for s in envelope.signatures:
        key = keys.get(s.keyid)
        if key is None:
            unknown.add(s.keyid)
        elif s.keyid not in signers and key.verify_raw(s.sig, message):
            signers.add(s.keyid)
        elif s.keyid not in signers:
            bad.add(s.keyid)
    return VerificationResult(
        threshold=threshold,
        signers=frozenset(signers),
        unknown=frozenset(unknown),
        bad=frozenset(bad),
        type_ok=envelope.payload_type == payload_type,
    )


def verify(
    envelope: Envelope,
    keys: Mapping[str, VerifyKey],
    *,
    threshold: int = 1,
    payload_type: str,
) -> frozenset[str]:
    """Verify like :func:`verification_result`, raising ``Unauthenticated`` unless verified.

    Returns the ids of the keys whose signatures verified.
    """
    result = verification_result(envelope, keys, threshold=threshold, payload_type=payload_type)
    if not result.type_ok:
        raise Unauthenticated(
            "WRONG_PAYLOAD_TYPE",
            f"expected payload type {payload_type!r}, got {envelope.payload_type!r}",
        )
    if result.verified:
        return result.signers
    if not result.signers and not result.bad and result.unknown:
        raise Unauthenticated(
            "UNKNOWN_KEY",
            "no signature is by a known key",
            metadata={"keyid": sorted(result.unknown)[0][:16]},
        )
    if result.bad and not result.signers:
        raise Unauthenticated("BAD_SIGNATURE", "signature does not verify")
    raise Unauthenticated(
        "THRESHOLD_NOT_MET",
        f"{len(result.signers)} distinct valid signature(s); {threshold} required",
    )


def key_map(keys: Iterable[VerifyKey]) -> dict[str, VerifyKey]:
    """Index keys by id."""
    return {k.key_id: k for k in keys}
