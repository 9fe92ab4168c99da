"""Serving the holder's page with uvicorn, inside the carrier adapter's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from carrier_adapters.web.app import CarrierFacts, HolderPage, create_app
from numfed.config import Limits

__all__ = ["WebHandle", "start_holder_web"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the adapter stops it on SIGTERM with the rest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class WebHandle:
    """A started page: its port and a graceful stop."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    page: HolderPage

    async def stop(self, grace: float = 2.0) -> None:
        self.server.config.timeout_graceful_shutdown = max(int(grace), 1)
        self.server.should_exit = True
        try:
            async with asyncio.timeout(grace + 1):
                await asyncio.shield(self.task)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.page.client.close()


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a page's headers and body leave in two writes, and with
    # Nagle's algorithm the second waits for the browser's delayed ACK (40 ms on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def start_holder_web(
    listen: str, holder_target: str, carrier: CarrierFacts, limits: Limits
) -> WebHandle:
    """Serve the page on ``listen`` (loopback; port 0 allowed), calling the HolderService at
    ``holder_target``. Returns once it accepts connections."""
    app, page = create_app(holder_target, carrier, limits)
    sock = _bind(listen)
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,  # page tokens travel in the progress stream's query string
        log_level="warning",
        proxy_headers=True,
        server_header=False,
        date_header=False,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            await page.client.close()
            task.result()  # raises what stopped it
            raise RuntimeError(f"the holder's page did not start on {listen}")
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    log.info("holder's page on http://%s", f"{listen.rpartition(':')[0]}:{port}")
    return WebHandle(server, task, port, page)
