"""No signed object's own word about time is trusted alone (numfed.timecheck).

Every time inside a claim, a recycled answer, an event batch and each of its events, a trust
bundle and a holder proof is compared with the verifier's clock, with the clock skew and claim
lifetime the signed bundle publishes. One named test per way of lying about time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from numfed import pki
from numfed.claims import (
    ClaimPolicy,
    Purpose,
    RecycledClaim,
    TenureClaim,
    sign_claim,
    verify_recycled_claim,
    verify_tenure_claim,
)
from numfed.envelope import Envelope, sign
from numfed.errors import InvalidArgument, NumfedError, Unauthenticated
from numfed.events import EventKind, LifecycleEvent, sign_event_batch, verify_event_batch
from numfed.federation import write_trust
from numfed.proof import encode_proof, verify_proof
from numfed.timecheck import LOG_KEY_GRACE
from numfed.trust import BUNDLE_PAYLOAD_TYPE, TrustBundle, TrustedState, sign_bundle
from numfed.trustfiles import load_trusted_state, read_bundle
from numfed.v1 import trust_pb2
from platform_stubs.sdk import platform_policy
from tests.helpers.federation import NOW, PREFIXES, Federation, carrier_entry, make_federation

N = "+8613912345678"
X = NOW - timedelta(days=400)
DAY = timedelta(days=1)


@pytest.fixture
def fed() -> Federation:
    return make_federation()


def with_cmcc_window(fed: Federation, not_before: datetime, not_after: datetime) -> TrustedState:
    """The federation's trust, with cmcc's key valid only from ``not_before`` to ``not_after``."""
    key = fed.carrier_keys["cmcc"]
    keys = dict(fed.bundle.carrier_keys)
    keys[key.key_id] = carrier_entry(
        key, "cmcc", PREFIXES["cmcc"], not_before=not_before, not_after=not_after
    )
    return state_with(fed, fed.next_bundle(carrier_keys=keys))


def state_with(fed: Federation, bundle: TrustBundle) -> TrustedState:
    s = fed.state()
    s.update_bundle(sign_bundle(bundle, fed.root_keys[:2]), now=NOW)
    return s


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(NumfedError) as e:
        call()
    return e.value.reason


def batch(fed: Federation, *events: LifecycleEvent, signed_at: datetime = NOW) -> Envelope:
    return sign_event_batch("cmcc", events, fed.carrier_keys["cmcc"], now=signed_at)


def deactivated(at: datetime = NOW - timedelta(minutes=1)) -> LifecycleEvent:
    return LifecycleEvent.new(N, EventKind.DEACTIVATED, at)


# -- event batches ------------------------------------------------------------------------------


def test_a_batch_backdated_into_a_key_window_that_closed_100_days_ago_is_refused(
    fed: Federation,
) -> None:
    trust = with_cmcc_window(fed, NOW - 465 * DAY, NOW - 100 * DAY)
    env = batch(fed, deactivated(NOW - 102 * DAY), signed_at=NOW - 101 * DAY)
    # The gateway takes only fresh batches; a platform reading the log allows a closed window
    # LOG_KEY_GRACE, not 100 days.
    assert reason_of(lambda: verify_event_batch(env, trust, now=NOW)) == "TOO_OLD"
    assert (
        reason_of(lambda: verify_event_batch(env, trust, now=NOW, from_log=True))
        == "KEY_OUT_OF_WINDOW"
    )


def test_a_batch_dated_300_days_in_the_future_is_refused(fed: Federation) -> None:
    env = batch(fed, deactivated(), signed_at=NOW + 300 * DAY)
    for from_log in (False, True):
        with pytest.raises(Unauthenticated) as e:
            verify_event_batch(env, fed.state(), now=NOW, from_log=from_log)
        assert e.value.reason == "ISSUED_IN_FUTURE"
    within_skew = batch(fed, deactivated(NOW), signed_at=NOW + timedelta(seconds=50))
    assert verify_event_batch(within_skew, fed.state(), now=NOW).carrier_id == "cmcc"


def test_the_gateway_takes_a_batch_signed_within_the_claim_lifetime_only(
    fed: Federation,
) -> None:
    fresh = batch(fed, deactivated(NOW - DAY), signed_at=NOW - timedelta(minutes=29))
    assert verify_event_batch(fresh, fed.state(), now=NOW).events
    stale = batch(fed, deactivated(NOW - DAY), signed_at=NOW - timedelta(minutes=32))
    assert reason_of(lambda: verify_event_batch(stale, fed.state(), now=NOW)) == "TOO_OLD"


def test_a_platform_that_was_away_still_takes_old_batches_from_the_log(fed: Federation) -> None:
    """At-least-once: a batch the gateway logged days ago is applied when it finally arrives,
    also when the key that signed it has been retired since, within LOG_KEY_GRACE."""
    old = batch(fed, deactivated(NOW - 3 * DAY), signed_at=NOW - 3 * DAY)
    assert verify_event_batch(old, fed.state(), now=NOW, from_log=True).events
    retired = with_cmcc_window(fed, NOW - 365 * DAY, NOW - 10 * DAY)
    signed_in_window = batch(fed, deactivated(NOW - 20 * DAY), signed_at=NOW - 20 * DAY)
    got = verify_event_batch(signed_in_window, retired, now=NOW, from_log=True)
    assert got.issued_at == NOW - 20 * DAY
    beyond = with_cmcc_window(fed, NOW - 365 * DAY, NOW - LOG_KEY_GRACE - 2 * DAY)
    signed_then = batch(fed, deactivated(NOW - 40 * DAY), signed_at=NOW - 40 * DAY)
    assert (
        reason_of(lambda: verify_event_batch(signed_then, beyond, now=NOW, from_log=True))
        == "KEY_OUT_OF_WINDOW"
    )


@pytest.mark.parametrize(
    ("field", "event"),
    [
        ("at", LifecycleEvent.new(N, EventKind.DEACTIVATED, NOW + DAY)),
        ("as_of", LifecycleEvent.new(N, EventKind.PENDING_RELEASE, NOW, as_of=NOW + DAY)),
        (
            "tenure_start",
            LifecycleEvent.new(N, EventKind.REASSIGNED, NOW, tenure_start=NOW + 300 * DAY),
        ),
        (
            "at",
            LifecycleEvent.new(
                N, EventKind.PORTED, NOW + DAY, from_carrier="cmcc", to_carrier="cucc"
            ),
        ),
    ],
    ids=["deactivated at", "pending_release as_of", "reassigned tenure_start", "ported at"],
)
def test_an_event_that_has_not_happened_yet_is_refused(
    fed: Federation, field: str, event: LifecycleEvent
) -> None:
    env = batch(fed, deactivated(), event)
    for from_log in (False, True):
        with pytest.raises(InvalidArgument) as e:
            verify_event_batch(env, fed.state(), now=NOW, from_log=from_log)
        assert e.value.reason == "TIME_IN_FUTURE"
        assert e.value.metadata == {"field": field}


def test_an_event_after_the_moment_its_batch_was_signed_is_refused(fed: Federation) -> None:
    """A batch delivered late from the log: the event lies before the platform's now, but after
    the carrier signed the batch, so the carrier foretold it."""
    env = batch(fed, deactivated(NOW - DAY), signed_at=NOW - 2 * DAY)
    with pytest.raises(InvalidArgument) as e:
        verify_event_batch(env, fed.state(), now=NOW, from_log=True)
    assert e.value.reason == "TIME_IN_FUTURE"


def test_batches_are_judged_with_the_skew_the_bundle_publishes(fed: Federation) -> None:
    env = batch(fed, deactivated(NOW), signed_at=NOW + timedelta(minutes=5))
    assert reason_of(lambda: verify_event_batch(env, fed.state(), now=NOW)) == "ISSUED_IN_FUTURE"
    wide = state_with(fed, fed.next_bundle(max_clock_skew=timedelta(minutes=10)))
    assert verify_event_batch(env, wide, now=NOW).carrier_id == "cmcc"


# -- claims, recycled answers, holder proofs ---------------------------------------------------


def tenure(
    purpose: Purpose = Purpose.QUERY_PRIOR,
    *,
    issued_at: datetime = NOW,
    lifetime: timedelta = timedelta(minutes=10),
) -> TenureClaim:
    return TenureClaim.new(
        number=N,
        carrier_id="cmcc",
        tenure_start=X,
        purpose=purpose,
        now=issued_at,
        lifetime=lifetime,
    )


def test_a_live_claim_under_a_key_whose_window_closed_is_refused(fed: Federation) -> None:
    """Signed inside the window, still unexpired: the key's retirement two minutes ago ends it."""
    trust = with_cmcc_window(fed, NOW - 365 * DAY, NOW - timedelta(minutes=2))
    env = sign_claim(
        tenure(issued_at=NOW - timedelta(minutes=3), lifetime=timedelta(minutes=10)),
        fed.carrier_keys["cmcc"],
    )
    with pytest.raises(Unauthenticated) as e:
        verify_tenure_claim(env, trust, now=NOW, purposes=(Purpose.QUERY_PRIOR,))
    assert e.value.reason == "KEY_OUT_OF_WINDOW"


