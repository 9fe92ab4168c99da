"""The loopback HTTP endpoint of a numfed process: ``GET /metrics`` (Prometheus) and, on the
gateway, ``GET /status`` (JSON for ``numfed status``).

It runs on the process's own event loop, answers GET only, one request per connection, and
listens on loopback only (``metrics_listen``, like a carrier's ``holder_listen``): the figures
say which members fail and how much work waits, which is the operator's business, not the
network's. Put a Prometheus server (or an authenticating proxy) on the same host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from numfed.config import require_loopback
from numfed.errors import FailedPrecondition
from numfed.observability import metrics

__all__ = ["Handler", "MetricsEndpoint", "require_loopback", "start_endpoint"]

log = logging.getLogger(__name__)

Handler = Callable[[], Awaitable[tuple[str, bytes]]]
"""An answer to GET: (content type, body)."""

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0


@dataclass
class MetricsEndpoint:
    server: asyncio.Server
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.server.wait_closed()


async def _metrics() -> tuple[str, bytes]:
    return metrics.CONTENT_TYPE, await metrics.exposition()


async def start_endpoint(
    listen: str, routes: Mapping[str, Handler] | None = None
) -> MetricsEndpoint:
    """Serve ``/metrics`` and ``routes`` on ``listen`` (loopback; port 0: any free port)."""
    require_loopback(listen, "metrics_listen")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    table: dict[str, Handler] = {"/metrics": _metrics, **(routes or {})}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            handler = table.get(path)
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif handler is None:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            else:
                ctype, body = await handler()
                status = "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except ConnectionError:
            pass
        except Exception:  # never let a scrape take the process down
            log.exception("answering %s failed", listen)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(serve, host, int(port), limit=MAX_REQUEST_BYTES)
    except OSError as exc:
        raise FailedPrecondition(
            "CANNOT_LISTEN", f"cannot listen on {listen} (metrics_listen): {exc.strerror}"
        ) from exc
    bound = server.sockets[0].getsockname()[1]
    endpoint = MetricsEndpoint(server, host, int(bound))
    log.info("metrics listening on http://%s/metrics", endpoint.address)
    return endpoint
