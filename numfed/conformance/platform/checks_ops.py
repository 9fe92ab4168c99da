"""Platform checks: transport, identity and health (``PLAT-OPS``)."""

from __future__ import annotations

import grpc

from numfed.claims import Purpose
from numfed.conformance.platform.kit import CALL_TIMEOUT, PLATFORM_SUITE, PlatformKit
from numfed.conformance.reach import probe_keepalive, probe_target
from numfed.conformance.report import CheckFailed
from numfed.identity import PeerId, Role
from numfed.v1 import conformance_pb2, conformance_pb2_grpc, platform_pb2, platform_pb2_grpc

check = PLATFORM_SUITE.check


@check(
    "target_reachable",
    "The platform answers the gateway's mTLS identity at the target with a certificate that "
    "names it, and turns a caller without a client certificate away in the TLS handshake.",
    "Every other check reaches the platform this way; if this fails, they all would.",
    rules=("PLAT-OPS-3", "PLAT-OPS-4"),
    gate=True,
)
async def target_reachable(kit: PlatformKit) -> str:
    return await probe_target(kit.t.target, kit.t.pki_dir, kit.server)


@check(
    "gateway_only",
    "PlatformService answers only the gateway's mTLS identity; any other member gets "
    "PERMISSION_DENIED (and so does the conformance service).",
    "A carrier or another platform calling a platform directly would bypass the gateway's "
    "authority checks and audit log.",
    rules=("PLAT-OPS-2",),
)
async def gateway_only(kit: PlatformKit) -> str:
    me = PeerId(Role.PLATFORM, kit.t.platform_id)
    s = await kit.seed(at=False, after=False)
    channel = kit.channel(me, kit.server)
    try:
        await platform_pb2_grpc.PlatformServiceStub(channel).BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(
                items=[
                    platform_pb2.QueryItem(
                        item_id="i", claim=kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
                    )
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.PERMISSION_DENIED:
            raise CheckFailed(f"{me.uri} got {exc.code().name}, not PERMISSION_DENIED") from None
    else:
        raise CheckFailed(f"{me.uri} was answered BatchQueryBindings")
    try:
        await conformance_pb2_grpc.PlatformConformanceServiceStub(channel).ReadAccounts(
            conformance_pb2.ReadAccountsRequest(account_ids=[s.accounts["before"]]),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.PERMISSION_DENIED:
            raise CheckFailed(
                f"conformance service: {exc.code().name}, not PERMISSION_DENIED"
            ) from None
    else:
        raise CheckFailed(f"{me.uri} was answered by the conformance service")
    return f"{me.uri} refused on both services"


@check(
    "keepalive_pings_accepted",
    "Keepalive pings every 0.5 s are accepted on a connection with no call open and on one "
    "whose only call is a quiet health Watch: the connection stays up, the stream open.",
    "The gateway pings quiet connections to notice a frozen platform; a platform that answers "
    "GOAWAY too_many_pings ends the gateway's calls to it and its health watch.",
    rules=("PLAT-OPS-7",),
)
async def keepalive_pings_accepted(kit: PlatformKit) -> str:
    return await probe_keepalive(kit.t.target, kit.t.pki_dir, kit.server)


@check(
    "health_follows_trust",
    "The health service reports numfed.v1.PlatformService NOT_SERVING while the platform holds "
    "no verified trust bundle and SERVING once it holds one.",
    "The gateway sends a platform traffic only while it reports SERVING: a platform that cannot "
    "verify anything must not be sent claims it would refuse.",
    rules=("PLAT-OPS-1",),
)
async def health_follows_trust(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        await kit.wait_serving("SERVING", what="holding the kit's bundle")
        await kit.conformance.ResetTrust(conformance_pb2.ResetTrustRequest(), timeout=CALL_TIMEOUT)
        await kit.wait_serving("NOT_SERVING", what="after ResetTrust (no bundle held)")
        assert kit.base is not None
        await kit.take(kit.base, what="the kit's base bundle")
        await kit.wait_serving("SERVING", what="once the bundle is taken again")
    return "NOT_SERVING without a bundle, SERVING with one"
