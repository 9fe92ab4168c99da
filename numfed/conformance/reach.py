"""The kit's first step against any member: can it be reached as the federation reaches it?

Before any rule is checked the kit connects as the gateway, pinning the member's identity, and
asks its health service (any gRPC answer will do, even UNIMPLEMENTED: it proves the TLS handshake
and the member's certificate). It then tries a caller without a client certificate, which the
member must turn away in the handshake. A member that fails here fails every other check for the
same reason, so the kit reports this one line and stops.

:func:`probe_keepalive` checks what every connection from the gateway needs as well: that the
member lets it ping a quiet connection as often as any member may (rules PLAT-OPS-7, CARR-OPS-7).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.config import MIN_KEEPALIVE_TIME, Limits
from numfed.conformance.report import CheckFailed
from numfed.identity import PeerId

__all__ = ["KEEPALIVE_PING_INTERVAL", "probe_keepalive", "probe_target"]

PROBE_TIMEOUT = 5.0
KEEPALIVE_PING_INTERVAL = MIN_KEEPALIVE_TIME / 2
"""Seconds between the pings every member must accept on a quiet connection: a client may ping
every ``limits.keepalive_time`` (at least ``MIN_KEEPALIVE_TIME``), and numfed's servers accept
twice as often (``numfed.rpc.server_options``)."""
QUIET = 5.0
"""Seconds :func:`probe_keepalive` keeps its connections quiet: a server on grpc's default ping
policy sends GOAWAY ``too_many_pings`` at the fourth early ping, about 2 s in, later on a busy
machine."""
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


async def probe_keepalive(target: str, pki_dir: Path, member: PeerId) -> str:
    """Ping ``member`` every :data:`KEEPALIVE_PING_INTERVAL` seconds, as the gateway, on two
    connections at once: one with no call open, one whose only call is a quiet health
    ``Watch``. Both must stay up, and the stream open (rules PLAT-OPS-7 / CARR-OPS-7). A server
    that counts such pings as abuse answers GOAWAY ``too_many_pings``: the channel leaves READY
    and the stream ends."""
    every = f"pings every {KEEPALIVE_PING_INTERVAL:g} s"
    tasks = [
        asyncio.ensure_future(_pinged(target, pki_dir, member, every, watch=w))
        for w in (False, True)
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:  # the other one, when one failed (or the check was cancelled)
            t.cancel()
        await asyncio.wait(tasks)
    for t in tasks:
        failure = None if t.cancelled() else t.exception()
        if failure is not None:
            raise failure
    idle, watched = (t.result() for t in tasks)
    return f"{every}: {idle} with no call open; {watched}"


async def _pinged(target: str, pki_dir: Path, member: PeerId, every: str, *, watch: bool) -> str:
    """One connection pinged every :data:`KEEPALIVE_PING_INTERVAL` seconds for :data:`QUIET`
    seconds: with no call open, or (``watch``) with a health Watch open."""
    eager = Limits(keepalive_time=KEEPALIVE_PING_INTERVAL, keepalive_timeout=PROBE_TIMEOUT)
    layout = pki.PkiLayout(pki_dir)
    channel = pki.secure_channel(target, layout, pki.GATEWAY, server=member, limits=eager)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSPORT:
                raise CheckFailed(f"cannot reach {member.uri}: {exc.details()}") from None
            # Answered all the same (NOT_FOUND, UNIMPLEMENTED): the connection is up.
            if watch and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return "no health service to watch"
        if not watch:
            before = channel.get_state()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(QUIET):
                    await channel.wait_for_state_change(before)
                raise CheckFailed(
                    f"with no call open and {every}, the connection went from {before.name} "
                    f"to {channel.get_state().name} (GOAWAY too_many_pings?)"
                )
            return "the connection stayed up"
        call = health.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            await _stays_open(call, every)
        finally:
            call.cancel()
        return "a quiet health Watch stayed open"
    finally:
        await channel.close()


async def _stays_open(watch: Any, every: str) -> None:
    """Read ``watch`` for :data:`QUIET` seconds after its first answer: it must stay open. A read
    is never cancelled while the stream is judged (grpc would end the call with it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + PROBE_TIMEOUT  # for the first answer, then QUIET seconds of quiet
    first = True
    while (left := end - loop.time()) > 0:
        read = asyncio.ensure_future(watch.read())
        done, _ = await asyncio.wait([read], timeout=left)
        if not done:
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await read
            break
        try:
            answer = read.result()
        except grpc.aio.AioRpcError as exc:
            raise CheckFailed(
                f"a quiet health Watch with {every} ended {exc.code().name}: {exc.details()}"
            ) from None
        if answer is grpc.aio.EOF:
            raise CheckFailed(f"a quiet health Watch with {every} was ended by the server")
        if first:
            first, end = False, loop.time() + QUIET
    if first:
        raise CheckFailed("the health Watch sent no first answer")
