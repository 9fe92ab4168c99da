"""Write the frozen trust vectors of this directory (run once; the files are committed).

``rotation/``: roots 1 to 3, where root 2 expired before the fixed clock (an intermediate root a
verifier must walk through), and bundle v1 signed under root 3. ``revocation/``: root 1, bundle
v1 trusting two carrier keys, bundle v2 revoking one of them, and a claim that key signed. The
expectations are in ``expected.json``; ``tests/numfed/test_trust_vectors.py`` replays them at
the fixed clock, so a change in how roots, bundles or claims are encoded or judged shows up even
though the simulator of today's kit would agree with today's code.

Usage: python -m tests.vectors.trust.generate
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.envelope import Envelope, SigningKey
from numfed.trust import CarrierKey, Root, TrustBundle, sign_bundle, sign_root
from numfed.trustfiles import write_envelope

HERE = Path(__file__).parent
CLOCK = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
"""The fixed clock every expectation is judged at."""


def _root(
    version: int, keys: list[SigningKey], expires: datetime, signers: list[SigningKey]
) -> Envelope:
    return sign_root(Root(version, expires, {k.key_id: k.public for k in keys}, 2), signers)


def _carrier(key: SigningKey) -> CarrierKey:
    return CarrierKey(
        key.public, "cmcc", CLOCK - timedelta(days=60), CLOCK + timedelta(days=365), ("+86",)
    )


def _bundle(
    version: int, keys: list[SigningKey], revoked: frozenset[str] = frozenset()
) -> TrustBundle:
    return TrustBundle(
        version,
        CLOCK - timedelta(days=1),
        CLOCK + timedelta(days=30),
        {k.key_id: _carrier(k) for k in keys},
        revoked,
        {"+86139": "cmcc"},
    )


def main() -> None:
    one, two, three = ([SigningKey.generate() for _ in range(3)] for _ in range(3))
    rotation = HERE / "rotation"
    write_envelope(rotation / "root-1.pb", _root(1, one, CLOCK + timedelta(days=180), one))
    write_envelope(
        rotation / "root-2.pb", _root(2, two, CLOCK - timedelta(days=30), [*one[:2], *two[:2]])
    )
    write_envelope(
        rotation / "root-3.pb", _root(3, three, CLOCK + timedelta(days=365), [*two[:2], *three[:2]])
    )
    carriers = [SigningKey.generate() for _ in range(2)]
    write_envelope(rotation / "bundle.pb", sign_bundle(_bundle(1, carriers), three[:2]))

    revocation = HERE / "revocation"
    write_envelope(revocation / "root-1.pb", _root(1, one, CLOCK + timedelta(days=180), one[:2]))
    write_envelope(revocation / "bundle-1.pb", sign_bundle(_bundle(1, carriers), one[:2]))
    revoked = frozenset({carriers[1].key_id})
    write_envelope(revocation / "bundle-2.pb", sign_bundle(_bundle(2, carriers, revoked), one[:2]))
    claim = TenureClaim.new(
        number="+8613900000001",
        carrier_id="cmcc",
        tenure_start=CLOCK - timedelta(days=100),
        purpose=Purpose.QUERY_PRIOR,
        now=CLOCK - timedelta(minutes=1),
    )
    write_envelope(revocation / "claim.pb", sign_claim(claim, carriers[1]))
    expected = {
        "clock": CLOCK.isoformat(),
        "rotation": {
            "root_version": 3,
            "bundle_version": 1,
            "final_root_expired_at": "2027-06-01T12:00:00+00:00",
        },
        "revocation": {"claim_under_bundle_1": "OK", "claim_under_bundle_2": "KEY_REVOKED"},
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
