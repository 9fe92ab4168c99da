"""Names and ids are matched whole: a trailing newline or another script's digits is refused.

``re.match(r"^x$")`` accepts ``"x\\n"``; these send such variants through a real gateway (mTLS,
port 0, its SQLite file) and expect INVALID_ARGUMENT with one reason and no change.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from numfed import pki
from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE, Purpose, TenureClaim
from numfed.envelope import sign
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.test_gateway_bad_input import (
    CMCC,
    CMCC_NUMBER,
    Fed,
    X,
    claim,
    fed,
    layout,
    refused,
    release,
)

__all__ = ["fed", "layout"]  # fixtures, imported for pytest

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("request_id", ["abc\n", "abc\r\n", "\nabc", "r١٢٣", "ab c", "r" * 65])
async def test_request_id_is_matched_whole(fed: Fed, request_id: str) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(env, request_id)) == (
        INVALID,
        "BAD_REQUEST_ID",
    )


async def test_operation_name_is_matched_whole(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    async with fed.channel(CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        op = await stub.ReleaseBindings(release(env, "whole"), timeout=5)
        assert (await stub.GetOperation(gateway_pb2.GetOperationRequest(name=op.name))).name
    for name in (op.name + "\n", " " + op.name, op.name.upper(), op.name + "0"):
        request = gateway_pb2.GetOperationRequest(name=name)
        assert await refused(fed, CMCC, "GetOperation", request) == (INVALID, "BAD_OPERATION_NAME")
    # A stream is refused the same way, before it sends anything.
    async with fed.channel(CMCC) as ch:
        stream = gateway_pb2_grpc.GatewayServiceStub(ch).WatchOperation(
            gateway_pb2.WatchOperationRequest(name=op.name + "\n"), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stream.read()
    assert e.value.code() == INVALID


def _claim_naming(fed: Fed, carrier_id: str, purpose: Purpose) -> claim_pb2.Envelope:
    """A claim signed with cmcc's real key whose carrier_id is spelled ``carrier_id``."""
    pb = TenureClaim.new(
        number=CMCC_NUMBER,
        carrier_id="cmcc",
        tenure_start=X,
        purpose=purpose,
        now=datetime.now(UTC),
    ).to_proto()
    pb.carrier_id = carrier_id
    key = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    return sign(TENURE_CLAIM_PAYLOAD_TYPE, pb.SerializeToString(), [key]).to_proto()


@pytest.mark.parametrize("carrier_id", ["cmcc\n", "cmcc\r", "\ncmcc"])
async def test_carrier_id_in_a_claim_is_matched_whole(fed: Fed, carrier_id: str) -> None:
    release_env = _claim_naming(fed, carrier_id, Purpose.RELEASE_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(release_env, "c1")) == (
        INVALID,
        "MALFORMED_CLAIM",
    )
    query_env = _claim_naming(fed, carrier_id, Purpose.QUERY_PRIOR)
    assert await refused(
        fed, CMCC, "QueryBindings", gateway_pb2.QueryBindingsRequest(claim=query_env)
    ) == (INVALID, "MALFORMED_CLAIM")
