"""What the fuzzer found, one named test each (all failed before their fix).

Each request goes through ``live.exercise``, which also checks the answer is precise and that
the refused request changed nothing anywhere in the federation.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from numfed import pki
from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE, Purpose
from numfed.envelope import sign
from numfed.errors import InvalidArgument
from numfed.identity import PeerId, Role
from numfed.timeutil import from_timestamp
from numfed.v1 import claim_pb2, gateway_pb2, holder_pb2, platform_pb2
from tests.fuzz.harness import CARRIER, RPCS, LiveFederation, Outcome, Rpc, rpc_named

CMCC = PeerId(Role.CARRIER, CARRIER)
WEIBO = PeerId(Role.PLATFORM, "weibo")


def reason(out: Outcome) -> tuple[str, str]:
    assert out.status is not None, out
    info = error_details_pb2.ErrorInfo()
    assert out.status.details[0].Unpack(info)
    return out.code.name, info.reason


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.id)
def test_bytes_that_do_not_parse_are_invalid_argument(live: LiveFederation, rpc: Rpc) -> None:
    """gRPC answered a request that does not parse with UNKNOWN (its deserializer raised)."""
    out = live.exercise(rpc, live.allowed_peer(rpc), b"\xff\xff\xff")
    assert reason(out) == ("INVALID_ARGUMENT", "MALFORMED_REQUEST")


def test_a_role_that_is_not_allowed_is_refused_before_parsing(live: LiveFederation) -> None:
    rpc = rpc_named("GatewayService", "ReleaseBindings")
    out = live.exercise(rpc, WEIBO, b"\xff\xff\xff")
    assert reason(out) == ("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-(2**63), 0), (253_402_300_800, 0), (0, -1), (0, 10**9)],
)
def test_timestamp_outside_its_range_is_invalid_argument(seconds: int, nanos: int) -> None:
    """A Timestamp past year 9999 or with bad nanos raised ValueError (UNKNOWN)."""
    with pytest.raises(InvalidArgument) as e:
        from_timestamp(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    assert e.value.reason == "BAD_TIMESTAMP"


def test_recycled_check_since_out_of_range(live: LiveFederation) -> None:
    """The carrier failed with UNKNOWN and the gateway relayed it to the platform as INTERNAL."""
    req = gateway_pb2.CheckRecycledRequest(
        number=live.numbers()[2], since=timestamp_pb2.Timestamp(seconds=-(2**63))
    )
    out = live.exercise(
        rpc_named("GatewayService", "CheckRecycled"), WEIBO, req.SerializeToString()
    )
    assert reason(out) == ("INVALID_ARGUMENT", "BAD_TIMESTAMP")


def test_signed_claim_with_a_timestamp_out_of_range(live: LiveFederation) -> None:
    """A properly signed claim whose tenure_start cannot be a datetime was UNKNOWN."""
    env = live.claim(Purpose.QUERY_PRIOR)
    claim = claim_pb2.TenureClaim.FromString(env.payload)
    claim.tenure_start.seconds = 2**63 - 1
    key = pki.load_carrier_signer(live.pki_dir, CARRIER)
    signed = sign(env.payload_type, claim.SerializeToString(), [key]).to_proto()
    req = gateway_pb2.QueryBindingsRequest(claim=signed)
    out = live.exercise(rpc_named("GatewayService", "QueryBindings"), CMCC, req.SerializeToString())
    assert reason(out) == ("INVALID_ARGUMENT", "MALFORMED_CLAIM")


def test_an_error_quoting_huge_input_still_reaches_the_caller(live: LiveFederation) -> None:
    """The error message quoted a 16 KB number; the trailers outgrew the client's limit and
    the caller got RESOURCE_EXHAUSTED without the status."""
    req = holder_pb2.StartVerificationRequest(number="9" * 20_000, id_number="1" * 18)
    rpc = rpc_named("HolderService", "StartVerification")
    out = live.exercise(rpc, None, req.SerializeToString())
    assert reason(out) == ("INVALID_ARGUMENT", "MALFORMED_NUMBER")
    assert out.status is not None and len(out.status.message) < 1000


def test_a_release_the_gateway_refuses_leaves_the_session_unchanged(
    live: LiveFederation,
) -> None:
    """The carrier kept the signed claim of a refused release in the holder's session."""
    req = holder_pb2.ReleaseHolderBindingsRequest(
        session_token=live.session(),
        scope=holder_pb2.BINDING_SCOPE_PRIOR,
        platform_ids=["myspace"],
        request_id="refused-release",
    )
    rpc = rpc_named("HolderService", "ReleaseHolderBindings")
    out = live.exercise(rpc, None, req.SerializeToString())
    assert reason(out) == ("INVALID_ARGUMENT", "UNKNOWN_PLATFORM")


def test_a_refused_claim_naming_a_number_that_is_not_ascii(live: LiveFederation) -> None:
    """The gateway audits a refused claim under its number's pseudonym, which encoded the
    unverified number as ASCII: UnicodeEncodeError, UNKNOWN."""
    payload = claim_pb2.TenureClaim(number="\x80").SerializeToString()
    env = claim_pb2.Envelope(
        payload=payload,
        payload_type=TENURE_CLAIM_PAYLOAD_TYPE,
        signatures=[claim_pb2.Signature(keyid="x", sig=b"x")],
    )
    req = gateway_pb2.QueryBindingsRequest(claim=env)
    out = live.exercise(rpc_named("GatewayService", "QueryBindings"), CMCC, req.SerializeToString())
    assert reason(out)[0] == "UNAUTHENTICATED"


def test_a_signed_claim_that_expires_in_year_9999(live: LiveFederation) -> None:
    """Checking a claim's expiry added the clock skew to expires_at: OverflowError, UNKNOWN."""
    env = live.claim(Purpose.QUERY_PRIOR)
    claim = claim_pb2.TenureClaim.FromString(env.payload)
    claim.expires_at.seconds = 253_402_300_799  # 9999-12-31T23:59:59Z
    key = pki.load_carrier_signer(live.pki_dir, CARRIER)
    signed = sign(env.payload_type, claim.SerializeToString(), [key]).to_proto()
    req = platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id="a", claim=signed)]
    )
    rpc = rpc_named("PlatformService", "BatchQueryBindings")
    out = live.exercise(rpc, PeerId(Role.GATEWAY, "main"), req.SerializeToString())
    assert out.code == grpc.StatusCode.OK  # the batch is answered; the item is refused
    answer = platform_pb2.BatchQueryBindingsResponse.FromString(out.body)
    assert answer.results[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = error_details_pb2.ErrorInfo()
    assert answer.results[0].status.details[0].Unpack(info)
    assert info.reason == "CLAIM_LIFETIME_TOO_LONG"


def test_the_state_check_sees_an_accepted_release(live: LiveFederation) -> None:
    """The "nothing changed" check can fail: an accepted release shows in the snapshot."""
    before = live.snapshot()
    claim = live.claim(Purpose.RELEASE_PRIOR, number=live.numbers()[9])
    req = gateway_pb2.ReleaseBindingsRequest(request_id="state-check", claim=claim)
    out = live.call(rpc_named("GatewayService", "ReleaseBindings"), CMCC, req.SerializeToString())
    assert out.code == grpc.StatusCode.OK
    live.quiesce()
    assert live.snapshot() != before
