"""Tenure and recycled claims: rules when built, and one named test per attack on verification."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from numfed.claims import (
    RECYCLED_CLAIM_PAYLOAD_TYPE,
    TENURE_CLAIM_PAYLOAD_TYPE,
    Purpose,
    RecycledClaim,
    TenureClaim,
    normalize_number,
    require_key_of,
    sign_claim,
    verify_recycled_claim,
    verify_tenure_claim,
)
from numfed.envelope import MAX_ENVELOPE_BYTES, Envelope, Signature, SigningKey, sign
from numfed.errors import InvalidArgument, NumfedError, PermissionDenied, Unauthenticated
from numfed.trust import TrustedState, sign_bundle
from numfed.v1 import claim_pb2
from tests.helpers.federation import NOW, Federation, carrier_entry, make_federation

X = NOW - timedelta(days=400)
ALL = tuple(Purpose)


@pytest.fixture
def fed() -> Federation:
    return make_federation(ecdsa_carrier="ctcc")


def tenure(
    number: str = "+8613912345678",
    carrier: str = "cmcc",
    purpose: Purpose = Purpose.QUERY_PRIOR,
    now: datetime = NOW,
    lifetime: timedelta = timedelta(minutes=10),
) -> TenureClaim:
    return TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=X,
        purpose=purpose,
        now=now,
        lifetime=lifetime,
    )


def refused(
    fed: Federation,
    env: Envelope,
    cls: type[NumfedError],
    why: str,
    *,
    purposes: tuple[Purpose, ...] = ALL,
) -> None:
    with pytest.raises(cls) as e:
        verify_tenure_claim(env, fed.state(), now=NOW, purposes=purposes)
    assert e.value.reason == why


def test_good_claim_verifies(fed: Federation) -> None:
    c = tenure()
    v = verify_tenure_claim(
        sign_claim(c, fed.carrier_keys["cmcc"]),
        fed.state(),
        now=NOW,
        purposes=[Purpose.QUERY_PRIOR],
    )
    assert v.claim == c and v.carrier_id == "cmcc"
    assert v.key_id == fed.carrier_keys["cmcc"].key_id


def test_ecdsa_p256_claim_accepted(fed: Federation) -> None:
    c = tenure("+8615312345678", "ctcc")
    v = verify_tenure_claim(
        sign_claim(c, fed.carrier_keys["ctcc"]), fed.state(), now=NOW, purposes=ALL
    )
    assert v.carrier_id == "ctcc"


def test_forged_signature_refused(fed: Federation) -> None:
    env = sign_claim(tenure(), fed.carrier_keys["cmcc"])
    forged = SigningKey.generate().sign_raw(b"x")
    refused(
        fed,
        replace(env, signatures=(Signature(env.signatures[0].keyid, forged),)),
        Unauthenticated,
        "BAD_SIGNATURE",
    )


def test_payload_swapped_under_valid_signature_refused(fed: Federation) -> None:
    good = sign_claim(tenure(), fed.carrier_keys["cmcc"])
    other = tenure(number="+8613800000000")
    swapped = replace(good, payload=other.to_proto().SerializeToString())
    refused(fed, swapped, Unauthenticated, "BAD_SIGNATURE")


def test_payload_type_swapped_refused(fed: Federation) -> None:
    good = sign_claim(tenure(), fed.carrier_keys["cmcc"])
    refused(
        fed,
        replace(good, payload_type=RECYCLED_CLAIM_PAYLOAD_TYPE),
        Unauthenticated,
        "WRONG_PAYLOAD_TYPE",
    )
    # Re-signed under another type, it is still not a tenure claim.
    other = sign(RECYCLED_CLAIM_PAYLOAD_TYPE, good.payload, [fed.carrier_keys["cmcc"]])
    refused(fed, other, Unauthenticated, "WRONG_PAYLOAD_TYPE")


def test_key_outside_number_range_refused(fed: Federation) -> None:
    env = sign_claim(tenure(number="+8618612345678"), fed.carrier_keys["cmcc"])
    refused(fed, env, PermissionDenied, "KEY_OUT_OF_SCOPE")


def test_claim_signed_by_other_carriers_key_refused(fed: Federation) -> None:
    env = sign_claim(tenure(carrier="cmcc"), fed.carrier_keys["cucc"])
    refused(fed, env, PermissionDenied, "CARRIER_KEY_MISMATCH")


def covering_all_of_86(fed: Federation) -> TrustedState:
    """The demo's bundle: with number portability every carrier's key covers all of +86."""
    keys = {k.key_id: carrier_entry(k, c, ("+86",)) for c, k in fed.carrier_keys.items()}
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(carrier_keys=keys), fed.root_keys[:2]), now=NOW)
    return s


def test_require_key_of_names_the_rule(fed: Federation) -> None:
    key = fed.bundle.carrier_keys[fed.carrier_keys["cmcc"].key_id]
    require_key_of(key, "cmcc")
    with pytest.raises(PermissionDenied) as e:
        require_key_of(key, "cucc")
    assert e.value.reason == "CARRIER_KEY_MISMATCH"
    assert e.value.metadata == {"rule": "PLAT-CLAIM-KEY-CARRIER"}


@pytest.mark.parametrize("kind", ["tenure", "recycled"])
def test_a_key_covering_the_number_speaks_for_its_own_carrier_only(
    fed: Federation, kind: str
) -> None:
    """PLAT-CLAIM-KEY-CARRIER: cmcc's key covers a number in cucc's range (portability), so
    scope does not refuse a claim naming cucc signed with it; the carrier check must."""
    trust = covering_all_of_86(fed)
    number = "+8618612345678"

    def verify(carrier: str, signer: str) -> str:
        if kind == "tenure":
            env = sign_claim(tenure(number, carrier), fed.carrier_keys[signer])
            return verify_tenure_claim(env, trust, now=NOW, purposes=ALL).carrier_id
        answer = RecycledClaim(
            number, carrier, X, True, "weibo", NOW, NOW + timedelta(minutes=5), X.date()
        )
        env = sign_claim(answer, fed.carrier_keys[signer])
        return verify_recycled_claim(env, trust, now=NOW, audience="weibo").carrier_id

    assert verify("cmcc", "cmcc") == "cmcc"  # the key covers the number
    for carrier, signer in (("cucc", "cmcc"), ("cmcc", "cucc"), ("ctcc", "cmcc")):
        with pytest.raises(PermissionDenied) as e:
            verify(carrier, signer)
        assert e.value.reason == "CARRIER_KEY_MISMATCH", (carrier, signer)
        assert e.value.metadata["rule"] == "PLAT-CLAIM-KEY-CARRIER"


def test_key_outside_validity_window_refused(fed: Federation) -> None:
    k = SigningKey.generate()
    window = carrier_entry(
        k,
        "cmcc",
        ("+86139",),
        not_before=NOW - timedelta(days=10),
        not_after=NOW - timedelta(days=1),
    )
    keys = dict(fed.bundle.carrier_keys) | {k.key_id: window}
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(carrier_keys=keys), fed.root_keys[:2]), now=NOW)
    with pytest.raises(Unauthenticated) as e:
        verify_tenure_claim(sign_claim(tenure(), k), s, now=NOW, purposes=ALL)
    assert e.value.reason == "KEY_OUT_OF_WINDOW"


def test_expired_claim_refused(fed: Federation) -> None:
    env = sign_claim(tenure(now=NOW - timedelta(minutes=20)), fed.carrier_keys["cmcc"])
    refused(fed, env, Unauthenticated, "CLAIM_EXPIRED")


def test_claim_from_future_beyond_skew_refused(fed: Federation) -> None:
    env = sign_claim(tenure(now=NOW + timedelta(seconds=61)), fed.carrier_keys["cmcc"])
    refused(fed, env, Unauthenticated, "ISSUED_IN_FUTURE")


def test_claim_from_future_within_skew_accepted(fed: Federation) -> None:
    env = sign_claim(tenure(now=NOW + timedelta(seconds=59)), fed.carrier_keys["cmcc"])
    assert verify_tenure_claim(env, fed.state(), now=NOW, purposes=ALL).carrier_id == "cmcc"


def test_claim_living_too_long_refused(fed: Federation) -> None:
    env = sign_claim(tenure(lifetime=timedelta(hours=2)), fed.carrier_keys["cmcc"])
    refused(fed, env, InvalidArgument, "CLAIM_LIFETIME_TOO_LONG")


def test_wrong_purpose_refused(fed: Federation) -> None:
    env = sign_claim(tenure(purpose=Purpose.QUERY_PRIOR), fed.carrier_keys["cmcc"])
    refused(fed, env, InvalidArgument, "WRONG_PURPOSE", purposes=(Purpose.RELEASE_PRIOR,))


def test_unknown_key_id_refused(fed: Federation) -> None:
    env = sign_claim(tenure(), SigningKey.generate())
    refused(fed, env, Unauthenticated, "UNKNOWN_KEY")


def test_revoked_key_refused(fed: Federation) -> None:
    kid = fed.carrier_keys["cmcc"].key_id
    s = fed.state()
    s.update_bundle(
        sign_bundle(fed.next_bundle(revoked_key_ids=frozenset({kid})), fed.root_keys[:2]), now=NOW
    )
    with pytest.raises(Unauthenticated) as e:
        verify_tenure_claim(
            sign_claim(tenure(), fed.carrier_keys["cmcc"]), s, now=NOW, purposes=ALL
        )
    assert e.value.reason == "KEY_REVOKED"


def test_oversized_envelope_refused(fed: Federation) -> None:
    pb = sign_claim(tenure(), fed.carrier_keys["cmcc"]).to_proto()
    pb.payload += b"\x00" * MAX_ENVELOPE_BYTES
    with pytest.raises(InvalidArgument) as e:
        Envelope.from_proto(pb)
    assert e.value.reason == "ENVELOPE_TOO_LARGE"


def test_ecdsa_signature_of_wrong_length_refused(fed: Federation) -> None:
    env = sign_claim(tenure("+8615312345678", "ctcc"), fed.carrier_keys["ctcc"])
    sig = env.signatures[0]
    for bad in (sig.sig[:63], sig.sig + b"\x00", b"\x30" + sig.sig):
        refused(
            fed,
            replace(env, signatures=(Signature(sig.keyid, bad),)),
            Unauthenticated,
            "BAD_SIGNATURE",
        )


def test_two_signatures_on_a_claim_refused(fed: Federation) -> None:
    env = sign(
        TENURE_CLAIM_PAYLOAD_TYPE,
        tenure().to_proto().SerializeToString(),
        [fed.carrier_keys["cmcc"]] * 2,
    )
    refused(fed, env, Unauthenticated, "ONE_SIGNATURE_REQUIRED")


def test_signed_garbage_is_malformed_not_a_crash(fed: Federation) -> None:
    env = sign(TENURE_CLAIM_PAYLOAD_TYPE, b"\xff\xff\xff", [fed.carrier_keys["cmcc"]])
    refused(fed, env, InvalidArgument, "MALFORMED_CLAIM")
    pb = tenure().to_proto()
    pb.purpose = claim_pb2.PURPOSE_UNSPECIFIED
    env = sign(TENURE_CLAIM_PAYLOAD_TYPE, pb.SerializeToString(), [fed.carrier_keys["cmcc"]])
    refused(fed, env, InvalidArgument, "PURPOSE_UNSPECIFIED")


def _drop(field: str) -> Any:
    return lambda pb: pb.ClearField(field)


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda pb: setattr(pb, "purpose", 99), "MALFORMED_CLAIM"),  # no such purpose
        (_drop("tenure_start"), "MALFORMED_CLAIM"),
        (_drop("issued_at"), "MALFORMED_CLAIM"),
        (_drop("expires_at"), "MALFORMED_CLAIM"),
        (lambda pb: setattr(pb.issued_at, "nanos", -1), "MALFORMED_CLAIM"),
        (lambda pb: setattr(pb.expires_at, "seconds", 253_402_300_800), "MALFORMED_CLAIM"),
        (lambda pb: setattr(pb, "carrier_id", "CMCC"), "MALFORMED_CLAIM"),
        (lambda pb: setattr(pb, "claim_id", b"short"), "MALFORMED_CLAIM"),
        (lambda pb: pb.binding_refs.append("r1"), "MALFORMED_CLAIM"),
        (lambda pb: setattr(pb, "number", "+86 139 1234 5678"), "MALFORMED_NUMBER"),
    ],
)
def test_a_signed_payload_of_the_wrong_form_is_refused(
    fed: Federation, mangle: Any, why: str
) -> None:
    """Each rule of the payload's form (PLAT-CLAIM-10) still refuses a claim whose signature
    is good, however the payload is parsed."""
    pb = tenure().to_proto()
    mangle(pb)
    env = sign(TENURE_CLAIM_PAYLOAD_TYPE, pb.SerializeToString(), [fed.carrier_keys["cmcc"]])
    refused(fed, env, InvalidArgument, why)


@pytest.mark.parametrize("number", ["+8613912345678", "+8618612345678", "+8615312345678"])
def test_realistic_numbers_are_e164(number: str) -> None:
    assert normalize_number(number) == number


@pytest.mark.parametrize(
    "number", ["13912345678", "+86 139 1234 5678", "+86139", "+861391234567890", "", "+0000"]
)
def test_malformed_numbers_refused(number: str) -> None:
    for _ in range(2):  # a refusal is not remembered as a verdict
        with pytest.raises(InvalidArgument) as e:
            normalize_number(number)
        assert e.value.reason == "MALFORMED_NUMBER"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"expires_at": NOW}, "MALFORMED_CLAIM"),  # not after issued_at
        ({"claim_id": b"short"}, "MALFORMED_CLAIM"),
        ({"tenure_start": NOW + timedelta(days=1)}, "MALFORMED_CLAIM"),
        ({"binding_refs": ("a",)}, "MALFORMED_CLAIM"),  # only RELEASE_OWN names bindings
        ({"carrier_id": "CMCC"}, "MALFORMED_CLAIM"),
        ({"number": "+86 139 1234 5678"}, "MALFORMED_NUMBER"),
        ({"issued_at": NOW.replace(tzinfo=None)}, "NAIVE_TIMESTAMP"),
        ({"purpose": Purpose.RELEASE_OWN}, "NO_BINDINGS_SELECTED"),
        ({"purpose": Purpose.RELEASE_OWN, "binding_refs": ("a", "a")}, "MALFORMED_CLAIM"),
        (
            {"purpose": Purpose.RELEASE_OWN, "binding_refs": tuple(map(str, range(1001)))},
            "MALFORMED_CLAIM",
        ),
    ],
)
def test_claim_rules_when_built(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        replace(tenure(), **changes)
    assert e.value.reason == why


def test_timestamps_are_stored_in_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    c = tenure(now=NOW.astimezone(beijing))
    assert c.issued_at.tzinfo is UTC and c.issued_at == NOW
    # One of them in another zone is enough for it to be converted.
    mixed = replace(tenure(), tenure_start=X.astimezone(beijing))
    assert mixed.tenure_start.tzinfo is UTC and mixed.tenure_start == X
    assert mixed.issued_at.tzinfo is UTC and mixed.issued_at == NOW


def test_binding_refs_are_stored_as_a_tuple() -> None:
    refs: Any = ["r1", "r2"]
    c = replace(tenure(), purpose=Purpose.RELEASE_OWN, binding_refs=refs)
    assert c.binding_refs == ("r1", "r2")
    refs.append("r3")  # the caller's list is not the claim's
    assert c.binding_refs == ("r1", "r2")


def test_round_trip_keeps_every_field() -> None:
    c = TenureClaim.new(
        number="+8613912345678",
        carrier_id="cmcc",
        tenure_start=X.replace(microsecond=123457),
        purpose=Purpose.RELEASE_OWN,
        now=NOW.replace(microsecond=999999),
        binding_refs=("r1", "r2"),
    )
    assert TenureClaim.from_proto(c.to_proto()) == c
    assert TenureClaim.from_proto(c.to_proto()).tenure_start.microsecond == 123457
    r = RecycledClaim(
        "+8613912345678", "cmcc", X, False, "weibo", NOW, NOW + timedelta(1), X.date()
    )
    assert RecycledClaim.from_proto(r.to_proto()) == r


def test_recycled_claim_verifies_for_its_audience_only(fed: Federation) -> None:
    c = RecycledClaim(
        "+8613912345678", "cmcc", X, True, "weibo", NOW, NOW + timedelta(minutes=5), X.date()
    )
    env = sign_claim(c, fed.carrier_keys["cmcc"])
    v = verify_recycled_claim(env, fed.state(), now=NOW, audience="weibo")
    assert v.claim.changed is True
    with pytest.raises(PermissionDenied) as e:
        verify_recycled_claim(env, fed.state(), now=NOW, audience="taobao")
    assert e.value.reason == "WRONG_AUDIENCE"
    with pytest.raises(Unauthenticated):
        verify_tenure_claim(env, fed.state(), now=NOW, purposes=ALL)


def test_recycled_claim_attacks_refused(fed: Federation) -> None:
    def recycled(**changes: Any) -> RecycledClaim:
        c = RecycledClaim(
            "+8613912345678", "cmcc", X, True, "weibo", NOW, NOW + timedelta(minutes=5), X.date()
        )
        return replace(c, **changes)

    cases: list[tuple[Envelope, type[NumfedError], str]] = [
        (
            sign_claim(recycled(), fed.carrier_keys["cucc"]),
            PermissionDenied,
            "CARRIER_KEY_MISMATCH",
        ),
        (
            sign_claim(recycled(number="+8618612345678"), fed.carrier_keys["cmcc"]),
            PermissionDenied,
            "KEY_OUT_OF_SCOPE",
        ),
        (
            sign_claim(
                recycled(issued_at=NOW - timedelta(hours=1), expires_at=NOW - timedelta(minutes=2)),
                fed.carrier_keys["cmcc"],
            ),
            Unauthenticated,
            "CLAIM_EXPIRED",
        ),
        (
            sign(
                TENURE_CLAIM_PAYLOAD_TYPE,
                recycled().to_proto().SerializeToString(),
                [fed.carrier_keys["cmcc"]],
            ),
            Unauthenticated,
            "WRONG_PAYLOAD_TYPE",
        ),
    ]
    for env, cls, why in cases:
        with pytest.raises(cls) as e:
            verify_recycled_claim(env, fed.state(), now=NOW, audience="weibo")
        assert e.value.reason == why


def test_release_grace_applies_to_release_claims_only(fed: Federation) -> None:
    from numfed.claims import RELEASE_GRACE, ClaimPolicy

    late = NOW + timedelta(minutes=40)  # the claim expired 30 minutes ago
    grace = ClaimPolicy(release_grace=RELEASE_GRACE)
    release = sign_claim(tenure(purpose=Purpose.RELEASE_PRIOR), fed.carrier_keys["cmcc"])
    query = sign_claim(tenure(purpose=Purpose.QUERY_PRIOR), fed.carrier_keys["cmcc"])
    state = fed.state()
    with pytest.raises(Unauthenticated) as e:  # the gateway's intake: strictly fresh
        verify_tenure_claim(release, state, now=late, purposes=ALL)
    assert e.value.reason == "CLAIM_EXPIRED"
    assert verify_tenure_claim(release, state, now=late, purposes=ALL, policy=grace)
    with pytest.raises(Unauthenticated):  # a query is never late-tolerant
        verify_tenure_claim(query, state, now=late, purposes=ALL, policy=grace)
    with pytest.raises(Unauthenticated):  # nor a release beyond the grace
        verify_tenure_claim(release, state, now=late + RELEASE_GRACE, purposes=ALL, policy=grace)
