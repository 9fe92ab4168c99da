"""The kit's first step against any member: can it be reached as the federation reaches it?

Before any rule is checked the kit connects as the gateway, pinning the member's identity, and
asks its health service (any gRPC answer will do, even UNIMPLEMENTED: it proves the TLS handshake
and the member's certificate). It then tries a caller without a client certificate, which the
member must turn away in the handshake. A member that fails here fails every other check for the
same reason, so the kit reports this one line and stops.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.conformance.report import CheckFailed
from numfed.identity import PeerId

__all__ = ["probe_target"]

PROBE_TIMEOUT = 5.0
_TRANSPORT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _ask(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError | None:
    """Health.Check on ``channel``; the failed call's error, or None when it was answered."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    finally:
        await channel.close()
    return None


async def probe_target(target: str, pki_dir: Path, member: PeerId) -> str:
    """Reach ``member`` at ``target`` as the gateway (rules PLAT-OPS-3 / CARR-OPS-1), then make
    sure a caller without a client certificate is turned away in the TLS handshake (PLAT-OPS-4 /
    CARR-OPS-2). Raises CheckFailed with one line saying what is wrong."""
    layout = pki.PkiLayout(pki_dir)
    err = await _ask(pki.secure_channel(target, layout, pki.GATEWAY, server=member))
    if err is not None and err.code() in _TRANSPORT:
        anyone = await _ask(pki.secure_channel(target, layout, pki.GATEWAY))
        if anyone is None or anyone.code() not in _TRANSPORT:
            raise CheckFailed(
                f"the server at {target} is not {member.uri}: its certificate names another "
                "member (or none)"
            )
        raise CheckFailed(f"cannot reach {member.uri} at {target}: {err.details()}")
    ca = layout.ca_path.read_bytes()
    anonymous = grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.ssl_target_name_override", pki._dns_name(member))],
    )
    refused = await _ask(anonymous)
    if refused is None or refused.code() is not grpc.StatusCode.UNAVAILABLE:
        got = "answered" if refused is None else f"got {refused.code().name}"
        raise CheckFailed(
            f"a caller without a client certificate completed the TLS handshake ({got}); "
            "the handshake must require one"
        )
    answered = "answered" if err is None else f"answered {err.code().name}"
    return f"{member.uri} {answered} at {target}; a caller without a certificate was turned away"
