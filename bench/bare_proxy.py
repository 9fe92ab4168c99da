"""The reference for fan-out: a bare grpc.aio forwarding proxy with no logic and no TLS.

``python -m bench.bare_proxy backends N`` serves N echo backends on one process;
``python -m bench.bare_proxy proxy PORT BACKEND_PORTS...`` serves the proxy, which for each
request makes one plain unary call to every backend concurrently and answers when all have.
Both print their ports on the first line of stdout. Both collect garbage as numfed's serving
processes do (``numfed.serving.tune_gc``), so that the gateway's ratio owes nothing to it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from numfed.serving import tune_gc

METHOD = "/bench.Echo/Call"


def _identity(b: bytes) -> bytes:
    return b


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def _handler(fn: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(fn, _identity, _identity)},
    )


async def backends(n: int) -> None:
    servers, ports = [], []
    for _ in range(n):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handler(_echo),))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()


async def proxy(backend_ports: list[int]) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in backend_ports]
    calls = [ch.unary_unary(METHOD, _identity, _identity) for ch in channels]

    async def forward(request: bytes, context: Any) -> bytes:
        await asyncio.gather(*(call(request, timeout=60) for call in calls))
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(forward),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    tune_gc()
    if sys.argv[1] == "backends":
        asyncio.run(backends(int(sys.argv[2])))
    else:
        asyncio.run(proxy([int(p) for p in sys.argv[2:]]))
