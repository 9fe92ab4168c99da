"""Which numbers exist is the carriers' word (the signed numbering plan), not a library's snapshot.

``normalize_number`` checks syntax only: E.164, a known country code, a possible length. Whether
a number may be attested is decided by the trust bundle's ``number_ranges``: a claim, recycled
answer or event about a number in no range is PERMISSION_DENIED ``NUMBER_NOT_IN_PLAN``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from numfed.claims import (
    Purpose,
    RecycledClaim,
    TenureClaim,
    normalize_number,
    sign_claim,
    verify_recycled_claim,
    verify_tenure_claim,
)
from numfed.errors import InvalidArgument, PermissionDenied
from numfed.events import EventKind, LifecycleEvent, sign_event_batch, verify_event_batch
from numfed.trust import TrustedState, sign_bundle
from tests.helpers.federation import NOW, Federation, carrier_entry, make_federation

NEW_BLOCK = "+8614900138000"
"""ctcc's 149 block: libphonenumber's metadata refuses all of 1490-1499."""
OUTSIDE = "+8617012345678"
"""+86 170: a possible number in no range of the test plan."""


@pytest.fixture
def fed() -> Federation:
    return make_federation()


def with_149_for_ctcc(fed: Federation) -> TrustedState:
    """Every key covers all of +86 (number portability); the plan gives +86149 to ctcc."""
    keys = {k.key_id: carrier_entry(k, c, ("+86",)) for c, k in fed.carrier_keys.items()}
    ranges = {**fed.bundle.number_ranges, "+86149": "ctcc"}
    s = fed.state()
    bundle = fed.next_bundle(carrier_keys=keys, number_ranges=ranges)
    s.update_bundle(sign_bundle(bundle, fed.root_keys[:2]), now=NOW)
    return s


def test_syntax_only_decides_what_is_well_formed() -> None:
    for number in (NEW_BLOCK, "+8614912345678", "+8614012345678", OUTSIDE, "+8613912345678"):
        assert normalize_number(number) == number
    for malformed in (
        "+8612345",  # dialled locally only: not a whole number
        "+861391234567890",  # too long for +86
        "+999123456",  # no such country code
        "+86013912345678",  # a trunk prefix: not E.164
    ):
        with pytest.raises(InvalidArgument) as e:
            normalize_number(malformed)
        assert e.value.reason == "MALFORMED_NUMBER", malformed


def claim(number: str, carrier: str, purpose: Purpose = Purpose.QUERY_PRIOR) -> TenureClaim:
    return TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=NOW - timedelta(days=400),
        purpose=purpose,
        now=NOW,
    )


def test_a_claim_for_a_number_of_the_new_block_verifies(fed: Federation) -> None:
    env = sign_claim(claim(NEW_BLOCK, "ctcc"), fed.carrier_keys["ctcc"])
    got = verify_tenure_claim(env, with_149_for_ctcc(fed), now=NOW, purposes=tuple(Purpose))
    assert got.claim.number == NEW_BLOCK and got.carrier_id == "ctcc"


def test_a_claim_for_a_number_in_no_range_is_refused(fed: Federation) -> None:
    """Even when the signing key covers all of +86."""
    trust = with_149_for_ctcc(fed)
    for purpose in Purpose:
        refs = ("a",) if purpose is Purpose.RELEASE_OWN else ()
        c = TenureClaim.new(
            number=OUTSIDE,
            carrier_id="cmcc",
            tenure_start=NOW - timedelta(days=400),
            purpose=purpose,
            now=NOW,
            binding_refs=refs,
        )
        with pytest.raises(PermissionDenied) as e:
            verify_tenure_claim(
                sign_claim(c, fed.carrier_keys["cmcc"]), trust, now=NOW, purposes=tuple(Purpose)
            )
        assert e.value.reason == "NUMBER_NOT_IN_PLAN", purpose


def test_a_recycled_answer_for_a_number_in_no_range_is_refused(fed: Federation) -> None:
    answer = RecycledClaim(
        number=OUTSIDE,
        carrier_id="cmcc",
        since=NOW - timedelta(days=30),
        changed=False,
        platform_id="weibo",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
        specified_date=(NOW - timedelta(days=30)).date(),
    )
    with pytest.raises(PermissionDenied) as e:
        verify_recycled_claim(
            sign_claim(answer, fed.carrier_keys["cmcc"]),
            with_149_for_ctcc(fed),
            now=NOW,
            audience="weibo",
        )
    assert e.value.reason == "NUMBER_NOT_IN_PLAN"


def test_an_event_batch_naming_a_number_in_no_range_is_refused_whole(fed: Federation) -> None:
    trust = with_149_for_ctcc(fed)
    good = LifecycleEvent.new(NEW_BLOCK, EventKind.DEACTIVATED, NOW)
    ok = sign_event_batch("ctcc", [good], fed.carrier_keys["ctcc"], now=NOW)
    assert verify_event_batch(ok, trust, now=NOW).events == (good,)
    bad = LifecycleEvent.new(OUTSIDE, EventKind.DEACTIVATED, NOW)
    env = sign_event_batch("ctcc", [good, bad], fed.carrier_keys["ctcc"], now=NOW)
    for from_log in (False, True):
        with pytest.raises(PermissionDenied) as e:
            verify_event_batch(env, trust, now=NOW, from_log=from_log)
        assert e.value.reason == "NUMBER_NOT_IN_PLAN"


def test_an_empty_plan_attests_nothing(fed: Federation) -> None:
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(number_ranges={}), fed.root_keys[:2]), now=NOW)
    env = sign_claim(claim("+8613912345678", "cmcc"), fed.carrier_keys["cmcc"])
    with pytest.raises(PermissionDenied) as e:
        verify_tenure_claim(env, s, now=NOW, purposes=tuple(Purpose))
    assert e.value.reason == "NUMBER_NOT_IN_PLAN"