def test_a_holder_proof_backdated_into_a_retired_keys_window_proves_nothing(
    fed: Federation,
) -> None:
    """A leaked retired key signs a 90-day proof dated inside its window, 51 days ago."""
    trust = with_cmcc_window(fed, NOW - 365 * DAY, NOW - 50 * DAY)
    proof = tenure(Purpose.HOLDER_PROOF, issued_at=NOW - 51 * DAY, lifetime=90 * DAY)
    token = encode_proof(sign_claim(proof, fed.carrier_keys["cmcc"]))
    with pytest.raises(Unauthenticated) as e:
        verify_proof(token, trust, now=NOW)
    assert e.value.reason == "KEY_OUT_OF_WINDOW"
    live = with_cmcc_window(fed, NOW - 365 * DAY, NOW + DAY)
    assert verify_proof(token, live, now=NOW).claim == proof


def test_a_claim_issued_in_the_future_is_refused(fed: Federation) -> None:
    env = sign_claim(tenure(issued_at=NOW + timedelta(minutes=2)), fed.carrier_keys["cmcc"])
    with pytest.raises(Unauthenticated) as e:
        verify_tenure_claim(env, fed.state(), now=NOW, purposes=(Purpose.QUERY_PRIOR,))
    assert e.value.reason == "ISSUED_IN_FUTURE"


