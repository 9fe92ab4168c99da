"""Simulated platforms for the scale curve: many ``PlatformService`` servers in one process.

Each serves its own port with its own mTLS certificate, like a real member, but does none of a
platform's work: a query batch is answered sparsely with nothing found (the common case), a
release batch with each item released, an event delivery acknowledged. Like the bare proxy's
echo backends, they cost the gateway what a platform's answer costs it and no more, so that at
N = 1,000 the two cores measure the gateway, not a thousand claim verifications.

    python -m bench.sim_platforms FEDERATION_DIR PLATFORM...    # prints "ready", then serves
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc

from numfed import pki
from numfed.config import load_platform_config
from numfed.identity import PeerId, Role
from numfed.v1 import platform_pb2, platform_pb2_grpc


class Nothing(platform_pb2_grpc.PlatformServiceServicer):
    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        if request.sparse_answers:
            return platform_pb2.BatchQueryBindingsResponse(sparse=True)
        return platform_pb2.BatchQueryBindingsResponse(
            results=[platform_pb2.QueryItemResult(item_id=i.item_id) for i in request.items]
        )

    async def BatchReleaseBindings(
        self, request: platform_pb2.BatchReleaseBindingsRequest, context: Any
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        return platform_pb2.BatchReleaseBindingsResponse(
            results=[platform_pb2.ReleaseItemResult(item_id=i.item_id) for i in request.items]
        )

    async def DeliverEvents(
        self, request: platform_pb2.DeliverEventsRequest, context: Any
    ) -> platform_pb2.DeliverEventsResponse:
        last = request.batches[-1].seq if request.batches else 0
        return platform_pb2.DeliverEventsResponse(ack_through_seq=last)


async def main(root: Path, platforms: list[str]) -> None:
    servicer = Nothing()
    servers = []
    for p in platforms:
        config = load_platform_config(root / f"platform-{p}.toml")
        server = grpc.aio.server()
        platform_pb2_grpc.add_PlatformServiceServicer_to_server(servicer, server)
        creds = pki.server_credentials(config.pki_dir, PeerId(Role.PLATFORM, p))
        server.add_secure_port(config.listen, creds)
        await server.start()
        servers.append(server)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
