"""The edge serves members only and refuses revoked certificates: every method, health and
reflection included, before any handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from numfed import pki
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, SoleGateway, current_peer, rpc_error_info, start_server
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc
from tests.helpers.certs import issue_member

SVC = "/numfed.v1.GatewayService/"
CMCC = PeerId(Role.CARRIER, "cmcc")
WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")


class Servicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def GetTrustBundle(
        self, request: gateway_pb2.GetTrustBundleRequest, context: Any
    ) -> gateway_pb2.GetTrustBundleResponse:
        self.calls.append(current_peer().uri)
        return gateway_pb2.GetTrustBundleResponse(bundle=claim_pb2.Envelope())


@pytest.fixture
def layout(tmp_path: Path) -> pki.PkiLayout:
    return pki.init_pki(tmp_path / "pki", carriers=("cmcc",), platforms=("weibo", "taobao"))


@pytest.fixture
async def server(layout: pki.PkiLayout) -> AsyncIterator[tuple[ServerHandle, Servicer]]:
    servicer = Servicer()  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        return "numfed.v1.GatewayService"

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(layout, pki.GATEWAY),
        policy={SVC + "GetTrustBundle": frozenset({Role.PLATFORM})},
        members=frozenset({WEIBO, TAOBAO, CMCC}),
        revocations=pki.RevocationList(layout, recheck=0),
    )
    try:
        yield handle, servicer
    finally:
        await handle.stop(0)


async def calls(layout: pki.PkiLayout, port: int, peer: PeerId) -> list[tuple[str, str]]:
    """(method, outcome) for a service method, health Check and Watch, and reflection."""
    out: list[tuple[str, str]] = []

    def outcome(err: grpc.aio.AioRpcError | None) -> str:
        if err is None:
            return "OK"
        info = rpc_error_info(err)
        return f"{err.code().name} {info.reason if info else '-'}"

    async with pki.secure_channel(f"127.0.0.1:{port}", layout, peer) as ch:
        attempts: dict[str, Any] = {
            "GetTrustBundle": lambda: gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(), timeout=5
            ),
            "Health.Check": lambda: health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            ),
            "Health.Watch": lambda: (
                health_pb2_grpc.HealthStub(ch)
                .Watch(health_pb2.HealthCheckRequest(), timeout=5)
                .read()
            ),
            "Reflection": lambda: (
                reflection_pb2_grpc.ServerReflectionStub(ch)
                .ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
                .read()
            ),
        }
        for name, attempt in attempts.items():
            try:
                await attempt()
                out.append((name, outcome(None)))
            except grpc.aio.AioRpcError as err:
                out.append((name, outcome(err)))
    return out


def every(result: str) -> list[tuple[str, str]]:
    return [(m, result) for m in ("GetTrustBundle", "Health.Check", "Health.Watch", "Reflection")]


async def test_members_are_served_everything(
    layout: pki.PkiLayout, server: tuple[ServerHandle, Servicer]
) -> None:
    handle, servicer = server
    assert await calls(layout, handle.port, WEIBO) == every("OK")
    assert servicer.calls == [WEIBO.uri]


async def test_a_stranger_from_the_same_ca_is_refused_everything(
    layout: pki.PkiLayout, server: tuple[ServerHandle, Servicer], tmp_path: Path
) -> None:
    handle, servicer = server
    evil = PeerId(Role.PLATFORM, "evil")
    theirs = pki.PkiLayout(issue_member(layout.root, evil, tmp_path / "evil"))
    assert await calls(theirs, handle.port, evil) == every("PERMISSION_DENIED UNKNOWN_MEMBER")
    assert servicer.calls == []


async def test_membership_is_checked_before_the_role(
    layout: pki.PkiLayout, server: tuple[ServerHandle, Servicer], tmp_path: Path
) -> None:
    handle, _ = server
    evil = PeerId(Role.CARRIER, "evil")  # GetTrustBundle is for platforms only here
    theirs = pki.PkiLayout(issue_member(layout.root, evil, tmp_path / "evil"))
    got = dict(await calls(theirs, handle.port, evil))
    assert got["GetTrustBundle"] == "PERMISSION_DENIED UNKNOWN_MEMBER"
    assert dict(await calls(layout, handle.port, CMCC))["GetTrustBundle"] == (
        "PERMISSION_DENIED ROLE_NOT_ALLOWED"
    )


async def test_a_revoked_member_is_refused_everything(
    layout: pki.PkiLayout, server: tuple[ServerHandle, Servicer]
) -> None:
    handle, servicer = server
    assert await calls(layout, handle.port, TAOBAO) == every("OK")
    pki.revoke(layout, TAOBAO)
    assert await calls(layout, handle.port, TAOBAO) == every("UNAUTHENTICATED CERTIFICATE_REVOKED")
    assert await calls(layout, handle.port, WEIBO) == every("OK")
    assert servicer.calls == [TAOBAO.uri, WEIBO.uri]


def test_a_platform_or_carrier_knows_one_gateway_and_leaves_other_roles_to_the_policy() -> None:
    members = SoleGateway(pki.GATEWAY)
    assert pki.GATEWAY in members
    assert PeerId(Role.GATEWAY, "evil") not in members
    assert CMCC in members and WEIBO in members  # refused by the role policy instead
