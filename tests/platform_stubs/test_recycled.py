"""A platform believes a recycled answer only from the carrier that serves the number."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from numfed.claims import RecycledClaim, sign_claim
from numfed.errors import PermissionDenied
from numfed.events import EventKind, LifecycleEvent
from numfed.portability import NumberPlan
from numfed.trust import TrustedState, sign_bundle
from platform_stubs.recycled import check_recycled_answer
from platform_stubs.store import PlatformStore
from tests.helpers.federation import NOW, Federation, carrier_entry, make_federation

N = "+8613812345678"  # in cmcc's range


def covering_all_of_86(fed: Federation) -> TrustedState:
    """With number portability every carrier's key covers all of +86: the key's scope cannot
    tell who serves N; only the numbering plan and the ports can."""
    keys = {k.key_id: carrier_entry(k, c, ("+86",)) for c, k in fed.carrier_keys.items()}
    s = fed.state()
    s.update_bundle(sign_bundle(fed.next_bundle(carrier_keys=keys), fed.root_keys[:2]), now=NOW)
    return s


def answer(fed: Federation, carrier: str, *, number: str = N, day: date | None = None) -> object:
    claim = RecycledClaim(
        number, carrier, NOW, True, "weibo", NOW, NOW + timedelta(minutes=5), day or NOW.date()
    )
    return sign_claim(claim, fed.carrier_keys[carrier]).to_proto()


def test_only_the_serving_carriers_answer_is_believed(tmp_path: Path) -> None:
    fed = make_federation()
    trust = covering_all_of_86(fed)
    store = PlatformStore(tmp_path / "platform.db")
    try:

        def check(carrier: str) -> str:
            return check_recycled_answer(
                answer(fed, carrier),  # type: ignore[arg-type]
                trust=trust,
                store=store,
                platform_id="weibo",
                number=N,
                specified_date=NOW.date(),
                now=NOW,
            ).carrier_id

        assert check("cmcc") == "cmcc"
        with pytest.raises(PermissionDenied) as e:
            check("ctcc")  # signed well, by a key covering +86, for a number it does not serve
        assert e.value.reason == "NUMBER_NOT_SERVED"
        # Once both carriers' halves of a port are in the platform's log, ctcc speaks for N.
        plan = NumberPlan.from_bundle(trust.bundle)
        for seq, signer in enumerate(("cmcc", "ctcc"), 1):
            half = LifecycleEvent.new(
                N, EventKind.PORTED, NOW, from_carrier="cmcc", to_carrier="ctcc"
            )
            store.apply_events(seq, signer, [half], NOW, plan)
        assert check("ctcc") == "ctcc"
        with pytest.raises(PermissionDenied):
            check("cmcc")
    finally:
        store.close()


@pytest.mark.parametrize(
    ("number", "day"),
    [
        ("+8613812345679", NOW.date()),  # another number's answer, signed well
        (N, NOW.date() - timedelta(days=30)),  # an older answer about another day
    ],
    ids=["another_number", "another_day"],
)
def test_an_answer_to_another_question_is_not_believed(
    tmp_path: Path, number: str, day: date
) -> None:
    """The gateway relays the answer; a signed answer to some other question (another number,
    or the same number on another day, replayed) must not stand in for the one asked."""
    fed = make_federation()
    trust = covering_all_of_86(fed)
    store = PlatformStore(tmp_path / "platform.db")
    try:
        with pytest.raises(PermissionDenied) as e:
            check_recycled_answer(
                answer(fed, "cmcc", number=number, day=day),  # type: ignore[arg-type]
                trust=trust,
                store=store,
                platform_id="weibo",
                number=N,
                specified_date=NOW.date(),
                now=NOW,
            )
        assert e.value.reason == "WRONG_QUESTION"
    finally:
        store.close()
