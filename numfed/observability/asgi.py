"""HTTP requests timed like RPCs: an ASGI middleware for numfed's HTTP edges (the holder's page,
the CAMARA and SSF facades).

Each request is observed once in ``http_server_request_duration_seconds`` (OpenTelemetry's
``http.server.request.duration``), from its arrival to the end of its answer, labelled with
the method, the route's template (``/number-recycling/v0.2/check``, ``/{action:path}``; never
the path as sent, so a scan of made-up paths adds no series) and the status code. A request
turned away by load shedding is timed too (503), so a crowd shows as a rising 503 count.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

from numfed.observability import metrics

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = ["HTTP_SERVER_DURATION", "TimedRequests"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTTP_SERVER_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of each HTTP request this process served, from its arrival to the end of its "
    "answer (OpenTelemetry http.server.request.duration), by method, route template and "
    "status code.",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=metrics.LATENCY_BUCKETS,
    registry=metrics.REGISTRY,
)

UNMATCHED = "other"
"""The route label of a request no route matches (a 404)."""


class TimedRequests:
    """ASGI middleware: time each HTTP request into :data:`HTTP_SERVER_DURATION`."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = list(routes)

    def _route(self, scope: Scope) -> str:
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED))
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an app that raises before it answers

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            HTTP_SERVER_DURATION.labels(
                str(scope.get("method", "")), self._route(scope), str(status)
            ).observe(time.perf_counter() - start)
