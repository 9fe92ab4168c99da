"""What the fuzzer found, one named test each (all failed before their fix).

Each request goes through ``live.exercise``, which also checks the answer is precise and that
the refused request changed nothing anywhere in the federation.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from numfed.claims import Purpose
from numfed.identity import PeerId, Role
from numfed.v1 import gateway_pb2
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


def test_the_state_check_sees_an_accepted_release(live: LiveFederation) -> None:
    """The "nothing changed" check can fail: an accepted release shows in the snapshot."""
    before = live.snapshot()
    claim = live.claim(Purpose.RELEASE_PRIOR, number=live.numbers()[9])
    req = gateway_pb2.ReleaseBindingsRequest(request_id="state-check", claim=claim)
    out = live.call(rpc_named("GatewayService", "ReleaseBindings"), CMCC, req.SerializeToString())
    assert out.code == grpc.StatusCode.OK
    live.quiesce()
    assert live.snapshot() != before
