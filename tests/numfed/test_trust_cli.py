"""``numfed trust show|publish|rotate-root`` and ``numfed verify``, run as an operator runs them:
each a process of its own on a real trust directory and PKI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim, verify_tenure_claim
from numfed.envelope import Envelope, SigningKey
from numfed.federation import FederationLayout, create_federation, write_trust
from numfed.proof import encode_proof
from numfed.trust import Root, TrustedState, sign_root
from numfed.trustfiles import load_trusted_state, read_bundle, read_roots, write_envelope

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def layout(tmp_path: Path) -> FederationLayout:
    return create_federation(tmp_path / "fed", carriers=("cmcc", "cucc"), platforms=("weibo",))


def numfed(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "numfed", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def pin(layout: FederationLayout) -> Envelope:
    return Envelope.from_proto(read_roots(layout.trust_dir)[0])


def test_show_prints_each_file_and_whether_it_verifies(layout: FederationLayout) -> None:
    shown = numfed("trust", "show", layout.trust_dir)
    assert shown.returncode == 0, shown.stderr
    cmcc = pki.load_carrier_signer(layout.pki_dir, "cmcc").key_id[:16]
    for text in ["verifies", "root v1, bundle v1", "root-1.pb", "2 of 3", cmcc, "+86138"]:
        assert text in shown.stdout, text
    write_envelope(layout.trust_dir / "root-2.pb", expired_root(layout, 2))
    broken = numfed("trust", "show", layout.trust_dir)
    assert broken.returncode == 1
    assert "does not verify" in broken.stdout and "ROOT_EXPIRED" in broken.stdout


def expired_root(layout: FederationLayout, version: int) -> Envelope:
    first = TrustedState(pin(layout), now=datetime.now(UTC)).root
    old = Root(version, datetime.now(UTC) - timedelta(days=1), first.keys, first.threshold)
    return sign_root(old, pki.load_root_signers(layout.pki_dir)[:2])


def test_publish_revokes_sets_ranges_and_adds_a_key(
    layout: FederationLayout, tmp_path: Path
) -> None:
    added = SigningKey.generate()
    pem = tmp_path / "ctcc.pub.pem"
    pem.write_bytes(
        added._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cucc = pki.load_carrier_signer(layout.pki_dir, "cucc").key_id
    done = numfed(
        "trust", "publish", layout.trust_dir, "--pki", layout.pki_dir,
        "--revoke", cucc[:12], "--ranges", "cucc=+86130,+86131",
        "--add-carrier-key", "ctcc", "--key", pem, "--expires", "10d",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bundle v2 written" in done.stdout
    now = datetime.now(UTC)
    bundle = load_trusted_state(layout.trust_dir, now=now).bundle
    assert bundle is not None and bundle.version == 2
    assert bundle.revoked_key_ids == {cucc}
    assert sorted(p for p, c in bundle.number_ranges.items() if c == "cucc") == ["+86130", "+86131"]
    assert bundle.number_ranges["+86138"] == "cmcc"
    new = bundle.carrier_keys[added.key_id]
    assert new.carrier_id == "ctcc" and new.valid_at(now) and new.number_prefixes == ("+86",)
    assert timedelta(days=9) < bundle.expires_at - now <= timedelta(days=10)


def test_publish_rotate_gives_a_carrier_a_new_key_with_an_overlapping_window(
    layout: FederationLayout,
) -> None:
    old = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    done = numfed(
        "trust", "publish", layout.trust_dir, "--pki", layout.pki_dir, "--rotate", "cmcc",
        "--overlap", "2d",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    new = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    assert new.key_id != old.key_id
    kept = layout.pki_dir / "carrier" / "cmcc" / f"signing-{old.key_id[:16]}.key.pem"
    assert SigningKey.from_pem(kept.read_bytes()).key_id == old.key_id
    assert (layout.pki_dir / "carrier/cmcc/signing.key.pem").stat().st_mode & 0o077 == 0
    now = datetime.now(UTC)
    state = load_trusted_state(layout.trust_dir, now=now)
    assert state.bundle is not None
    ends = state.bundle.carrier_keys[old.key_id].not_after
    assert now < ends <= now + timedelta(days=2)  # the old key overlaps for two days, no more
    for key in (old, new):  # both sign claims that verify meanwhile
        claim = TenureClaim.new(
            number="+8613812345678",
            carrier_id="cmcc",
            tenure_start=datetime(2022, 1, 1, tzinfo=UTC),
            purpose=Purpose.QUERY_PRIOR,
            now=now,
        )
        verified = verify_tenure_claim(
            sign_claim(claim, key), state, now=now, purposes=[Purpose.QUERY_PRIOR]
        )
        assert verified.key_id == key.key_id


def test_rotate_root_signs_with_the_old_and_the_new_keys(layout: FederationLayout) -> None:
    v1 = Envelope.from_proto(read_bundle(layout.trust_dir))
    done = numfed(
        "trust", "rotate-root", layout.trust_dir, "--pki", layout.pki_dir, "--new-keys", "3",
        "--threshold", "2", "--expires", "90d",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (layout.pki_dir / "root").iterdir())[3:] == [
        "root-4.key.pem",
        "root-5.key.pem",
        "root-6.key.pem",
    ]
    now = datetime.now(UTC)
    assert load_trusted_state(layout.trust_dir, now=now).versions == (2, 2)
    # A member holding root 1 takes the new bundle before it sees root 2, and keeps it after.
    member = TrustedState(pin(layout), now=now)
    member.update_bundle(v1, now=now)
    bundle = Envelope.from_proto(read_bundle(layout.trust_dir))
    member.update([], bundle, now=now)
    roots = [Envelope.from_proto(r) for r in read_roots(layout.trust_dir)]
    assert member.update(roots, bundle, now=now).root_to == 2
    assert member.versions == (2, 2)
    # The old root keys sign nothing any more; the new ones publish.
    again = numfed("trust", "publish", layout.trust_dir, "--pki", layout.pki_dir)
    assert again.returncode == 0, again.stderr
    assert load_trusted_state(layout.trust_dir, now=now).versions == (2, 3)


def test_publish_and_rotate_root_keep_what_they_are_not_told_to_change(
    layout: FederationLayout, tmp_path: Path
) -> None:
    """Each command writes the next bundle from the current one: the gateway's audit keys and
    the federation's clock skew and maximum claim lifetime stay, whatever the options (publish
    dropped the audit keys, so no member could verify a checkpoint after a routine renewal, and
    reset the skew and lifetime to their defaults)."""
    now = datetime.now(UTC)
    write_trust(
        layout.pki_dir,
        layout.trust_dir,
        now=now,
        carriers=("cmcc", "cucc"),
        max_clock_skew=timedelta(seconds=20),
        max_claim_lifetime=timedelta(minutes=7),
    )
    first = load_trusted_state(layout.trust_dir, now=now).bundle
    assert first is not None and first.audit_keys
    pem = tmp_path / "ctcc.pub.pem"
    pem.write_bytes(
        SigningKey.generate()
        ._key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cucc = pki.load_carrier_signer(layout.pki_dir, "cucc").key_id
    commands = [
        ("publish",),
        ("publish", "--rotate", "cmcc"),
        ("publish", "--revoke", cucc),
        ("publish", "--ranges", "cucc=+86130"),
        ("publish", "--add-carrier-key", "ctcc", "--key", pem),
        ("rotate-root",),
        ("rotate-root", "--new-keys", "0"),
    ]
    for command in commands:
        before = load_trusted_state(layout.trust_dir, now=datetime.now(UTC)).bundle
        done = numfed("trust", *command, layout.trust_dir, "--pki", layout.pki_dir)
        assert done.returncode == 0, (command, done.stderr)
        after = load_trusted_state(layout.trust_dir, now=datetime.now(UTC)).bundle
        assert before is not None and after is not None
        assert after.version == before.version + 1
        # Everything but what a command may change is as it was in the first bundle.
        told = dataclasses.replace(
            first,
            version=after.version,
            issued_at=after.issued_at,
            expires_at=after.expires_at,
            carrier_keys=after.carrier_keys,
            revoked_key_ids=after.revoked_key_ids,
            number_ranges=after.number_ranges,
        )
        assert after == told, command


def test_refused_operations_change_nothing_and_rotate_root_recovers_an_expired_root(
    layout: FederationLayout, tmp_path: Path
) -> None:
    other = create_federation(tmp_path / "other", carriers=("cmcc",), platforms=("weibo",))
    before = snapshot(layout.trust_dir, layout.pki_dir)
    foreign = numfed("trust", "publish", layout.trust_dir, "--pki", other.pki_dir)
    assert foreign.returncode == 2 and "ROOT_KEYS_MISSING" in foreign.stderr
    unknown = numfed(
        "trust", "publish", layout.trust_dir, "--pki", layout.pki_dir, "--revoke", "0123456789ab"
    )
    assert unknown.returncode == 2 and "UNKNOWN_KEY" in unknown.stderr
    assert snapshot(layout.trust_dir, layout.pki_dir) == before

    write_envelope(layout.trust_dir / "root-2.pb", expired_root(layout, 2))
    before = snapshot(layout.trust_dir, layout.pki_dir)
    expired = numfed("trust", "publish", layout.trust_dir, "--pki", layout.pki_dir)
    assert expired.returncode == 2 and "ROOT_EXPIRED" in expired.stderr
    assert snapshot(layout.trust_dir, layout.pki_dir) == before
    fixed = numfed("trust", "rotate-root", layout.trust_dir, "--pki", layout.pki_dir)
    assert fixed.returncode == 0, fixed.stderr
    assert load_trusted_state(layout.trust_dir, now=datetime.now(UTC)).versions == (3, 2)


def test_verify_walks_an_expired_intermediate_root(layout: FederationLayout) -> None:
    """Roots 1 -> 2 (expired) -> 3 (valid): ``numfed verify`` replays the chain from root-1.pb
    and checks the proof under the newest root (it failed with ROOT_EXPIRED)."""
    signers = pki.load_root_signers(layout.pki_dir)[:2]
    first = TrustedState(pin(layout), now=datetime.now(UTC)).root
    r3 = Root(3, datetime.now(UTC) + timedelta(days=30), first.keys, first.threshold)
    write_envelope(layout.trust_dir / "root-2.pb", expired_root(layout, 2))
    write_envelope(layout.trust_dir / "root-3.pb", sign_root(r3, signers))
    claim = TenureClaim.new(
        number="+8613812345678",
        carrier_id="cmcc",
        tenure_start=datetime(2022, 1, 1, tzinfo=UTC),
        purpose=Purpose.HOLDER_PROOF,
        now=datetime.now(UTC),
        lifetime=timedelta(days=1),
    )
    token = encode_proof(sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")))
    checked = numfed("verify", token, "--trust", layout.trust_dir)
    assert checked.returncode == 0, checked.stderr
    assert "valid holder proof" in checked.stdout
