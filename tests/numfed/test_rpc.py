"""The shared gRPC edge: role policy and error mapping to google.rpc.Status + ErrorInfo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_status import rpc_status

from numfed import pki
from numfed.errors import ERROR_DOMAIN, InvalidArgument, NotFound
from numfed.identity import PeerId, Role
from numfed.rpc import current_peer, rpc_error_info, start_server
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

SVC = "/numfed.v1.GatewayService/"
CARRIER = PeerId(Role.CARRIER, "cmcc")
PLATFORM = PeerId(Role.PLATFORM, "weibo")


class Servicer(gateway_pb2_grpc.GatewayServiceServicer):
    async def GetTrustBundle(
        self, request: gateway_pb2.GetTrustBundleRequest, context: Any
    ) -> gateway_pb2.GetTrustBundleResponse:
        if request.known_root_version == 7:
            raise InvalidArgument("UNKNOWN_ROOT_VERSION", "too new", metadata={"known": "7"})
        # Echo the caller so the test can see the interceptor identified it.
        return gateway_pb2.GetTrustBundleResponse(
            roots=[], bundle=claim_pb2.Envelope(payload_type=current_peer().uri)
        )

    async def WatchOperation(
        self, request: gateway_pb2.WatchOperationRequest, context: Any
    ) -> AsyncIterator[operations_pb2.Operation]:
        yield operations_pb2.Operation(name=request.name)
        raise NotFound("OPERATION_NOT_FOUND", "gone")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("rpc") / "pki"
    pki.init_pki(d, carriers=("cmcc",), platforms=("weibo",))
    yield d


async def _server(pki_dir: Path) -> Any:
    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        return "numfed.v1.GatewayService"

    return await start_server(
        register=[register],
        credentials=pki.server_credentials(pki_dir, pki.GATEWAY),
        policy={
            SVC + "GetTrustBundle": frozenset({Role.CARRIER}),
            SVC + "WatchOperation": frozenset({Role.CARRIER}),
        },
    )


async def test_allowed_role_reaches_the_handler_with_its_identity(pki_dir: Path) -> None:
    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, CARRIER) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            resp = await stub.GetTrustBundle(gateway_pb2.GetTrustBundleRequest(), timeout=5)
        assert resp.bundle.payload_type == "spiffe://numfed/carrier/cmcc"
    finally:
        await handle.stop(0)


async def test_other_role_is_permission_denied_with_error_info(pki_dir: Path) -> None:
    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, PLATFORM) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetTrustBundle(gateway_pb2.GetTrustBundleRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == "ROLE_NOT_ALLOWED"
        assert info.domain == ERROR_DOMAIN
    finally:
        await handle.stop(0)


async def test_domain_error_maps_to_status_with_one_error_info(pki_dir: Path) -> None:
    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, CARRIER) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetTrustBundle(
                    gateway_pb2.GetTrustBundleRequest(known_root_version=7), timeout=5
                )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(e.value)
        assert status is not None and len(status.details) == 1
        info = rpc_error_info(e.value)
        assert info is not None
        assert (info.reason, dict(info.metadata)) == ("UNKNOWN_ROOT_VERSION", {"known": "7"})
    finally:
        await handle.stop(0)


async def test_streaming_error_after_first_message(pki_dir: Path) -> None:
    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, CARRIER) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            call = stub.WatchOperation(gateway_pb2.WatchOperationRequest(name="x"), timeout=5)
            first = await call.read()
            assert isinstance(first, operations_pb2.Operation) and first.name == "x"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == "OPERATION_NOT_FOUND"
    finally:
        await handle.stop(0)


async def test_unlisted_method_is_denied_to_everyone(pki_dir: Path) -> None:
    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, CARRIER) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetOperation(gateway_pb2.GetOperationRequest(name="x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await handle.stop(0)


async def test_health_and_reflection_are_served(pki_dir: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    handle = await _server(pki_dir)
    try:
        async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, PLATFORM) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="numfed.v1.GatewayService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            answer = await stream.read()
        names = {s.name for s in answer.list_services_response.service}
        assert "numfed.v1.GatewayService" in names and "grpc.health.v1.Health" in names
    finally:
        await handle.stop(0)
