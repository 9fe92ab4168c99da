"""A member process that opens watch streams and then does nothing: the test freezes it.

Run as ``python -m tests.helpers.watcher gateway TARGET PKI_DIR CARRIER OPERATION N`` (N
WatchOperation streams to the gateway as ``spiffe://numfed/carrier/CARRIER``, mTLS with the
federation's PKI) or ``python -m tests.helpers.watcher holder TARGET SESSION_TOKEN OPERATION N``
(N WatchHolderRelease streams to a carrier's holder channel, as the holder's app). It prints
``ready`` once every stream has delivered its first message, then waits forever, its streams
open, until it is stopped (SIGSTOP) or killed. :func:`spawn_watcher` starts it from a test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from numfed import pki
from numfed.identity import PeerId, Role
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, holder_pb2, holder_pb2_grpc

__all__ = ["spawn_watcher"]

_ROOT = Path(__file__).resolve().parents[2]


async def _hold(calls: list[Any]) -> None:
    for call in calls:
        await call.read()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _gateway(target: str, pki_dir: str, carrier: str, operation: str, n: int) -> None:
    peer = PeerId(Role.CARRIER, carrier)
    async with pki.secure_channel(target, Path(pki_dir), peer, server=pki.GATEWAY) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.WatchOperationRequest(name=operation)
        await _hold([stub.WatchOperation(request, timeout=900) for _ in range(n)])


async def _holder(target: str, token: str, operation: str, n: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = holder_pb2_grpc.HolderServiceStub(channel)
        request = holder_pb2.WatchHolderReleaseRequest(session_token=token, name=operation)
        await _hold([stub.WatchHolderRelease(request, timeout=900) for _ in range(n)])


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "gateway":
        target, pki_dir, carrier, operation, n = args
        asyncio.run(_gateway(target, pki_dir, carrier, operation, int(n)))
    elif mode == "holder":
        target, token, operation, n = args
        asyncio.run(_holder(target, token, operation, int(n)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def spawn_watcher(*args: str) -> subprocess.Popen[str]:
    """Start the watcher process with ``args``; read its ``ready`` line before freezing it."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.watcher", *args],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
