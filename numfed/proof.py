"""Holder proofs: a portable, offline-verifiable token "N has changed holder after X".

A proof is a HOLDER_PROOF tenure claim in a DSSE envelope, encoded as one URL-safe base64
string (``nfp1.`` + the serialized envelope). Anyone holding the federation's trust files can
check it without asking anyone: ``numfed verify TOKEN --trust DIR``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.message import DecodeError

from numfed.claims import ClaimPolicy, Purpose, TenureClaim, verify_tenure_claim
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument
from numfed.trust import TrustedState
from numfed.v1 import claim_pb2

__all__ = [
    "PREFIX",
    "PROOF_MAX_LIFETIME",
    "ProvenProof",
    "decode_proof",
    "encode_proof",
    "verify_proof",
]

PREFIX = "nfp1."
PROOF_MAX_LIFETIME = timedelta(days=90)
"""A proof is carried around for a while: it may live up to 90 days (the clock skew is the
trust bundle's). It proves something only while its signing key's window holds the verifier's
clock, whatever the proof says about when it was signed."""


def encode_proof(envelope: Envelope) -> str:
    raw = envelope.to_proto().SerializeToString(deterministic=True)
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_proof(token: str) -> Envelope:
    token = token.strip()
    if not token.startswith(PREFIX):
        raise InvalidArgument("NOT_A_PROOF", f"a holder proof starts with {PREFIX!r}")
    body = token[len(PREFIX) :]
    try:
        # validate: a character outside the alphabet is an error, not skipped (one spelling).
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        return Envelope.from_proto(claim_pb2.Envelope.FromString(raw))
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise InvalidArgument("MALFORMED_PROOF", "the proof does not decode") from exc


@dataclass(frozen=True)
class ProvenProof:
    claim: TenureClaim
    key_id: str

    def statement(self) -> str:
        c = self.claim
        return (
            f"{c.number} has been held by its current holder since "
            f"{c.tenure_start:%Y-%m-%d %H:%M:%S} UTC (attested by {c.carrier_id}); "
            f"anything bound to it before then belonged to someone else"
        )


def verify_proof(token: str, trust: TrustedState, *, now: datetime) -> ProvenProof:
    """Verify a holder proof offline; raise the precise error if it proves nothing."""
    policy = ClaimPolicy.from_bundle(trust.bundle, max_lifetime=PROOF_MAX_LIFETIME)
    verified = verify_tenure_claim(
        decode_proof(token), trust, now=now, purposes=(Purpose.HOLDER_PROOF,), policy=policy
    )
    return ProvenProof(verified.claim, verified.key_id)
