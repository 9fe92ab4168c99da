"""Launch day: the page sheds load with "busy, try again in N s" instead of falling over.

The same admission as every numfed gRPC server (:class:`numfed.rpc.Admission`): a few requests
run at once, a few more wait in a short queue for at most ``admission_queue_wait``, and the rest
are answered at once with HTTP 503, a ``Retry-After`` header and a sentence saying when to come
back. So a crowd costs a bounded amount of memory and the requests let in still finish in their
usual time. Live release progress streams (held for minutes) have a class of their own with no
queue, so they never take the room of people entering their number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from numfed.config import Limits
from numfed.errors import ResourceExhausted
from numfed.rpc import Admission, RpcClass

__all__ = ["PAGE", "STREAM", "SecurityHeaders", "ShedLoad", "web_admission"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PAGE = "page"
STREAM = "stream"


def web_admission(limits: Limits) -> Admission:
    """The page's two classes: requests, and release progress streams."""
    return Admission(
        [
            RpcClass(
                PAGE,
                limits.holder_web_concurrency,
                limits.holder_web_queue,
                limits.admission_queue_wait,
            ),
            RpcClass(STREAM, limits.holder_web_streams, 0, 0.0),
        ],
        {PAGE: PAGE, STREAM: STREAM},
    )


class ShedLoad:
    """ASGI middleware: admit a request into its class, or answer 503 with Retry-After."""

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        *,
        classify: Callable[[str], str],
        retry_after: int,
        busy: Callable[[Scope, int], bytes],
    ) -> None:
        self.app = app
        self.admission = admission
        self.classify = classify
        self.retry_after = retry_after
        self.busy = busy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.admission.gate(self.classify(scope["path"]))
        assert gate is not None
        try:
            charged = await gate.enter()
        except ResourceExhausted:
            await self._refuse(scope, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.exit(charged)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = self.busy(scope, self.retry_after)
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(self.retry_after).encode()),
                    (b"x-shed", b"1"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """ASGI middleware: the same strict headers on every answer (see ``guard``)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in self.headers if k not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
