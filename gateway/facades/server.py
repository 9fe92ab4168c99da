"""Serving the facades: HTTPS on the gateway's identity, in the gateway's own event loop.

uvicorn serves TLS with the gateway's certificate and verifies any client certificate against
the federation CA (``CERT_OPTIONAL``: a caller without one reaches the app and is answered
401, as CAMARA and SSF expect, instead of a failed handshake; a certificate from any other CA
fails the handshake). uvicorn does not hand the client certificate to the app, so the HTTP
protocol here is uvicorn's h11 protocol with one addition: when a connection is made it reads
the peer certificate from the TLS transport and puts it in every request's scope as the ASGI
TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``). The facades read it there
(:mod:`gateway.facades.edge`) and never trust a header for who is calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from numfed import pki
from numfed.identity import PeerId
from numfed.observability.asgi import TimedRequests

__all__ = ["FacadeHandle", "start_facades", "tls_extension"]

log = logging.getLogger(__name__)

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """The ASGI TLS extension for a connection: the verified client certificate (PEM), if any."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return {"client_cert_chain": [], "tls_version": None, "cipher_suite": None}
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None if cipher is None else cipher[0],
    }


class _ClientCertH11(H11Protocol):
    """uvicorn's h11 protocol, with the connection's TLS facts in each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway stops it with everything else."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: an answer's headers and body leave in two writes, and
    # with Nagle's algorithm the second waits for the client's delayed ACK (40 ms on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@dataclass
class FacadeHandle:
    """Started facades: the bound port and a graceful stop."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    on_stop: Callable[[], Any]

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
        result = self.on_stop()
        if asyncio.iscoroutine(result):
            await result


def bound_url(listen: str, port: int) -> str:
    """``https://host:port`` for a listen address and the port it bound."""
    host = listen.rpartition(":")[0]
    return f"https://{host}:{port}"


async def start_facades(
    listen: str,
    pki_dir: Any,
    identity: PeerId,
    routes: Callable[[int], list[BaseRoute]],
    *,
    max_connections: int = 1024,
    on_stop: Callable[[], Any] = lambda: None,
) -> FacadeHandle:
    """Serve ``routes(port)`` (made once the port is bound, so that URLs can name it) over
    HTTPS as ``identity`` on ``listen`` (port 0 allowed). Returns once it accepts
    connections."""
    layout = pki.PkiLayout(pki_dir)
    sock = _bind(listen)
    port = sock.getsockname()[1]
    served = routes(port)
    app = TimedRequests(Starlette(routes=served), served)

    def context(config: Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = default()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    config = uvicorn.Config(
        app,
        http=_ClientCertH11,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=max_connections,
        ssl_certfile=str(layout.cert_path(identity)),
        ssl_keyfile=str(layout.key_path(identity)),
        ssl_ca_certs=str(layout.ca_path),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        ssl_context_factory=context,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise RuntimeError(f"the facades did not start on {listen}")
        await asyncio.sleep(0.01)
    log.info("standards facades on %s", bound_url(listen, port))
    return FacadeHandle(server, task, port, on_stop)
