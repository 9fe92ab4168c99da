"""The carrier's servers take ids and page tokens whole: no trailing newline, no stray bytes.

Real servers on port 0 (the holder's channel, and CarrierService over mTLS) with a recording
gateway: a refused request reaches nobody.
"""

from __future__ import annotations

import base64

import grpc
import pytest

from numfed import pki
from numfed.rpc import rpc_error_info
from numfed.v1 import carrier_pb2, carrier_pb2_grpc, holder_pb2, holder_pb2_grpc
from tests.carrier_adapters.conftest import Running
from tests.carrier_adapters.test_holder_service import (
    PORTED,
    channel,
    current_holder,
    refused,
    verified,
)
from tests.integration.holder import PRIOR

__all__ = ["channel"]  # a fixture, imported for pytest

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("request_id", ["r1\n", "r1\r\n", "\nr1", "r١"])
async def test_holder_request_id_is_matched_whole(
    running: Running, channel: grpc.aio.Channel, request_id: str
) -> None:
    app = await verified(running, channel)
    call = app.stub.ReleaseHolderBindings(
        holder_pb2.ReleaseHolderBindingsRequest(
            session_token=app.token, scope=PRIOR, request_id=request_id
        ),
        timeout=5,
    )
    assert await refused(call) == (INVALID, "BAD_REQUEST_ID")
    assert running.gateway.calls == []


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def test_page_tokens_are_taken_only_as_written(running: Running) -> None:
    async with pki.secure_channel(
        f"127.0.0.1:{running.carriers['cmcc'].port}", running.layout.pki_dir, pki.GATEWAY
    ) as ch:
        stub = carrier_pb2_grpc.CarrierServiceStub(ch)
        first = await stub.ListServedNumbers(
            carrier_pb2.ListServedNumbersRequest(page_size=3), timeout=5
        )
        token = first.next_page_token
        assert (
            token
            and (
                await stub.ListServedNumbers(
                    carrier_pb2.ListServedNumbersRequest(page_size=3, page_token=token), timeout=5
                )
            ).numbers
        )
        last = base64.urlsafe_b64decode(token).decode()
        for bad in [
            token + "\n",  # base64 decoding skips characters outside its alphabet
            "\n" + token,
            token[:4] + "!" + token[4:],
            _token(last + "\n"),
            _token("+" + "".join(chr(ord("٠") + int(d)) for d in last[1:])),  # Arabic-Indic
            _token("+８６１３８"),  # fullwidth digits
            _token(last.replace("+", "")),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ListServedNumbers(
                    carrier_pb2.ListServedNumbersRequest(page_size=3, page_token=bad), timeout=5
                )
            info = rpc_error_info(e.value)
            assert (e.value.code(), info.reason if info else None) == (
                INVALID,
                "BAD_PAGE_TOKEN",
            ), repr(bad)


@pytest.mark.parametrize(
    "shape",
    [
        "{body}\n",  # 17 digits and a newline: 18 characters
        "{arabic}",  # the right digits in Arabic-Indic script
        "{fullwidth}",
    ],
)
async def test_id_number_is_ascii_digits_only(
    running: Running, channel: grpc.aio.Channel, shape: str
) -> None:
    holder = current_holder(PORTED)
    body = holder.id_number[:17]
    id_number = shape.format(
        body=body,
        arabic="".join(chr(ord("٠") + int(d)) for d in holder.id_number[:17]) + "0",
        fullwidth="".join(chr(ord("０") + int(d)) for d in holder.id_number[:17]) + "0",
    )
    assert len(id_number) == 18
    verifier = running.carriers["cmcc"].adapter.verifier
    before = verifier.sizes()
    call = holder_pb2_grpc.HolderServiceStub(channel).StartVerification(
        holder_pb2.StartVerificationRequest(number=PORTED, name=holder.name, id_number=id_number),
        timeout=5,
    )
    assert await refused(call) == (INVALID, "MALFORMED_ID_NUMBER")
    assert verifier.sizes() == before  # no code sent, none of the number's tries used
