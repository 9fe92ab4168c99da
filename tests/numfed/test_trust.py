"""The trust model under attack: rollback, freeze, rotation, threshold games, and TUF's client
workflow (intermediate and final root expiry, skipped bundle versions, fast-forward recovery,
persisted state). Test names follow python-tuf's where a test is borrowed from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from numfed.envelope import Envelope, Signature, SigningKey, sign
from numfed.errors import InvalidArgument, NumfedError, Unauthenticated, Unavailable
from numfed.trust import (
    BUNDLE_PAYLOAD_TYPE,
    MAX_ROOT_ROTATIONS,
    BundleChange,
    Root,
    TrustBundle,
    TrustedState,
    TrustReason,
    format_versions,
    parse_versions,
    sign_bundle,
    sign_root,
)
from numfed.trustfiles import load_trusted_state, write_envelope
from numfed.truststore import TrustStore
from tests.helpers.federation import NOW, Federation, carrier_entry, make_federation


@pytest.fixture
def fed() -> Federation:
    return make_federation()


def reason(exc: pytest.ExceptionInfo[NumfedError]) -> str:
    return exc.value.reason


def test_pinned_root_and_bundle_are_accepted(fed: Federation) -> None:
    s = fed.state()
    assert s.root.version == 1
    assert s.bundle is not None and s.bundle.version == 1
    key = fed.carrier_keys["cmcc"]
    assert s.carrier_key(key.key_id, now=NOW).carrier_id == "cmcc"


def test_next_bundle_is_accepted_and_same_bundle_again_is_a_noop(fed: Federation) -> None:
    s = fed.state()
    assert s.update_bundle(fed.bundle_envelope, now=NOW) is BundleChange.UNCHANGED  # a refresh
    v2 = sign_bundle(fed.next_bundle(), fed.root_keys[1:])
    assert s.update_bundle(v2, now=NOW) is BundleChange.ACCEPTED
    assert s.bundle is not None and s.bundle.version == 2


def test_new_timestamp_version_rollback(fed: Federation) -> None:
    """A bundle older than the one held is refused, and the held one stays."""
    s = fed.state()
    v2 = sign_bundle(fed.next_bundle(), fed.root_keys[:2])
    s.update_bundle(v2, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.bundle_envelope, now=NOW)  # older
    assert reason(e) == "BUNDLE_ROLLBACK"
    assert s.bundle_envelope == v2


def test_timestamp_eq_versions_check(fed: Federation, caplog: pytest.LogCaptureFixture) -> None:
    """The same version with other content keeps the held bundle: an equivocation by the root
    key holders is logged, and does not break the refresh."""
    s = fed.state()
    v2 = sign_bundle(fed.next_bundle(), fed.root_keys[:2])
    s.update_bundle(v2, now=NOW)
    kid = fed.carrier_keys["cmcc"].key_id
    other_v2 = sign_bundle(fed.next_bundle(revoked_key_ids=frozenset({kid})), fed.root_keys[:2])
    with caplog.at_level(logging.WARNING, logger="numfed.trust"):
        assert s.update_bundle(other_v2, now=NOW) is BundleChange.UNCHANGED
    assert s.bundle_envelope == v2
    assert s.carrier_key(kid, now=NOW).carrier_id == "cmcc"  # the other v2's revocation: no
    assert "BUNDLE_EQUIVOCATION" in caplog.text


@pytest.mark.parametrize("held, offered", [(1, 3), (5, 7), (1, 99999)])
def test_skipped_bundle_versions_are_accepted(fed: Federation, held: int, offered: int) -> None:
    """A verifier that missed bundles is not under attack (TUF 5.4.3): any higher version."""
    s = TrustedState(fed.root_envelope, now=NOW)
    s.update_bundle(sign_bundle(fed.next_bundle(version=held), fed.root_keys[:2]), now=NOW)
    kid = fed.carrier_keys["ctcc"].key_id
    newer = fed.next_bundle(version=offered, revoked_key_ids=frozenset({kid}))
    assert s.update_bundle(sign_bundle(newer, fed.root_keys[:2]), now=NOW) is BundleChange.ACCEPTED
    assert s.versions == (1, offered)
    with pytest.raises(Unauthenticated) as e:
        s.carrier_key(kid, now=NOW)
    assert reason(e) == "KEY_REVOKED"


def test_expired_timestamp_version_rollback(fed: Federation) -> None:
    """An expired bundle held still refuses an older one."""
    s = fed.state()
    v2 = fed.next_bundle(expires_at=NOW + timedelta(days=1))
    s.update_bundle(sign_bundle(v2, fed.root_keys[:2]), now=NOW)
    later = NOW + timedelta(days=2)
    old = sign_bundle(
        fed.next_bundle(version=1, expires_at=later + timedelta(days=30)), fed.root_keys[:2]
    )
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(old, now=later)
    assert reason(e) == "BUNDLE_ROLLBACK"


def test_expired_metadata(fed: Federation) -> None:
    """An expired bundle held does not block a newer one."""
    s = fed.state()
    later = fed.bundle.expires_at + timedelta(days=1)
    v2 = fed.next_bundle(issued_at=later, expires_at=later + timedelta(days=30))
    assert s.update_bundle(sign_bundle(v2, fed.root_keys[:2]), now=later) is BundleChange.ACCEPTED
    assert s.bundle == v2


def test_a_newer_expired_bundle_is_refused_and_changes_nothing(fed: Federation) -> None:
    s = fed.state()
    past = NOW - timedelta(days=2)
    v3 = fed.next_bundle(version=3, issued_at=past, expires_at=past + timedelta(days=1))
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(sign_bundle(v3, fed.root_keys[:2]), now=NOW)
    assert reason(e) == "BUNDLE_EXPIRED"
    assert s.bundle_envelope == fed.bundle_envelope
    v2 = sign_bundle(fed.next_bundle(version=2), fed.root_keys[:2])
    assert s.update_bundle(v2, now=NOW) is BundleChange.ACCEPTED


def test_new_timestamp_fast_forward_recovery(fed: Federation) -> None:
    """Bundle v99999 held; the root keys rotate, so it is dropped; v1 under the new keys is
    accepted (TUF 5.3.11)."""
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(version=99999), fed.root_keys[:2]), now=NOW)
    new_keys = [SigningKey.generate() for _ in range(3)]
    r2 = sign_root(rotated(fed, new_keys), fed.root_keys[:2] + new_keys[:2])
    result = s.update([r2], sign_bundle(fed.next_bundle(version=1), new_keys[:2]), now=NOW)
    assert (result.root_to, result.bundle_from, result.bundle_to) == (2, 99999, 1)


def test_expired_bundle_refused_freeze(fed: Federation) -> None:
    s = TrustedState(fed.root_envelope, now=NOW)
    later = NOW + timedelta(days=31)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.bundle_envelope, now=later)
    assert reason(e) == "BUNDLE_EXPIRED"
    held = fed.state()
    with pytest.raises(Unauthenticated) as e:
        held.carrier_key(fed.carrier_keys["cmcc"].key_id, now=later)  # a frozen verifier stops
    assert reason(e) == "BUNDLE_EXPIRED"


def test_bundle_below_root_threshold_refused(fed: Federation) -> None:
    s = TrustedState(fed.root_envelope, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(sign_bundle(fed.bundle, fed.root_keys[:1]), now=NOW)
    assert reason(e) == "BUNDLE_THRESHOLD_NOT_MET"


def test_same_key_counted_twice_does_not_meet_threshold(fed: Federation) -> None:
    one = sign_bundle(fed.bundle, fed.root_keys[:1])
    doubled = Envelope(one.payload, one.payload_type, one.signatures * 2)
    s = TrustedState(fed.root_envelope, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(doubled, now=NOW)
    assert reason(e) == "BUNDLE_THRESHOLD_NOT_MET"


def test_same_key_under_a_second_key_id_does_not_count(fed: Federation) -> None:
    one = sign_bundle(fed.bundle, fed.root_keys[:1])
    alias = Signature("f" * 64, one.signatures[0].sig)
    s = TrustedState(fed.root_envelope, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(Envelope(one.payload, one.payload_type, (*one.signatures, alias)), now=NOW)
    assert reason(e) == "BUNDLE_THRESHOLD_NOT_MET"


def test_root_listing_one_key_twice_is_malformed(fed: Federation) -> None:
    pb = fed.root.to_proto()
    pb.keys.append(pb.keys[0])
    with pytest.raises(InvalidArgument) as e:
        Root.from_proto(pb)
    assert reason(e) == "MALFORMED_ROOT"


def rotated(fed: Federation, new_keys: list[SigningKey], version: int = 2) -> Root:
    return Root(
        version=version,
        expires_at=NOW + timedelta(days=365),
        keys={k.key_id: k.public for k in new_keys},
        threshold=2,
    )


def test_new_root_nonconsecutive_version(fed: Federation) -> None:
    s = fed.state()
    env = sign_root(rotated(fed, fed.root_keys, version=3), fed.root_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        s.update_root(env)
    assert reason(e) == "ROOT_VERSION_NOT_NEXT"
    assert s.root.version == 1


def test_new_root_same_version(fed: Federation) -> None:
    """Another root under the held version is not a successor; in a chain it is history (only
    its version is read) and changes nothing."""
    s = fed.state()
    other_v1 = sign_root(Root(1, NOW + timedelta(days=9), fed.root.keys, 2), fed.root_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        s.update_root(other_v1)
    assert reason(e) == "ROOT_VERSION_NOT_NEXT"
    assert other_v1.payload != fed.root_envelope.payload
    result = s.update([other_v1], fed.bundle_envelope, now=NOW)
    assert not result.changed and s.root_envelope == fed.root_envelope


def chain(fed: Federation, expiries: list[timedelta]) -> list[Envelope]:
    """Roots v2.. with the same keys, each expiring ``NOW + expiries[i]``."""
    return [
        sign_root(Root(v, NOW + ttl, fed.root.keys, 2), fed.root_keys[:2])
        for v, ttl in enumerate(expiries, 2)
    ]


def test_intermediate_root_expired(fed: Federation) -> None:
    """Roots 1 -> 2 (expired) -> 3 (valid): the chain is walked; only the final root counts."""
    r2, r3 = chain(fed, [-timedelta(days=1), timedelta(days=365)])
    s = TrustedState(fed.root_envelope, now=NOW)
    result = s.update([fed.root_envelope, r2, r3], fed.bundle_envelope, now=NOW)
    assert (result.root_from, result.root_to, result.bundle_to) == (1, 3, 1)
    assert s.carrier_key(fed.carrier_keys["cmcc"].key_id, now=NOW).carrier_id == "cmcc"


def test_intermediate_root_expired_in_a_trust_directory(fed: Federation, tmp_path: Path) -> None:
    """``numfed verify``, the carrier kit and gateway start replay the directory the same way."""
    r2, r3 = chain(fed, [-timedelta(days=1), timedelta(days=365)])
    for name, env in [("root-1.pb", fed.root_envelope), ("root-2.pb", r2), ("root-3.pb", r3)]:
        write_envelope(tmp_path / name, env)
    write_envelope(tmp_path / "bundle.pb", fed.bundle_envelope)
    assert load_trusted_state(tmp_path, now=NOW).versions == (3, 1)


def test_final_root_expired(fed: Federation) -> None:
    """The root advances to the newest, which has expired: the bundle is refused, nothing
    verifies (TUF 5.3.10); the root progress is kept."""
    [r2] = chain(fed, [-timedelta(days=1)])
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update([r2], fed.bundle_envelope, now=NOW)
    assert reason(e) == "ROOT_EXPIRED"
    assert s.root.version == 2
    with pytest.raises(Unauthenticated) as e:
        s.carrier_key(fed.carrier_keys["cmcc"].key_id, now=NOW)  # checked at use too
    assert reason(e) == "ROOT_EXPIRED"


def test_trusted_root_expired(fed: Federation) -> None:
    """An expired pin still rotates to a valid successor (TUF 5.2: its expiry does not matter)."""
    later = fed.root.expires_at + timedelta(days=1)
    r2 = sign_root(Root(2, later + timedelta(days=365), fed.root.keys, 2), fed.root_keys[:2])
    bundle = fed.next_bundle(issued_at=later, expires_at=later + timedelta(days=30))
    s = TrustedState(fed.root_envelope, now=later)
    with pytest.raises(Unauthenticated) as e:
        s.update([], sign_bundle(bundle, fed.root_keys[:2]), now=later)
    assert reason(e) == "ROOT_EXPIRED"
    assert s.update([r2], sign_bundle(bundle, fed.root_keys[:2]), now=later).root_to == 2


@pytest.mark.parametrize("bad_at", [2, 3])
def test_intermediate_and_final_root_incorrectly_signed(fed: Federation, bad_at: int) -> None:
    """python-tuf's test_intermediate_root_incorrectly_signed (bad_at 2 of 3) and
    test_final_root_incorrectly_signed (bad_at 3): the update stops at the last good root,
    and each root accepted before it was handed on to be persisted."""
    roots = chain(fed, [timedelta(days=365)] * 2)
    bad = Root(bad_at, NOW + timedelta(days=365), fed.root.keys, 2)
    roots[bad_at - 2] = sign_root(bad, fed.root_keys[:1])
    persisted: list[int] = []
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update(
            roots,
            fed.bundle_envelope,
            now=NOW,
            on_root=lambda r: persisted.append(len(persisted) + 2),
        )
    assert reason(e) == "ROOT_THRESHOLD_NOT_MET"
    assert s.root.version == bad_at - 1
    assert persisted == list(range(2, bad_at))


def test_max_root_rotations(fed: Federation) -> None:
    """At most 256 new roots per update; the rest at the next one."""
    roots = chain(fed, [timedelta(days=365)] * (MAX_ROOT_ROTATIONS + 4))
    bundle = fed.bundle_envelope
    s = fed.state()
    assert s.update(roots, bundle, now=NOW).root_to == 1 + MAX_ROOT_ROTATIONS
    assert s.update(roots, bundle, now=NOW).root_to == MAX_ROOT_ROTATIONS + 5


@dataclass(frozen=True)
class V:
    """One root version of a rotation table: its keys and threshold, and who signs it."""

    keys: list[int]
    threshold: int
    sigs: list[int]
    ok: bool = True


ROTATIONS: dict[str, list[V]] = {
    "1-of-1 key rotation": [V([1], 1, [1]), V([2], 1, [2, 1]), V([2], 1, [2])],
    "1-of-1 key rotation, unused signatures": [V([1], 1, [3, 1, 4]), V([2], 1, [3, 2, 1, 4])],
    "1-of-1 key rotation fail: not signed with old key": [
        V([1], 1, [1]),
        V([2], 1, [2, 3, 4], ok=False),
    ],
    "1-of-1 key rotation fail: not signed with new key": [
        V([1], 1, [1]),
        V([2], 1, [1, 3, 4], ok=False),
    ],
    "3-of-5, sign with different keycombos": [
        V([0, 1, 2, 3, 4], 3, [0, 2, 4]),
        V([0, 1, 2, 3, 4], 3, [0, 4, 1]),
        V([0, 1, 2, 3, 4], 3, [0, 1, 3]),
        V([0, 1, 2, 3, 4], 3, [0, 1, 3]),
    ],
    "3-of-5, one key rotated": [V([0, 1, 2, 3, 4], 3, [0, 2, 4]), V([0, 1, 3, 4, 5], 3, [0, 4, 1])],
    "3-of-5, one key rotate fails: not signed with 3 new keys": [
        V([0, 1, 2, 3, 4], 3, [0, 2, 4]),
        V([0, 1, 3, 4, 5], 3, [0, 2, 4], ok=False),
    ],
    "3-of-5, one key rotate fails: not signed with 3 old keys": [
        V([0, 1, 2, 3, 4], 3, [0, 2, 4]),
        V([0, 1, 3, 4, 5], 3, [0, 4, 5], ok=False),
    ],
    "3-of-5, one key rotated, with intermediate step": [
        V([0, 1, 2, 3, 4], 3, [0, 2, 4]),
        V([0, 1, 3, 4, 5], 3, [0, 2, 4, 5]),
        V([0, 1, 3, 4, 5], 3, [0, 4, 5]),
    ],
    "3-of-5, all keys rotated, with intermediate step": [
        V([0, 1, 2, 3, 4], 3, [0, 2, 4]),
        V([5, 6, 7, 8, 9], 3, [0, 2, 4, 5, 6, 7]),
        V([5, 6, 7, 8, 9], 3, [5, 6, 7]),
    ],
    "1-of-3 threshold increase to 2-of-3": [V([1, 2, 3], 1, [1]), V([1, 2, 3], 2, [1, 2])],
    "1-of-3 threshold bump to 2-of-3 fails: new threshold not reached": [
        V([1, 2, 3], 1, [1]),
        V([1, 2, 3], 2, [2], ok=False),
    ],
    "2-of-3 threshold decrease to 1-of-3": [
        V([1, 2, 3], 2, [1, 2]),
        V([1, 2, 3], 1, [1, 2]),
        V([1, 2, 3], 1, [1]),
    ],
    "2-of-3 threshold decr. to 1-of-3 fails: old threshold not reached": [
        V([1, 2, 3], 2, [1, 2]),
        V([1, 2, 3], 1, [1], ok=False),
    ],
    "1-of-2 threshold increase to 2-of-2": [V([1], 1, [1]), V([1, 2], 2, [1, 2])],
}


@pytest.mark.parametrize("table", ROTATIONS.values(), ids=list(ROTATIONS))
def test_root_rotation(fed: Federation, table: list[V]) -> None:
    """python-tuf's key rotation table: each version must meet its predecessor's threshold and
    its own; a version that does not stops the chain at the one before it."""
    keys = [SigningKey.generate() for _ in range(10)]
    envelopes = []
    for version, v in enumerate(table, 1):
        root = Root(
            version,
            NOW + timedelta(days=365),
            {keys[i].key_id: keys[i].public for i in v.keys},
            v.threshold,
        )
        envelopes.append(sign_root(root, [keys[i] for i in v.sigs]))
    last_good = next((i for i, v in enumerate(table) if not v.ok), len(table))
    final = table[last_good - 1]
    bundle = sign_bundle(fed.bundle, [keys[i] for i in final.keys[: final.threshold]])
    s = TrustedState(envelopes[0], now=NOW)
    if last_good == len(table):
        assert s.update(envelopes, bundle, now=NOW).root_to == len(table)
        assert s.bundle is not None
    else:
        with pytest.raises(Unauthenticated) as e:
            s.update(envelopes, bundle, now=NOW)
        assert reason(e) == "ROOT_THRESHOLD_NOT_MET"
        assert s.root.version == last_good


def test_unknown_key_id_refused(fed: Federation) -> None:
    with pytest.raises(Unauthenticated) as e:
        fed.state().carrier_key(SigningKey.generate().key_id, now=NOW)
    assert reason(e) == "UNKNOWN_KEY"


def test_revoked_key_refused(fed: Federation) -> None:
    s = fed.state()
    kid = fed.carrier_keys["cmcc"].key_id
    s.update_bundle(
        sign_bundle(fed.next_bundle(revoked_key_ids=frozenset({kid})), fed.root_keys[:2]), now=NOW
    )
    with pytest.raises(Unauthenticated) as e:
        s.carrier_key(kid, now=NOW)
    assert reason(e) == "KEY_REVOKED"


def test_no_bundle_yet(fed: Federation) -> None:
    with pytest.raises(Unauthenticated) as e:
        TrustedState(fed.root_envelope, now=NOW).carrier_key("x", now=NOW)
    assert reason(e) == "NO_TRUST_BUNDLE"


def test_pinned_root_must_meet_its_own_threshold(fed: Federation) -> None:
    with pytest.raises(Unauthenticated) as e:
        TrustedState(sign_root(fed.root, fed.root_keys[:1]), now=NOW)
    assert reason(e) == "ROOT_THRESHOLD_NOT_MET"


def test_carrier_key_window_and_prefix_rules() -> None:
    k = SigningKey.generate()
    entry = carrier_entry(k, "cmcc", ("+86139",))
    assert entry.covers("+8613912345678") and not entry.covers("+8618612345678")
    assert entry.valid_at(NOW) and not entry.valid_at(NOW + timedelta(days=400))
    for bad in [("86139",), ("+86 139",), ()]:
        with pytest.raises(InvalidArgument) as e:
            carrier_entry(k, "cmcc", bad)
        assert reason(e) == "MALFORMED_BUNDLE"
    with pytest.raises(InvalidArgument) as e:
        carrier_entry(k, "cmcc", ("+86139",), not_before=NOW, not_after=NOW)
    assert reason(e) == "MALFORMED_BUNDLE"
    with pytest.raises(InvalidArgument) as e:
        carrier_entry(k, "cmcc", ("+86139",), not_before=NOW.replace(tzinfo=None))
    assert reason(e) == "NAIVE_TIMESTAMP"


def test_bundle_envelope_presented_as_root_refused(fed: Federation) -> None:
    # Signed by the same root keys, but it is a bundle: the payload type tells them apart.
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update_root(fed.bundle_envelope)
    assert reason(e) == "WRONG_PAYLOAD_TYPE"
    with pytest.raises(Unauthenticated) as e:
        TrustedState(fed.bundle_envelope, now=NOW)
    assert reason(e) == "WRONG_PAYLOAD_TYPE"
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.root_envelope, now=NOW)
    assert reason(e) == "WRONG_PAYLOAD_TYPE"


def test_unsigned_garbage_is_not_parsed_signed_garbage_is_malformed(fed: Federation) -> None:
    s = TrustedState(fed.root_envelope, now=NOW)
    garbage = sign(BUNDLE_PAYLOAD_TYPE, b"\xff\xff\xff", [SigningKey.generate()])
    with pytest.raises(Unauthenticated) as e:  # refused on the signature, before any parse
        s.update_bundle(garbage, now=NOW)
    assert reason(e) == "BUNDLE_THRESHOLD_NOT_MET"
    signed = sign(BUNDLE_PAYLOAD_TYPE, b"\xff\xff\xff", fed.root_keys[:2])
    with pytest.raises(InvalidArgument) as malformed:
        s.update_bundle(signed, now=NOW)
    assert malformed.value.reason == "MALFORMED_BUNDLE"
    assert s.bundle is None


def test_bundle_refused_while_root_expired(fed: Federation) -> None:
    s = TrustedState(fed.root_envelope, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.bundle_envelope, now=fed.root.expires_at)
    assert reason(e) == "ROOT_EXPIRED"


def test_refreshing_an_expired_bundle_is_refused(fed: Federation) -> None:
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.bundle_envelope, now=fed.bundle.expires_at)
    assert reason(e) == "BUNDLE_EXPIRED"


def test_rotation_keeps_the_bundle_when_the_new_root_still_signs_it(fed: Federation) -> None:
    # Root v2 drops key 0 but keeps keys 1 and 2, which signed nothing yet; sign v1 with 1, 2.
    env = sign_bundle(fed.bundle, fed.root_keys[1:])
    s = TrustedState(fed.root_envelope, now=NOW)
    s.update_bundle(env, now=NOW)
    new_keys = [*fed.root_keys[1:], SigningKey.generate()]
    s.update_root(sign_root(rotated(fed, new_keys), fed.root_keys[1:]))
    assert s.root.version == 2
    assert s.bundle is not None and s.bundle.version == 1


def test_rotation_drops_the_bundle_the_new_root_does_not_sign(fed: Federation) -> None:
    new_keys = [SigningKey.generate() for _ in range(3)]
    s = fed.state()
    s.update_root(sign_root(rotated(fed, new_keys), fed.root_keys[:2] + new_keys[:2]))
    assert s.root.version == 2 and s.bundle is None
    s.update_bundle(sign_bundle(fed.bundle, new_keys[1:]), now=NOW)
    assert s.bundle is not None


def test_update_applies_a_gateway_answer_and_repeating_it_is_a_noop(fed: Federation) -> None:
    k2 = [SigningKey.generate() for _ in range(3)]
    k3 = [SigningKey.generate() for _ in range(3)]
    r2 = sign_root(rotated(fed, k2), fed.root_keys[:2] + k2[:2])
    r3 = sign_root(rotated(fed, k3, version=3), k2[1:] + k3[1:])
    bundle = sign_bundle(fed.next_bundle(version=5), k3[:2])
    s = TrustedState(fed.root_envelope, now=NOW)
    assert s.update([r2, r3], bundle, now=NOW).changed
    assert s.versions == (3, 5)
    assert not s.update([fed.root_envelope, r2, r3], bundle, now=NOW).changed  # all again
    assert s.versions == (3, 5)
    with pytest.raises(Unauthenticated) as e:  # a chain that skips v2 does not verify
        TrustedState(fed.root_envelope, now=NOW).update([r3], bundle, now=NOW)
    assert reason(e) == "ROOT_THRESHOLD_NOT_MET"


def test_metadata_round_trips_and_signs_deterministically(fed: Federation) -> None:
    assert Root.from_proto(fed.root.to_proto()) == fed.root
    assert TrustBundle.from_proto(fed.bundle.to_proto()) == fed.bundle
    assert sign_root(fed.root, []).payload == fed.root_envelope.payload


def test_metadata_cannot_be_changed_after_it_is_checked(fed: Federation) -> None:
    keys = dict(fed.root.keys)
    root = Root(1, NOW + timedelta(days=1), keys, 2)
    keys.clear()  # the caller's dict, not the root's
    assert len(root.keys) == 3
    with pytest.raises(TypeError):
        root.keys["x"] = root.keys[fed.root_keys[0].key_id]  # type: ignore[index]
    with pytest.raises(InvalidArgument) as e:
        Root(1, NOW, fed.root.keys, 4)
    assert reason(e) == "MALFORMED_ROOT"


# --- what a verifier persists ------------------------------------------------------------------


def test_restore_keeps_the_rollback_floor(fed: Federation) -> None:
    """A restarted verifier starts from its persisted root and bundle: an older bundle is a
    rollback even though this process never held the newer one."""
    kid = fed.carrier_keys["cmcc"].key_id
    v3 = sign_bundle(
        fed.next_bundle(version=3, revoked_key_ids=frozenset({kid})), fed.root_keys[:2]
    )
    s = TrustedState.restore(fed.root_envelope, root=fed.root_envelope, bundle=v3, now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update([], sign_bundle(fed.next_bundle(version=2), fed.root_keys[:2]), now=NOW)
    assert reason(e) == "BUNDLE_ROLLBACK"
    with pytest.raises(Unauthenticated) as e:
        s.carrier_key(kid, now=NOW)
    assert reason(e) == "KEY_REVOKED"


def test_restore_ignores_expiry_but_not_signatures(fed: Federation) -> None:
    later = fed.root.expires_at + timedelta(days=1)
    s = TrustedState.restore(fed.root_envelope, bundle=fed.bundle_envelope, now=later)
    assert s.versions == (1, 1)  # both expired, both held (floor; nothing verifies under them)
    forged = sign_bundle(fed.next_bundle(version=9), [SigningKey.generate(), SigningKey.generate()])
    with pytest.raises(Unauthenticated) as e:
        TrustedState.restore(fed.root_envelope, bundle=forged, now=NOW)
    assert reason(e) == "BUNDLE_THRESHOLD_NOT_MET"


def test_restore_refuses_a_root_that_is_not_newer_than_the_pin(fed: Federation) -> None:
    [r2] = chain(fed, [timedelta(days=365)])
    other_v1 = sign_root(Root(1, NOW + timedelta(days=9), fed.root.keys, 2), fed.root_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        TrustedState.restore(fed.root_envelope, root=other_v1, now=NOW)
    assert reason(e) == "ROOT_EQUIVOCATION"
    with pytest.raises(Unauthenticated) as e:
        TrustedState.restore(r2, root=fed.root_envelope, now=NOW)  # pinned v2, stored v1
    assert reason(e) == "ROOT_ROLLBACK"
    assert TrustedState.restore(fed.root_envelope, root=r2, now=NOW).root.version == 2


def test_trust_store_round_trip_leaves_no_temporary_files(fed: Federation, tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust")
    assert store.load().root is None and store.load().bundle is None
    store.save_root(fed.root_envelope)
    store.save_bundle(fed.bundle_envelope)
    store.save_bundle(fed.bundle_envelope)  # replaced, not appended
    loaded = store.load()
    assert (loaded.root, loaded.bundle) == (fed.root_envelope, fed.bundle_envelope)
    assert sorted(p.name for p in (tmp_path / "trust").iterdir()) == ["bundle.pb", "root.pb"]


def test_a_failed_write_is_unavailable_not_an_attack(fed: Federation, tmp_path: Path) -> None:
    (tmp_path / "trust").write_text("a file where the directory should be")
    with pytest.raises(Unavailable) as e:
        TrustStore(tmp_path / "trust").save_bundle(fed.bundle_envelope)
    assert e.value.reason == "TRUST_STORE_UNWRITABLE"


def test_an_unreadable_store_stops_the_start(tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    store.root_path.write_bytes(b"\xff not an envelope")
    with pytest.raises(Unavailable) as e:
        store.load()
    assert e.value.reason == "TRUST_STORE_UNREADABLE"


def test_reasons_are_one_enum_and_fast_forward_is_gone() -> None:
    assert "BUNDLE_FAST_FORWARD" not in TrustReason.__members__
    assert all(r.value == r.name for r in TrustReason)


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("3/7", (3, 7)),
        ("1/0", (1, 0)),
        ("0/7", None),
        ("3/07", None),
        ("3/7 ", None),
        (b"3/7", None),
        ("３/7", None),
    ],
)
def test_version_hints_parse_strictly(value: str | bytes, parsed: tuple[int, int] | None) -> None:
    assert parse_versions(value) == parsed
    if parsed is not None:
        assert format_versions(*parsed) == value