def test_claims_are_judged_with_the_skew_and_lifetime_the_bundle_publishes(
    fed: Federation,
) -> None:
    ahead = sign_claim(tenure(issued_at=NOW + timedelta(minutes=3)), fed.carrier_keys["cmcc"])
    wide = state_with(fed, fed.next_bundle(max_clock_skew=timedelta(minutes=5)))
    assert verify_tenure_claim(ahead, wide, now=NOW, purposes=(Purpose.QUERY_PRIOR,))
    long = sign_claim(tenure(lifetime=timedelta(minutes=20)), fed.carrier_keys["cmcc"])
    assert verify_tenure_claim(long, fed.state(), now=NOW, purposes=(Purpose.QUERY_PRIOR,))
    short = state_with(fed, fed.next_bundle(max_claim_lifetime=timedelta(minutes=15)))
    with pytest.raises(InvalidArgument) as e:
        verify_tenure_claim(long, short, now=NOW, purposes=(Purpose.QUERY_PRIOR,))
    assert e.value.reason == "CLAIM_LIFETIME_TOO_LONG"


def test_the_platform_policy_is_the_bundles_with_the_release_grace(fed: Federation) -> None:
    short = state_with(
        fed,
        fed.next_bundle(
            max_claim_lifetime=timedelta(minutes=15), max_clock_skew=timedelta(seconds=5)
        ),
    )
    policy = platform_policy(short)
    assert (policy.max_lifetime, policy.max_skew) == (timedelta(minutes=15), timedelta(seconds=5))
    assert policy.release_grace == timedelta(hours=1)
    assert ClaimPolicy.from_bundle(None) == ClaimPolicy()


def recycled(
    *, since: datetime, issued_at: datetime = NOW, specified_day: datetime | None = None
) -> RecycledClaim:
    return RecycledClaim(
        number=N,
        carrier_id="cmcc",
        since=since,
        changed=True,
        platform_id="weibo",
        issued_at=issued_at,
        expires_at=issued_at + timedelta(minutes=10),
        specified_date=(specified_day or since).date(),
    )


def test_a_recycled_answer_about_a_moment_to_come_is_refused(fed: Federation) -> None:
    env = sign_claim(recycled(since=NOW + 30 * DAY), fed.carrier_keys["cmcc"])
    with pytest.raises(InvalidArgument) as e:
        verify_recycled_claim(env, fed.state(), now=NOW, audience="weibo")
    assert (e.value.reason, e.value.metadata) == ("TIME_IN_FUTURE", {"field": "since"})
    ok = sign_claim(recycled(since=NOW - DAY), fed.carrier_keys["cmcc"])
    assert verify_recycled_claim(ok, fed.state(), now=NOW, audience="weibo").claim.changed


