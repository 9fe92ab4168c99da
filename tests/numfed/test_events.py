"""Signed event batches: one signature per batch, checked like a claim."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from numfed.envelope import Signature, SigningKey, sign
from numfed.errors import InvalidArgument, NumfedError, PermissionDenied, Unauthenticated
from numfed.events import (
    EVENT_BATCH_PAYLOAD_TYPE,
    EventKind,
    LifecycleEvent,
    sign_event_batch,
    verify_event_batch,
)
from numfed.trust import sign_bundle
from tests.helpers.federation import NOW, Federation, carrier_entry, make_federation

N = "+8613912345678"


@pytest.fixture
def fed() -> Federation:
    return make_federation()


def events(n: int = 3, number: str = N) -> list[LifecycleEvent]:
    return [LifecycleEvent.new(number, EventKind.DEACTIVATED, NOW) for _ in range(n)]


def test_batch_round_trip(fed: Federation) -> None:
    sent = [
        *events(),
        LifecycleEvent.new(N, EventKind.PENDING_RELEASE, NOW, as_of=NOW),
        LifecycleEvent.new(N, EventKind.REASSIGNED, NOW, tenure_start=NOW - timedelta(days=1)),
        LifecycleEvent.new(N, EventKind.PORTED, NOW, from_carrier="cucc", to_carrier="cmcc"),
    ]
    env = sign_event_batch("cmcc", sent, fed.carrier_keys["cmcc"], now=NOW)
    got = verify_event_batch(env, fed.state(), now=NOW)
    assert got.carrier_id == "cmcc" and list(got.events) == sent
    assert len(env.signatures) == 1  # one signature for the whole batch


def refused(fed: Federation, env: object, cls: type[NumfedError], reason: str) -> None:
    with pytest.raises(cls) as e:
        verify_event_batch(env, fed.state(), now=NOW)  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_forged_batch_refused(fed: Federation) -> None:
    env = sign_event_batch("cmcc", events(), fed.carrier_keys["cmcc"], now=NOW)
    forged = Signature(env.signatures[0].keyid, SigningKey.generate().sign_raw(b"x"))
    refused(fed, replace(env, signatures=(forged,)), Unauthenticated, "BAD_SIGNATURE")


def test_batch_for_another_carrier_refused(fed: Federation) -> None:
    env = sign_event_batch("cmcc", events(), fed.carrier_keys["cucc"], now=NOW)
    refused(fed, env, PermissionDenied, "CARRIER_KEY_MISMATCH")


def test_a_key_covering_the_numbers_speaks_for_its_own_carrier_only(fed: Federation) -> None:
    """PLAT-CLAIM-KEY-CARRIER with portability: every key covers all of +86, so only the
    carrier check refuses a batch naming one carrier signed with another's key."""
    keys = {k.key_id: carrier_entry(k, c, ("+86",)) for c, k in fed.carrier_keys.items()}
    trust = fed.state()
    trust.update_bundle(sign_bundle(fed.next_bundle(carrier_keys=keys), fed.root_keys[:2]), now=NOW)
    number = "+8618612345678"  # in cucc's range in the other tests
    ok = sign_event_batch("cmcc", events(number=number), fed.carrier_keys["cmcc"], now=NOW)
    assert verify_event_batch(ok, trust, now=NOW).carrier_id == "cmcc"
    for carrier, signer in (("cucc", "cmcc"), ("cmcc", "cucc")):
        env = sign_event_batch(carrier, events(number=number), fed.carrier_keys[signer], now=NOW)
        with pytest.raises(PermissionDenied) as e:
            verify_event_batch(env, trust, now=NOW)
        assert e.value.reason == "CARRIER_KEY_MISMATCH"
        assert e.value.metadata == {"rule": "PLAT-CLAIM-KEY-CARRIER"}


def test_number_outside_the_keys_range_refused(fed: Federation) -> None:
    env = sign_event_batch(
        "cmcc", events(number="+8618612345678"), fed.carrier_keys["cmcc"], now=NOW
    )
    refused(fed, env, PermissionDenied, "KEY_OUT_OF_SCOPE")


def test_batch_size_limits(fed: Federation) -> None:
    with pytest.raises(InvalidArgument):
        sign_event_batch("cmcc", events(501), fed.carrier_keys["cmcc"], now=NOW)
    with pytest.raises(InvalidArgument):
        sign_event_batch("cmcc", [], fed.carrier_keys["cmcc"], now=NOW)


def test_claim_envelope_is_not_a_batch(fed: Federation) -> None:
    env = sign("application/vnd.numfed.tenure-claim+proto", b"x", [fed.carrier_keys["cmcc"]])
    refused(fed, env, Unauthenticated, "WRONG_PAYLOAD_TYPE")
    garbage = sign(EVENT_BATCH_PAYLOAD_TYPE, b"\xff\xff", [fed.carrier_keys["cmcc"]])
    refused(fed, garbage, InvalidArgument, "MALFORMED_BATCH")


def test_event_rules_when_built() -> None:
    with pytest.raises(InvalidArgument):
        LifecycleEvent.new(N, EventKind.PENDING_RELEASE, NOW)  # needs as_of
    with pytest.raises(InvalidArgument):
        LifecycleEvent.new(N, EventKind.REASSIGNED, NOW)  # needs tenure_start
    with pytest.raises(InvalidArgument):
        LifecycleEvent.new(N, EventKind.DEACTIVATED, NOW, as_of=NOW)
    with pytest.raises(InvalidArgument):
        LifecycleEvent.new("13912345678", EventKind.DEACTIVATED, NOW)
