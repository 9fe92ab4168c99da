"""Audit checkpoints as members see them: verified under the bundle's audit keys, merged the
way Go's sumdb client and the transparency-dev witness merge (a rollback keeps the larger one, a
fork is evidence), stored atomically in the member's state dir."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from numfed import pki
from numfed.checkpoint import (
    AuditEquivocation,
    Checkpoint,
    CheckpointKeeper,
    HeadScheme,
    audit_origin,
    read_held,
    sign_checkpoint,
    verify_checkpoint,
)
from numfed.envelope import Envelope, SigningKey
from numfed.errors import FailedPrecondition, NumfedError
from numfed.federation import write_trust
from numfed.trust import AuditKey, TrustBundle, TrustedState
from numfed.trustfiles import load_trusted_state, read_roots

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
ORIGIN = "numfed/0123456789abcdef/audit"
AUDIT_KEY = SigningKey.generate()


def bundle_with(*keys: AuditKey, revoked: frozenset[str] = frozenset()) -> TrustBundle:
    return TrustBundle(
        version=1,
        issued_at=NOW - timedelta(days=1),
        expires_at=NOW + timedelta(days=30),
        carrier_keys={},
        revoked_key_ids=revoked,
        audit_keys={k.key.key_id: k for k in keys},
    )


def audit_key(key: SigningKey = AUDIT_KEY, *, days: int = 365) -> AuditKey:
    return AuditKey(key.public, NOW - timedelta(days=1), NOW + timedelta(days=days))


BUNDLE = bundle_with(audit_key())


def head(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def checkpoint(
    size: int,
    h: bytes | None = None,
    *,
    origin: str = ORIGIN,
    at: datetime = NOW,
    key: SigningKey = AUDIT_KEY,
) -> Envelope:
    cp = Checkpoint(origin, size, h or head(f"entry {size}"), HeadScheme.CHAIN_V1, at)
    return sign_checkpoint(cp, key)


def keeper(tmp_path: Path) -> CheckpointKeeper:
    return CheckpointKeeper(
        tmp_path / "audit-checkpoints.json", origin=ORIGIN, holder="spiffe://numfed/platform/weibo"
    )


def test_a_checkpoint_verifies_under_the_bundles_audit_key() -> None:
    got = verify_checkpoint(checkpoint(7), BUNDLE, origin=ORIGIN)
    assert (got.size, got.head, got.head_scheme) == (7, head("entry 7"), HeadScheme.CHAIN_V1)


@pytest.mark.parametrize(
    ("envelope", "bundle", "reason"),
    [
        (checkpoint(7, origin="numfed/fedcba9876543210/audit"), BUNDLE, "WRONG_ORIGIN"),
        (checkpoint(7, key=SigningKey.generate()), BUNDLE, "UNKNOWN_KEY"),
        (checkpoint(7, at=NOW + timedelta(days=400)), BUNDLE, "AUDIT_KEY_NOT_VALID"),
        (checkpoint(7, at=NOW - timedelta(days=2)), BUNDLE, "AUDIT_KEY_NOT_VALID"),
        (
            checkpoint(7),
            bundle_with(audit_key(), revoked=frozenset({AUDIT_KEY.key_id})),
            "KEY_REVOKED",
        ),
    ],
    ids=["another-origin", "unknown-key", "after-not-after", "before-not-before", "revoked"],
)
def test_a_checkpoint_of_another_log_or_by_a_key_not_trusted_is_refused(
    tmp_path: Path, envelope: Envelope, bundle: TrustBundle, reason: str
) -> None:
    with pytest.raises(NumfedError) as e:
        verify_checkpoint(envelope, bundle, origin=ORIGIN)
    assert e.value.reason == reason
    k = keeper(tmp_path)
    with pytest.raises(NumfedError):
        k.offer(envelope, bundle, now=NOW)
    assert k.latest is None and not (tmp_path / "audit-checkpoints.json").exists()


def test_a_changed_byte_or_another_payload_type_is_refused() -> None:
    good = checkpoint(7)
    flipped = dataclasses.replace(good, payload=good.payload[:-1] + bytes([good.payload[-1] ^ 1]))
    with pytest.raises(NumfedError) as e:
        verify_checkpoint(flipped, BUNDLE, origin=ORIGIN)
    assert e.value.reason == "BAD_SIGNATURE"
    other = dataclasses.replace(good, payload_type="application/vnd.numfed.trust-bundle+proto")
    with pytest.raises(NumfedError) as e:
        verify_checkpoint(other, BUNDLE, origin=ORIGIN)
    assert e.value.reason == "WRONG_PAYLOAD_TYPE"


def test_the_reserved_merkle_scheme_is_refused_until_it_is_signed() -> None:
    cp = Checkpoint(ORIGIN, 7, head("x"), HeadScheme.RFC6962_V1, NOW)
    with pytest.raises(NumfedError) as e:
        verify_checkpoint(sign_checkpoint(cp, AUDIT_KEY), BUNDLE, origin=ORIGIN)
    assert e.value.reason == "UNSUPPORTED_HEAD_SCHEME"


def test_a_member_offered_a_rollback_keeps_the_larger_checkpoint(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    k.offer(checkpoint(9_200), BUNDLE, now=NOW)
    kept = k.offer(checkpoint(8_000), BUNDLE, now=NOW)  # a gateway cut back to 8,000 entries
    assert kept.size == 9_200 and k.latest is not None and k.latest.size == 9_200
    again = keeper(tmp_path)  # what is on disk, read afresh
    assert again.latest is not None and again.latest.size == 9_200
    assert again.offer(checkpoint(9_500), BUNDLE, now=NOW).size == 9_500  # growth replaces


def test_an_equivocating_pair_is_kept_as_evidence_and_raised(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    held = checkpoint(500, head("the log as it was"))
    forked = checkpoint(500, head("the log rewritten"))
    k.offer(held, BUNDLE, now=NOW)
    with pytest.raises(AuditEquivocation) as e:
        k.offer(forked, BUNDLE, now=NOW)
    assert e.value.reason == "AUDIT_EQUIVOCATION" and e.value.code == "FAILED_PRECONDITION"
    assert (e.value.held, e.value.offered) == (held, forked)
    assert k.latest is not None and k.latest.head == head("the log as it was")
    on_disk = read_held(tmp_path / "audit-checkpoints.json")
    assert held in on_disk.envelopes and forked in on_disk.envelopes
    assert keeper(tmp_path).evidence == [(held, forked)]
    # The same checkpoint again is no fork.
    assert k.offer(held, BUNDLE, now=NOW).size == 500


def test_an_older_days_checkpoint_catches_a_fork_below_the_latest(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    k.offer(checkpoint(100, at=NOW - timedelta(hours=20)), BUNDLE, now=NOW)  # the day before
    k.offer(checkpoint(200), BUNDLE, now=NOW)
    with pytest.raises(AuditEquivocation):
        k.offer(checkpoint(100, head("another entry 100")), BUNDLE, now=NOW)


def test_the_file_is_replaced_atomically_and_checked_when_read(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    for size in (1, 2, 3):
        k.offer(checkpoint(size), BUNDLE, now=NOW)
    path = tmp_path / "audit-checkpoints.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.lock"]
    data = json.loads(path.read_text())
    assert data["holder"] == "spiffe://numfed/platform/weibo" and data["origin"] == ORIGIN
    path.write_text(json.dumps({**data, "origin": "numfed/other/audit"}))
    with pytest.raises(FailedPrecondition) as e:
        keeper(tmp_path)
    assert e.value.reason == "CHECKPOINT_FILE_OTHER_ORIGIN"
    path.write_text(json.dumps({**data, "latest": "not base64!"}))
    with pytest.raises(FailedPrecondition) as e:
        keeper(tmp_path)
    assert e.value.reason == "CHECKPOINT_FILE_MALFORMED"


def test_pki_init_writes_an_audit_key_and_the_bundle_lists_it(tmp_path: Path) -> None:
    layout = pki.init_pki(tmp_path / "pki", carriers=("cmcc",), platforms=("weibo",), now=NOW)
    path = layout.audit_key_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signer = pki.load_audit_signer(layout)
    assert signer.key_id not in {pki.load_carrier_signer(layout, "cmcc").key_id} | {
        k.key_id for k in pki.load_root_signers(layout)
    }
    write_trust(layout.root, tmp_path / "trust", now=NOW, carriers=("cmcc",))
    state = load_trusted_state(tmp_path / "trust", now=NOW)
    assert state.bundle is not None and set(state.bundle.audit_keys) == {signer.key_id}
    origin = audit_origin(Envelope.from_proto(read_roots(tmp_path / "trust")[0]))
    cp = Checkpoint(origin, 1, head("first"), HeadScheme.CHAIN_V1, NOW)
    assert verify_checkpoint(sign_checkpoint(cp, signer), state.bundle, origin=origin).size == 1


def test_two_federations_have_two_origins(tmp_path: Path) -> None:
    origins = set()
    for name in ("a", "b"):
        layout = pki.init_pki(tmp_path / name / "pki", carriers=("cmcc",), platforms=(), now=NOW)
        write_trust(layout.root, tmp_path / name / "trust", now=NOW, carriers=("cmcc",))
        root = Envelope.from_proto(read_roots(tmp_path / name / "trust")[0])
        TrustedState(root, now=NOW)  # a pinned root, as members hold it
        origins.add(audit_origin(root))
    assert len(origins) == 2 and all(o.startswith("numfed/") for o in origins)
