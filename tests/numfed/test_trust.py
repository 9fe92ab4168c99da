"""The trust model under attack: rollback, fast-forward, freeze, rotation, threshold games."""

from __future__ import annotations

from datetime import timedelta

import pytest

from numfed.envelope import Envelope, Signature, SigningKey, sign
from numfed.errors import InvalidArgument, NumfedError, Unauthenticated
from numfed.trust import (
    BUNDLE_PAYLOAD_TYPE,
    Root,
    TrustBundle,
    TrustedState,
    sign_bundle,
    sign_root,
)
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
    s.update_bundle(fed.bundle_envelope, now=NOW)  # refresh: not a rollback
    v2 = sign_bundle(fed.next_bundle(), fed.root_keys[1:])
    s.update_bundle(v2, now=NOW)
    assert s.bundle is not None and s.bundle.version == 2


def test_bundle_rollback_refused(fed: Federation) -> None:
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(), fed.root_keys[:2]), now=NOW)
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(fed.bundle_envelope, now=NOW)  # older
    assert reason(e) == "BUNDLE_ROLLBACK"
    other_v2 = sign_bundle(fed.next_bundle(revoked_key_ids=frozenset({"x"})), fed.root_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(other_v2, now=NOW)  # equal version, other content
    assert reason(e) == "BUNDLE_ROLLBACK"


def test_bundle_fast_forward_refused(fed: Federation) -> None:
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(sign_bundle(fed.next_bundle(version=3), fed.root_keys[:2]), now=NOW)
    assert reason(e) == "BUNDLE_FAST_FORWARD"


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


def test_root_rotation_with_both_thresholds(fed: Federation) -> None:
    new_keys = [SigningKey.generate() for _ in range(3)]
    s = fed.state()
    s.update_root(sign_root(rotated(fed, new_keys), fed.root_keys[:2] + new_keys[:2]), now=NOW)
    assert s.root.version == 2
    assert s.bundle is None  # the old bundle is not signed by the new root keys
    s.update_bundle(sign_bundle(fed.bundle, new_keys[1:]), now=NOW)
    assert s.bundle is not None


def test_root_rotation_without_old_threshold_refused(fed: Federation) -> None:
    new_keys = [SigningKey.generate() for _ in range(3)]
    s = fed.state()
    env = sign_root(rotated(fed, new_keys), fed.root_keys[:1] + new_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        s.update_root(env, now=NOW)
    assert reason(e) == "ROOT_THRESHOLD_NOT_MET"
    assert s.root.version == 1


def test_root_rotation_without_new_threshold_refused(fed: Federation) -> None:
    new_keys = [SigningKey.generate() for _ in range(3)]
    s = fed.state()
    env = sign_root(rotated(fed, new_keys), fed.root_keys[:2] + new_keys[:1])
    with pytest.raises(Unauthenticated) as e:
        s.update_root(env, now=NOW)
    assert reason(e) == "ROOT_THRESHOLD_NOT_MET"
    assert s.root.version == 1 and s.bundle is not None  # a refused root changes nothing


def test_root_version_must_be_next(fed: Federation) -> None:
    s = fed.state()
    env = sign_root(rotated(fed, fed.root_keys, version=3), fed.root_keys[:2])
    with pytest.raises(Unauthenticated) as e:
        s.update_root(env, now=NOW)
    assert reason(e) == "ROOT_VERSION_NOT_NEXT"


def test_expired_new_root_refused(fed: Federation) -> None:
    s = fed.state()
    root = Root(2, NOW - timedelta(seconds=1), fed.root.keys, 2)
    with pytest.raises(Unauthenticated) as e:
        s.update_root(sign_root(root, fed.root_keys[:2]), now=NOW)
    assert reason(e) == "ROOT_EXPIRED"


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
        s.update_root(fed.bundle_envelope, now=NOW)
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
    s.update_root(sign_root(rotated(fed, new_keys), fed.root_keys[1:]), now=NOW)
    assert s.root.version == 2
    assert s.bundle is not None and s.bundle.version == 1


def test_update_applies_a_gateway_answer_and_repeating_it_is_a_noop(fed: Federation) -> None:
    k2 = [SigningKey.generate() for _ in range(3)]
    k3 = [SigningKey.generate() for _ in range(3)]
    r2 = sign_root(rotated(fed, k2), fed.root_keys[:2] + k2[:2])
    r3 = sign_root(rotated(fed, k3, version=3), k2[1:] + k3[1:])
    bundle = sign_bundle(fed.next_bundle(version=5), k3[:2])
    s = TrustedState(fed.root_envelope, now=NOW)
    s.update([r2, r3], bundle, now=NOW)
    assert s.root.version == 3
    assert s.bundle is not None and s.bundle.version == 5
    s.update([fed.root_envelope, r2, r3], bundle, now=NOW)  # the whole chain again
    assert s.root.version == 3
    assert s.bundle is not None and s.bundle.version == 5
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
