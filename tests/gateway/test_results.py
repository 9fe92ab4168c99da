"""Which platform answers a release retries and a query shows UNAVAILABLE: failures of the call,
and refusals that may be the platform's own staleness (numfed/staleness.py), never verdicts."""

from __future__ import annotations

from gateway.results import result_from_item, retryable
from numfed.errors import (
    InvalidArgument,
    NumfedError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from numfed.rpc import error_status
from numfed.v1 import gateway_pb2

Outcome = gateway_pb2.PlatformOutcome
UNAVAILABLE, REFUSED = Outcome.PLATFORM_OUTCOME_UNAVAILABLE, Outcome.PLATFORM_OUTCOME_REFUSED

ANSWERS: list[tuple[NumfedError, gateway_pb2.PlatformOutcome.ValueType]] = [
    # The platform may be behind: retried, shown UNAVAILABLE with its reason.
    (Unauthenticated("UNKNOWN_KEY", "the key may be in a newer bundle"), UNAVAILABLE),
    (Unauthenticated("NO_TRUST_BUNDLE", "no bundle yet"), UNAVAILABLE),
    (Unauthenticated("BUNDLE_EXPIRED", "a newer one may exist"), UNAVAILABLE),
    (Unauthenticated("KEY_OUT_OF_WINDOW", "a newer bundle may renew the window"), UNAVAILABLE),
    (PermissionDenied("NUMBER_NOT_SERVED", "a port not applied yet"), UNAVAILABLE),
    (PermissionDenied("NUMBER_NOT_IN_PLAN", "a range of a newer plan"), UNAVAILABLE),
    (Unavailable("PLATFORM_OUTAGE", "down"), UNAVAILABLE),
    # Verdicts no newer bundle or log changes: final.
    (Unauthenticated("KEY_REVOKED", "revocation is final"), REFUSED),
    (Unauthenticated("BAD_SIGNATURE", "forged"), REFUSED),
    (PermissionDenied("CARRIER_KEY_MISMATCH", "another carrier's key"), REFUSED),
    (PermissionDenied("KEY_OUT_OF_SCOPE", "a wider scope is a new key"), REFUSED),
    (InvalidArgument("WRONG_PURPOSE", "not a query claim"), REFUSED),
]


def test_only_a_refusal_that_may_be_staleness_is_retried_and_shown_unavailable() -> None:
    got = {}
    for err, _expected in ANSWERS:
        status = error_status(err)
        r = result_from_item("weibo", status, [], attempts=2, at_us=1)
        assert r.status == status and r.attempts == 2  # the platform's own reason is kept
        assert retryable(status) == (r.outcome == UNAVAILABLE)
        got[err.reason] = r.outcome
    assert got == {err.reason: expected for err, expected in ANSWERS}
