"""Server reflection, as a client that knows only reflection uses it: under both names (v1 and
v1alpha), and with the messages that travel inside envelopes (trust.proto's) within reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from numfed import pki
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, start_server
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

WEIBO = PeerId(Role.PLATFORM, "weibo")
NAMES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")


class Servicer(gateway_pb2_grpc.GatewayServiceServicer):
    async def GetTrustBundle(
        self, request: gateway_pb2.GetTrustBundleRequest, context: Any
    ) -> gateway_pb2.GetTrustBundleResponse:
        raise AssertionError("not called")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ServerHandle, Path]]:
    layout = pki.init_pki(tmp_path / "pki", carriers=(), platforms=("weibo",))

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        return "numfed.v1.GatewayService"

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(layout, pki.GATEWAY),
        policy={"/numfed.v1.GatewayService/GetTrustBundle": frozenset({Role.PLATFORM})},
    )
    try:
        yield handle, layout.root
    finally:
        await handle.stop(0)


async def _ask(
    handle: ServerHandle,
    pki_dir: Path,
    service: str,
    request: reflection_pb2.ServerReflectionRequest,
) -> reflection_pb2.ServerReflectionResponse:
    async with pki.secure_channel(f"127.0.0.1:{handle.port}", pki_dir, WEIBO) as ch:
        call = ch.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([request]), timeout=5)
        answer: reflection_pb2.ServerReflectionResponse = await call.read()
        return answer


@pytest.mark.parametrize("service", NAMES)
async def test_reflection_is_served_under_v1_and_v1alpha(
    server: tuple[ServerHandle, Path], service: str
) -> None:
    answer = await _ask(*server, service, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in answer.list_services_response.service}
    assert {"numfed.v1.GatewayService", *NAMES} <= names


@pytest.mark.parametrize("service", NAMES)
async def test_trust_messages_come_with_the_services_files(
    server: tuple[ServerHandle, Path], service: str
) -> None:
    """Describing GatewayService brings trust.proto along, though no RPC names its messages
    (they travel as envelope payloads), so a reflection-only client can read a bundle."""
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="numfed.v1.GatewayService"
    )
    answer = await _ask(*server, service, request)
    files = {
        f.name: f
        for f in (
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answer.file_descriptor_response.file_descriptor_proto
        )
    }
    assert "numfed/v1/gateway.proto" in files
    trust = files["numfed/v1/trust.proto"]
    assert {"RootMetadata", "TrustBundle"} <= {m.name for m in trust.message_type}
    assert "numfed/v1/events.proto" in files and "numfed/v1/claim.proto" in files
    contracts = Path(__file__).parents[2] / "protos" / "numfed" / "v1"
    every = {f"numfed/v1/{p.name}" for p in contracts.glob("*.proto")}
    assert every and every <= set(files), sorted(every - set(files))


async def test_the_v1_service_itself_can_be_described(server: tuple[ServerHandle, Path]) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=NAMES[0])
    answer = await _ask(*server, NAMES[0], request)
    names = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    assert "grpc/reflection/v1/reflection.proto" in names
