"""The trust version hint on the wire: who holds which root and bundle, in gRPC metadata.

The gateway states the versions it holds (``numfed-trust-version: <root>/<bundle>``) in the
initial metadata of every answer it sends (an error's status goes alone, so that channels may
still retry it on another replica), and in the request metadata of every call it makes to a
platform. A member that reads a newer version than it holds refreshes at once instead of at
its next poll, as TUF's timestamp role tells a client cheaply that something is newer. The
value carries no signature: it only ever triggers a fetch, whose answer is verified as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from numfed.trust import VERSION_METADATA_KEY, parse_versions

__all__ = ["VersionHintReader", "versions_in"]

Notice = Callable[[tuple[int, int]], None]
"""Told the (root, bundle) versions a peer holds; must not block."""


def versions_in(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[int, int] | None:
    """The (root, bundle) versions named in ``metadata``, if it names them well-formed."""
    for key, value in metadata or ():
        if key == VERSION_METADATA_KEY:
            return parse_versions(value)
    return None


class VersionHintReader(grpc.aio.UnaryUnaryClientInterceptor):
    """A client interceptor that hands the versions in each answer's initial metadata to
    ``notice`` (a member's channel to the gateway)."""

    def __init__(self, notice: Notice) -> None:
        self._notice = notice

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        hint = versions_in(await call.initial_metadata())
        if hint is not None:
            self._notice(hint)
        return call
