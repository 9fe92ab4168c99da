"""A recording GatewayService over real mTLS, standing in for the gateway in adapter tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf.message import Message

from numfed import pki
from numfed.errors import NotFound, NumfedError
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, current_peer, start_server
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE = "numfed.v1.GatewayService"
Unimplemented = NotFound("NOT_IN_THIS_FAKE", "the fake gateway does not serve this method")
METHODS = ("QueryBindings", "ReleaseBindings", "GetOperation", "WatchOperation")


@dataclass(frozen=True)
class Call:
    method: str
    request: Message
    peer: PeerId
    time_remaining: float | None


@dataclass
class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    calls: list[Call] = field(default_factory=list)
    fail_with: NumfedError | None = None
    results: list[gateway_pb2.PlatformResult] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """While set to an unset event, QueryBindings waits for it (a slow federation)."""
    held: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    """One item per QueryBindings call that began waiting on ``hold``."""
    bare: tuple[grpc.StatusCode, str] | None = None
    """While set, QueryBindings ends with this code and details and nothing else: no
    google.rpc.Status, as gRPC's own refusals and dropped calls reach a client (the cap's
    RESOURCE_EXHAUSTED, a CANCELLED stream)."""

    def _record(
        self, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.calls.append(Call(method, request, current_peer(), context.time_remaining()))
        if self.fail_with is not None:
            raise self.fail_with

    def of(self, method: str) -> list[Any]:
        return [c.request for c in self.calls if c.method == method]

    async def QueryBindings(
        self,
        request: gateway_pb2.QueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.QueryBindingsResponse:
        self._record("QueryBindings", request, context)
        if self.bare is not None:
            await context.abort(*self.bare)
        if self.hold is not None:
            self.held.put_nowait(None)
            await self.hold.wait()
        return gateway_pb2.QueryBindingsResponse(results=self.results)

    async def ReleaseBindings(
        self,
        request: gateway_pb2.ReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operations_pb2.Operation:
        self._record("ReleaseBindings", request, context)
        job = hashlib.sha256(request.request_id.encode()).hexdigest()[:32]
        return operations_pb2.Operation(name=f"operations/{job}")

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        raise Unimplemented

    async def GetOperation(
        self,
        request: gateway_pb2.GetOperationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operations_pb2.Operation:
        raise Unimplemented

    async def CheckRecycled(
        self,
        request: gateway_pb2.CheckRecycledRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.CheckRecycledResponse:
        raise Unimplemented

    async def WatchOperation(
        self,
        request: gateway_pb2.WatchOperationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[operations_pb2.Operation]:
        self._record("WatchOperation", request, context)
        yield operations_pb2.Operation(name=request.name)
        yield operations_pb2.Operation(name=request.name, done=True)


async def start_fake_gateway(pki_dir: Path) -> tuple[FakeGateway, ServerHandle]:
    fake = FakeGateway()  # type: ignore[abstract]  # event RPCs answer UNIMPLEMENTED here

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
        return SERVICE

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(pki_dir, pki.GATEWAY),
        policy={f"/{SERVICE}/{m}": frozenset({Role.CARRIER}) for m in METHODS},
        bind="127.0.0.1:0",
    )
    return fake, handle
