"""Admission limits hold per caller as well as in total, through a real gateway.

A real gateway (mTLS, port 0, SQLite) and one platform whose answers the test holds back, so
calls keep their admission slots exactly as long as the test wants. One carrier takes its
share of a class and is refused the next call with CALLER_OVERLOADED; another carrier is still
admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config, load_platform_config
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import ok_status, rpc_error_info
from numfed.testing.federation import until_serving
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, platform_pb2
from platform_stubs.reference import PlatformHandle, start_platform
from platform_stubs.sdk import PlatformServicer

X = datetime(2022, 7, 1, 9, tzinfo=UTC)
NUMBERS = {"cmcc": "+8613812345678", "cucc": "+8618611112222"}
CMCC = PeerId(Role.CARRIER, "cmcc")
CUCC = PeerId(Role.CARRIER, "cucc")


class HeldPlatform(PlatformServicer):
    """Answers every query and release only once the test lets it."""

    arrived: asyncio.Queue[str]
    go: asyncio.Event

    async def BatchQueryBindings(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        for _ in request.items:
            self.arrived.put_nowait("query")
        await self.go.wait()
        return platform_pb2.BatchQueryBindingsResponse(
            results=[
                platform_pb2.QueryItemResult(item_id=i.item_id, status=ok_status())
                for i in request.items
            ]
        )

    async def BatchReleaseBindings(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        await self.go.wait()
        raise grpc.aio.AbortError()  # never answered while the test runs


@dataclasses.dataclass
class Running:
    layout: FederationLayout
    gateway: Gateway
    platform: PlatformHandle

    def stub(self, ch: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        return gateway_pb2_grpc.GatewayServiceStub(ch)

    def channel(self, peer: PeerId) -> grpc.aio.Channel:
        return pki.secure_channel(f"127.0.0.1:{self.gateway.port}", self.layout.pki_dir, peer)

    def claim(self, carrier: str, purpose: Purpose) -> Any:
        c = TenureClaim.new(
            number=NUMBERS[carrier],
            carrier_id=carrier,
            tenure_start=X,
            purpose=purpose,
            now=datetime.now(UTC),
        )
        return sign_claim(c, pki.load_carrier_signer(self.layout.pki_dir, carrier)).to_proto()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    layout = create_federation(
        tmp_path / "fed",
        carriers=("cmcc", "cucc"),
        platforms=("weibo",),
        limits={
            # query: 2 at once + 2 queued; half of that (2) per caller. watch: 8, 2 per caller.
            "max_concurrent_queries": 2,
            "max_queued_queries": 2,
            "admission_queue_wait": 10.0,
            "max_watches": 8,
        },
    )
    HeldPlatform.arrived = asyncio.Queue()
    HeldPlatform.go = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:  # stops what started, last first
        platform = await start_platform(
            load_platform_config(layout.platform_configs["weibo"]), servicer_class=HeldPlatform
        )
        stack.push_async_callback(platform.stop, 0)
        config = load_gateway_config(layout.gateway_config)
        assert config.limits.max_watches_per_caller == 2  # a quarter of max_watches
        gw = await Gateway.start(dataclasses.replace(config, listen=layout.gateway_endpoint))
        stack.push_async_callback(gw.stop, 0)
        await until_serving(gw)
        stack.callback(HeldPlatform.go.set)  # held calls go on, so the gateway can stop
        yield Running(layout, gw, platform)


async def first(stream: Any) -> str:
    """The name of the first operation a WatchOperation stream sends."""
    op = await stream.read()
    assert isinstance(op, operations_pb2.Operation), op
    return str(op.name)


def caller_overloaded(exc: grpc.aio.AioRpcError, rpc_class: str) -> bool:
    info = rpc_error_info(exc)
    status = rpc_status.from_call(exc)
    retry = error_details_pb2.RetryInfo()
    has_retry = status is not None and any(d.Unpack(retry) for d in status.details)
    return (
        exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and info is not None
        and info.reason == "CALLER_OVERLOADED"
        and info.metadata["rpc_class"] == rpc_class
        and has_retry
        and retry.retry_delay.ToMilliseconds() > 0
    )


async def test_one_carrier_cannot_take_every_watch_slot(running: Running) -> None:
    async with running.channel(CMCC) as cmcc_ch, running.channel(CUCC) as cucc_ch:
        cmcc, cucc = running.stub(cmcc_ch), running.stub(cucc_ch)
        mine = await cmcc.ReleaseBindings(
            gateway_pb2.ReleaseBindingsRequest(
                request_id="w1", claim=running.claim("cmcc", Purpose.RELEASE_PRIOR)
            ),
            timeout=5,
        )
        theirs = await cucc.ReleaseBindings(
            gateway_pb2.ReleaseBindingsRequest(
                request_id="w1", claim=running.claim("cucc", Purpose.RELEASE_PRIOR)
            ),
            timeout=5,
        )
        streams = []
        for _ in range(2):  # cmcc's share: a quarter of max_watches
            s = cmcc.WatchOperation(gateway_pb2.WatchOperationRequest(name=mine.name), timeout=30)
            assert await first(s) == mine.name  # admitted and streaming
            streams.append(s)
        extra = cmcc.WatchOperation(gateway_pb2.WatchOperationRequest(name=mine.name), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await extra.read()
        assert caller_overloaded(e.value, "watch"), e.value
        # Another carrier still gets a slot while cmcc holds its share ...
        other = cucc.WatchOperation(gateway_pb2.WatchOperationRequest(name=theirs.name), timeout=30)
        assert await first(other) == theirs.name
        # ... and cmcc gets one again once it closes one of its own.
        streams.pop().cancel()
        async with asyncio.timeout(10):
            while True:
                again = cmcc.WatchOperation(
                    gateway_pb2.WatchOperationRequest(name=mine.name), timeout=30
                )
                try:
                    assert await first(again) == mine.name
                    break
                except grpc.aio.AioRpcError as exc:  # the cancel has not reached the gateway
                    assert caller_overloaded(exc, "watch"), exc
                    await asyncio.sleep(0.05)
        for s in [*streams, other, again]:
            s.cancel()


async def test_one_carrier_cannot_fill_a_queued_class(running: Running) -> None:
    async with running.channel(CMCC) as cmcc_ch, running.channel(CUCC) as cucc_ch:
        cmcc, cucc = running.stub(cmcc_ch), running.stub(cucc_ch)

        def query(stub: gateway_pb2_grpc.GatewayServiceAsyncStub, carrier: str) -> Any:
            return stub.QueryBindings(
                gateway_pb2.QueryBindingsRequest(claim=running.claim(carrier, Purpose.QUERY_PRIOR)),
                timeout=20,
            )

        held = [asyncio.ensure_future(query(cmcc, "cmcc")) for _ in range(2)]
        # Both are running: the first claim is at the platform, the second waits for the next
        # batch to it (one call at a time goes out while another is in flight).
        batcher = running.gateway.links["weibo"].queries
        async with asyncio.timeout(10):
            await HeldPlatform.arrived.get()
            while batcher.queued < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # cmcc holds its share (both of the class's running slots); its next call is refused
        # at once, though the class's queue is empty ...
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await query(cmcc, "cmcc")
        assert caller_overloaded(e.value, "query"), e.value
        # ... while cucc's call is admitted to the queue and answered once a slot frees.
        queued = asyncio.ensure_future(query(cucc, "cucc"))
        HeldPlatform.go.set()
        answers = await asyncio.gather(*held, queued)
        assert all(len(a.results) == 1 for a in answers)
        # Nothing is left charged to either caller: cmcc may use its whole share again.
        again = await asyncio.gather(query(cmcc, "cmcc"), query(cmcc, "cmcc"))
        assert all(len(a.results) == 1 for a in again)
