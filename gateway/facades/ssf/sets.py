"""Lifecycle events as Security Event Tokens (RFC 8417), as the SSF and RISC profiles want them.

One SET per event of a carrier's signed batch. Its ``jti`` is the event's ``event_id`` in hex,
so an event delivered again (a retry, or the same event in a later batch) has the same ``jti``
and a receiver keeps it once. The subject is the number (``sub_id`` of format ``phone_number``,
RFC 9493). The event type:

=================  ==========================================================================
REASSIGNED         ``https://schemas.openid.net/secevent/risc/event-type/identifier-recycled``
DEACTIVATED        ``https://numfed.dev/secevent/event-type/deactivated``
PENDING_RELEASE    ``https://numfed.dev/secevent/event-type/pending-release``
PORTED (a half)    ``https://numfed.dev/secevent/event-type/ported``
=================  ==========================================================================

RISC has no type for a number given up or about to be reassigned (``account-disabled`` and
``account-purged`` are about an account at the transmitter, which the gateway does not hold),
so those are numfed's own. Every event object carries the carrier's whole signed batch as
``numfed_envelope`` (URL-safe base64 of the ``numfed.v1.Envelope``, no padding): a receiver
verifies the carrier's signature itself and reads the event whose ``event_id`` is the ``jti``;
the other members repeat what that event says, for reading only.

SETs are JWS compact serializations signed with the gateway's SET key, ``alg`` ``EdDSA``
(Ed25519; RFC 9864's name for the same signature, ``Ed25519``, is not yet known to receivers'
JOSE libraries), ``typ`` ``secevent+jwt``, ``kid`` the key's RFC 7638 thumbprint; the key is
published at the ``jwks_uri``. No ``sub`` and no ``exp`` (SSF).
"""

from __future__ import annotations

import base64
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from gateway.pseudonym import load_or_create_key
from numfed.events import EventKind, LifecycleEvent

__all__ = [
    "EVENT_TYPES",
    "VERIFICATION",
    "SetSigner",
    "event_set_claims",
    "jti_of",
    "verification_claims",
]

RISC = "https://schemas.openid.net/secevent/risc/event-type/"
NUMFED = "https://numfed.dev/secevent/event-type/"
EVENT_TYPES: Mapping[EventKind, str] = {
    EventKind.REASSIGNED: RISC + "identifier-recycled",
    EventKind.DEACTIVATED: NUMFED + "deactivated",
    EventKind.PENDING_RELEASE: NUMFED + "pending-release",
    EventKind.PORTED: NUMFED + "ported",
}
"""The event type URI of each lifecycle event kind."""
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
SET_TYPE = "secevent+jwt"
ALGORITHM = "EdDSA"


def jti_of(event_id: bytes) -> str:
    """A lifecycle event's SET ``jti``: its 16-byte ``event_id`` in lowercase hex."""
    return event_id.hex()


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def event_set_claims(
    *,
    event: LifecycleEvent,
    envelope: bytes,
    carrier_id: str,
    issuer: str,
    audience: str,
    now: datetime,
) -> dict[str, Any]:
    """The claims of the SET for ``event``, one of the carrier's signed batch ``envelope``."""
    body: dict[str, Any] = {
        "event_timestamp": int(event.at.timestamp()),
        "numfed_envelope": _b64(envelope),
        "numfed_carrier": carrier_id,
        "numfed_at": _rfc3339(event.at),
    }
    if event.tenure_start is not None:
        body["numfed_tenure_start"] = _rfc3339(event.tenure_start)
    if event.as_of is not None:
        body["numfed_as_of"] = _rfc3339(event.as_of)
    if event.kind is EventKind.PORTED:
        body["numfed_from_carrier"] = event.from_carrier
        body["numfed_to_carrier"] = event.to_carrier
    jti = jti_of(event.event_id)
    return {
        "iss": issuer,
        "aud": audience,
        "iat": int(now.timestamp()),
        "jti": jti,
        "txn": jti,
        "sub_id": {"format": "phone_number", "phone_number": event.number},
        "events": {EVENT_TYPES[event.kind]: body},
    }


def verification_claims(
    *, jti: str, stream_id: str, state: str | None, issuer: str, audience: str, now: datetime
) -> dict[str, Any]:
    """The claims of a verification SET for a stream (SSF: ``sub_id`` is the stream, opaque)."""
    body = {} if state is None else {"state": state}
    return {
        "iss": issuer,
        "aud": audience,
        "iat": int(now.timestamp()),
        "jti": jti,
        "sub_id": {"format": "opaque", "id": stream_id},
        "events": {VERIFICATION: body},
    }


def new_jti() -> str:
    """A fresh ``jti`` for a SET that is no lifecycle event (a verification)."""
    return secrets.token_hex(16)


def _new_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class SetSigner:
    """The gateway's SET key: signs SETs, and is published as a JWKS."""

    key: OKPKey

    @classmethod
    def load_or_create(cls, path: Path) -> SetSigner:
        """Read the key (PEM, Ed25519), creating it on first start (mode 0600)."""
        key = OKPKey.import_key(load_or_create_key(path, _new_key_pem))
        if key.curve_name != "Ed25519":
            raise ValueError(f"{path} is not an Ed25519 key")
        return cls(key)

    @property
    def kid(self) -> str:
        return str(self.key.thumbprint())

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (RFC 7517) receivers verify SETs with."""
        public = dict(self.key.as_dict(private=False))
        public.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [public]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        header = {"alg": ALGORITHM, "typ": SET_TYPE, "kid": self.kid}
        with warnings.catch_warnings():
            # joserfc warns that RFC 9864 deprecates "EdDSA"; receivers know no other name yet.
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(header, dict(claims), self.key, algorithms=[ALGORITHM])
