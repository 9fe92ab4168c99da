"""Who is calling a facade, and whether it may: the same checks as the gRPC edge.

The TLS layer (:mod:`gateway.facades.server`) verifies a client certificate against the
federation CA and hands it to the app in the ASGI TLS extension (``scope["extensions"]["tls"]
["client_cert_chain"]``). :meth:`Edge.caller` then asks what ``numfed/rpc.py`` asks of a gRPC
caller, with the gateway's own revocation list and membership (:func:`numfed.rpc.identify`) and
the role policy of the gRPC method the facade stands in for (:data:`gateway.policy.POLICY`),
and admits the call into that method's admission class (:data:`gateway.admission`), so a
platform's calls count against the same bounds whichever protocol it uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Container, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.policy import POLICY
from numfed.errors import Unauthenticated
from numfed.identity import PeerId
from numfed.pki import RevocationList
from numfed.rpc import Admission, identify, require_role

__all__ = ["CHECK_RECYCLED", "PULL_EVENTS", "Edge", "client_certificate", "url_path"]

_SVC = "/numfed.v1.GatewayService/"
CHECK_RECYCLED = _SVC + "CheckRecycled"
PULL_EVENTS = _SVC + "PullEvents"

Scope = MutableMapping[str, Any]


def url_path(base: str) -> str:
    """The path of a public base URL, without a trailing ``/`` (``""`` for none): where the
    facades' routes begin."""
    return urlsplit(base).path.rstrip("/")


def client_certificate(scope: Mapping[str, Any]) -> bytes:
    """The client certificate (PEM) the TLS handshake verified, from the ASGI TLS extension;
    UNAUTHENTICATED ``NO_PEER_IDENTITY`` when the caller presented none."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise Unauthenticated("NO_PEER_IDENTITY", "the caller presented no client certificate")
    first = chain[0]
    return first.encode() if isinstance(first, str) else bytes(first)


@dataclass(frozen=True)
class Edge:
    """The gateway's members, revocation list and admission, as the facades apply them."""

    members: Container[PeerId]
    revocations: RevocationList | None
    admission: Admission

    def caller(self, scope: Mapping[str, Any], method: str) -> PeerId:
        """The caller of a facade standing in for gRPC ``method``: a certificate not revoked
        (``CERTIFICATE_REVOKED``), naming a member (``UNKNOWN_MEMBER``), whose role may call
        ``method`` (``ROLE_NOT_ALLOWED``)."""
        peer = identify(client_certificate(scope), self.members, self.revocations)
        require_role(peer, POLICY.get(method, frozenset()), method)
        return peer

    @contextlib.asynccontextmanager
    async def admitted(self, peer: PeerId, method: str) -> AsyncIterator[None]:
        """Hold a slot of ``method``'s admission class for ``peer`` (or RESOURCE_EXHAUSTED)."""
        gate = self.admission.gate(method)
        if gate is None:
            yield
            return
        charged = await gate.enter(peer.uri)
        try:
            yield
        finally:
            gate.exit(charged)
