"""Calling the gateway as any peer, and waiting for what a member sees to change."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from numfed import pki
from numfed.identity import PeerId
from numfed.rpc import rpc_error_info
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["eventually", "outcome", "without_member"]


async def outcome(
    target: str,
    pki_dir: Path,
    peer: PeerId,
    method: str,
    request: Message | None = None,
    *,
    stub: Callable[[grpc.aio.Channel], Any] = gateway_pb2_grpc.GatewayServiceStub,
) -> str:
    """Call ``method`` as ``peer``: "OK", or the refusal as "CODE REASON"."""
    if request is None:
        request = gateway_pb2.GetTrustBundleRequest()
    async with pki.secure_channel(target, pki_dir, peer) as ch:
        call = getattr(stub(ch), method)(request, timeout=5)
        try:
            if isinstance(call, grpc.aio.UnaryStreamCall):
                await call.read()
            else:
                await call
        except grpc.aio.AioRpcError as err:
            info = rpc_error_info(err)
            return f"{err.code().name} {info.reason if info else '-'}"
    return "OK"


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Return once ``check()`` (a function or a coroutine function) is true; fail after
    ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


def without_member(text: str, role: str, member_id: str) -> str:
    """A gateway config's text without the ``[[role]]`` entry of ``member_id``."""
    entry = re.compile(
        rf'\n\[\[{role}\]\]\nid = "{member_id}"\nendpoint = "[^"]*"\n(?:events = "[a-z-]+"\n)?'
    )
    new, found = entry.subn("\n", text)
    assert found == 1, f"no [[{role}]] {member_id} in the config"
    return new
