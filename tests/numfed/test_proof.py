"""Holder proofs verified offline: good, tampered, expired, under a revoked key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.cli import main
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, PermissionDenied, Unauthenticated
from numfed.federation import FederationLayout, create_federation, write_trust
from numfed.proof import decode_proof, encode_proof, verify_proof
from numfed.trust import TrustBundle, sign_bundle
from numfed.trustfiles import load_trusted_state, read_bundle, write_envelope
from numfed.v1 import trust_pb2

NUMBER = "+8613812345678"
X = datetime(2022, 7, 1, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> FederationLayout:
    return create_federation(tmp_path_factory.mktemp("proof") / "fed")


def token(
    layout: FederationLayout,
    *,
    now: datetime | None = None,
    lifetime: timedelta = timedelta(days=30),
    carrier_id: str = "cmcc",
) -> str:
    now = now or datetime.now(UTC)
    claim = TenureClaim.new(
        number=NUMBER,
        carrier_id=carrier_id,
        tenure_start=X,
        purpose=Purpose.HOLDER_PROOF,
        now=now,
        lifetime=lifetime,
    )
    return encode_proof(sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")))


def test_good_proof_verifies_offline(layout: FederationLayout) -> None:
    now = datetime.now(UTC)
    proven = verify_proof(token(layout), load_trusted_state(layout.trust_dir, now=now), now=now)
    assert proven.claim.tenure_start == X and NUMBER in proven.statement()
    assert main(["verify", token(layout), "--trust", str(layout.trust_dir)]) == 0


def test_tampered_proof_refused(layout: FederationLayout) -> None:
    env = decode_proof(token(layout))
    other = TenureClaim.new(
        number=NUMBER,
        carrier_id="cmcc",
        tenure_start=X - timedelta(days=3000),
        purpose=Purpose.HOLDER_PROOF,
        now=datetime.now(UTC),
        lifetime=timedelta(days=30),
    )
    forged = encode_proof(
        Envelope(other.to_proto().SerializeToString(), env.payload_type, env.signatures)
    )
    assert main(["verify", forged, "--trust", str(layout.trust_dir)]) == 1  # does not verify
    now = datetime.now(UTC)
    with pytest.raises(Unauthenticated) as e:
        verify_proof(forged, load_trusted_state(layout.trust_dir, now=now), now=now)
    assert e.value.reason == "BAD_SIGNATURE"
    with pytest.raises(InvalidArgument):
        decode_proof("nfp1.@@@")


def test_a_proof_naming_another_carrier_refused(layout: FederationLayout) -> None:
    """PLAT-CLAIM-KEY-CARRIER offline: cmcc's key covers all of +86, but a proof it signs that
    names cucc proves nothing (in the CLI either)."""
    other = token(layout, carrier_id="cucc")
    now = datetime.now(UTC)
    with pytest.raises(PermissionDenied) as e:
        verify_proof(other, load_trusted_state(layout.trust_dir, now=now), now=now)
    assert e.value.reason == "CARRIER_KEY_MISMATCH"
    assert e.value.metadata == {"rule": "PLAT-CLAIM-KEY-CARRIER"}
    assert main(["verify", other, "--trust", str(layout.trust_dir)]) == 1


def test_expired_proof_refused(layout: FederationLayout) -> None:
    old = token(layout, now=datetime.now(UTC) - timedelta(hours=3), lifetime=timedelta(hours=1))
    now = datetime.now(UTC)
    with pytest.raises(Unauthenticated) as e:
        verify_proof(old, load_trusted_state(layout.trust_dir, now=now), now=now)
    assert e.value.reason == "CLAIM_EXPIRED"


def test_proof_under_a_revoked_key_refused(layout: FederationLayout, tmp_path: Path) -> None:
    good = token(layout)
    now = datetime.now(UTC)
    # The operator publishes bundle v2 revoking cmcc's key.
    trust_dir = tmp_path / "trust"
    write_trust(layout.pki_dir, trust_dir, now=now)
    v1 = TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(read_bundle(trust_dir).payload))
    cmcc = pki.load_carrier_signer(layout.pki_dir, "cmcc").key_id
    v2 = TrustBundle(2, now, now + timedelta(days=30), v1.carrier_keys, frozenset({cmcc}))
    write_envelope(
        trust_dir / "bundle.pb", sign_bundle(v2, pki.load_root_signers(layout.pki_dir)[:2])
    )
    state = load_trusted_state(trust_dir, now=now)
    with pytest.raises(Unauthenticated) as e:
        verify_proof(good, state, now=now)
    assert e.value.reason == "KEY_REVOKED"
    assert main(["verify", good, "--trust", str(trust_dir)]) == 1


def test_a_query_claim_is_not_a_proof(layout: FederationLayout) -> None:
    claim = TenureClaim.new(
        number=NUMBER,
        carrier_id="cmcc",
        tenure_start=X,
        purpose=Purpose.QUERY_PRIOR,
        now=datetime.now(UTC),
    )
    t = encode_proof(sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")))
    now = datetime.now(UTC)
    with pytest.raises(InvalidArgument) as e:
        verify_proof(t, load_trusted_state(layout.trust_dir, now=now), now=now)
    assert e.value.reason == "WRONG_PURPOSE"