def test_a_recycled_answer_issued_in_the_future_is_refused(fed: Federation) -> None:
    future = NOW + 300 * DAY
    env = sign_claim(recycled(since=future, issued_at=future), fed.carrier_keys["cmcc"])
    with pytest.raises(Unauthenticated) as e:
        verify_recycled_claim(env, fed.state(), now=NOW, audience="weibo")
    assert e.value.reason == "ISSUED_IN_FUTURE"


# -- trust bundles ------------------------------------------------------------------------------


def test_a_bundle_issued_in_the_future_is_refused(fed: Federation) -> None:
    ahead = fed.next_bundle(issued_at=NOW + DAY, expires_at=NOW + 30 * DAY)
    s = fed.state()
    with pytest.raises(Unauthenticated) as e:
        s.update_bundle(sign_bundle(ahead, fed.root_keys[:2]), now=NOW)
    assert e.value.reason == "ISSUED_IN_FUTURE"
    assert s.bundle is not None and s.bundle.version == 1
    within = fed.next_bundle(issued_at=NOW + timedelta(seconds=30))
    s.update_bundle(sign_bundle(within, fed.root_keys[:2]), now=NOW)
    assert s.bundle is not None and s.bundle.version == 2


def test_the_bundle_carries_skew_and_lifetime_and_defaults_them(fed: Federation) -> None:
    bundle = fed.next_bundle(
        max_clock_skew=timedelta(seconds=20), max_claim_lifetime=timedelta(minutes=12)
    )
    pb = bundle.to_proto()
    assert pb.max_clock_skew.ToTimedelta() == timedelta(seconds=20)
    assert pb.max_claim_lifetime.ToTimedelta() == timedelta(minutes=12)
    assert TrustBundle.from_proto(pb) == bundle
    pb.ClearField("max_clock_skew")
    pb.ClearField("max_claim_lifetime")
    absent = TrustBundle.from_proto(pb)
    assert (absent.max_clock_skew, absent.max_claim_lifetime) == (
        timedelta(seconds=60),
        timedelta(minutes=30),
    )


@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("max_clock_skew", -1, 0),
        ("max_clock_skew", 0, -5),
        ("max_clock_skew", 3601, 0),
        ("max_clock_skew", 10**15, 0),
        ("max_claim_lifetime", 0, 0),
        ("max_claim_lifetime", 86401, 0),
    ],
)
def test_a_signed_bundle_with_skew_or_lifetime_out_of_bounds_is_malformed(
    fed: Federation, field: str, seconds: int, nanos: int
) -> None:
    pb = fed.next_bundle().to_proto()
    getattr(pb, field).CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    env = sign(BUNDLE_PAYLOAD_TYPE, pb.SerializeToString(deterministic=True), fed.root_keys[:2])
    s = fed.state()
    with pytest.raises(InvalidArgument) as e:
        s.update_bundle(env, now=NOW)
    assert e.value.reason == "MALFORMED_BUNDLE"
    assert s.bundle is not None and s.bundle.version == 1


def test_bundle_proto_fields_are_the_agreed_numbers() -> None:
    fields = trust_pb2.TrustBundle.DESCRIPTOR.fields_by_name
    assert fields["max_clock_skew"].number == 7
    assert fields["max_claim_lifetime"].number == 8


def test_write_trust_publishes_skew_and_lifetime(tmp_path: Path) -> None:
    pki.init_pki(tmp_path / "pki", carriers=("cmcc",), platforms=())
    write_trust(tmp_path / "pki", tmp_path / "trust", now=NOW, carriers=("cmcc",))
    pb = trust_pb2.TrustBundle.FromString(read_bundle(tmp_path / "trust").payload)
    assert pb.HasField("max_clock_skew") and pb.HasField("max_claim_lifetime")
    assert pb.max_clock_skew.ToTimedelta() == timedelta(seconds=60)
    assert pb.max_claim_lifetime.ToTimedelta() == timedelta(minutes=30)
    write_trust(
        tmp_path / "pki",
        tmp_path / "trust",
        now=NOW,
        carriers=("cmcc",),
        max_clock_skew=timedelta(seconds=5),
        max_claim_lifetime=timedelta(minutes=2),
    )
    state = load_trusted_state(tmp_path / "trust", now=NOW)
    assert ClaimPolicy.from_bundle(state.bundle) == ClaimPolicy(
        max_lifetime=timedelta(minutes=2), max_skew=timedelta(seconds=5)
    )
