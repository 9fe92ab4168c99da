"""A small in-memory federation for trust and claim tests: root keys, carrier keys, a bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from numfed.envelope import Envelope, KeyAlgorithm, SigningKey
from numfed.trust import CarrierKey, Root, TrustBundle, TrustedState, sign_bundle, sign_root

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
PREFIXES = {
    "cmcc": ("+86139", "+86138"),
    "cucc": ("+86186", "+86130"),
    "ctcc": ("+86153", "+86189"),
}


@dataclass
class Federation:
    root_keys: list[SigningKey]
    carrier_keys: dict[str, SigningKey]
    root: Root
    bundle: TrustBundle
    root_envelope: Envelope
    bundle_envelope: Envelope
    extra: dict[str, SigningKey] = field(default_factory=dict)

    def state(self, now: datetime = NOW) -> TrustedState:
        s = TrustedState(self.root_envelope, now=now)
        s.update_bundle(self.bundle_envelope, now=now)
        return s

    def next_bundle(self, *, version: int | None = None, **changes: object) -> TrustBundle:
        fields = {
            "version": self.bundle.version + 1 if version is None else version,
            "issued_at": NOW,
            "expires_at": NOW + timedelta(days=30),
            "carrier_keys": self.bundle.carrier_keys,
            "revoked_key_ids": self.bundle.revoked_key_ids,
            "number_ranges": self.bundle.number_ranges,
        }
        fields.update(changes)
        return TrustBundle(**fields)  # type: ignore[arg-type]


def carrier_entry(
    key: SigningKey,
    carrier: str,
    prefixes: tuple[str, ...],
    *,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=365),
) -> CarrierKey:
    return CarrierKey(key.public, carrier, not_before, not_after, prefixes)


def make_federation(*, ecdsa_carrier: str | None = None) -> Federation:
    """3 root keys (threshold 2), one key per carrier, bundle v1 valid for 30 days."""
    root_keys = [SigningKey.generate() for _ in range(3)]
    root = Root(
        version=1,
        expires_at=NOW + timedelta(days=365),
        keys={k.key_id: k.public for k in root_keys},
        threshold=2,
    )
    carrier_keys = {
        c: SigningKey.generate(
            KeyAlgorithm.ECDSA_P256_SHA256 if c == ecdsa_carrier else KeyAlgorithm.ED25519
        )
        for c in PREFIXES
    }
    entries = {k.key_id: carrier_entry(k, c, PREFIXES[c]) for c, k in carrier_keys.items()}
    ranges = {p: c for c, prefixes in PREFIXES.items() for p in prefixes}
    bundle = TrustBundle(1, NOW, NOW + timedelta(days=30), entries, frozenset(), ranges)
    return Federation(
        root_keys,
        carrier_keys,
        root,
        bundle,
        sign_root(root, root_keys[:2]),
        sign_bundle(bundle, root_keys[:2]),
    )
