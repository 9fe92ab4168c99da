"""The SSF transmitter's HTTP endpoints: discovery, keys, stream management, verification, poll.

=======================================  ====================================================
``GET /.well-known/ssf-configuration``   transmitter metadata (SSF §7.1)
``GET /ssf/jwks.json``                   the SET signing key (``jwks_uri``)
``GET|POST|PATCH|PUT|DELETE /ssf/stream`` the caller's stream configuration (SSF §8.1.1)
``GET|POST /ssf/status``                 its status (SSF §8.1.2)
``POST /ssf/verify``                     ask for a verification event (SSF §8.1.4)
``POST /ssf/poll``                       poll delivery with acknowledgement (RFC 8936)
=======================================  ====================================================

Every caller is a member identified by its client certificate (:class:`~gateway.facades.edge.
Edge`): discovery and keys for any member, the rest for platforms only, each on its own stream.
Errors are JSON ``{"err", "description", "reason"}``: ``err`` is RFC 8935's error code where
one fits (400 ``invalid_request``, 401 ``authentication_failed``, 403 ``access_denied``),
``reason`` numfed's (AIP-193).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.audit import AuditRecord
from gateway.facades.edge import PULL_EVENTS, Edge, url_path
from gateway.facades.ssf.sets import (
    SetSigner,
    event_set_claims,
    jti_of,
    new_jti,
    verification_claims,
)
from gateway.facades.ssf.store import Polled, StreamStore
from gateway.facades.ssf.streams import POLL, PUSH, Stream, method_of, status_update, stream_update
from gateway.results import now_us
from gateway.store import Store
from numfed.config import Member
from numfed.errors import AlreadyExists, InvalidArgument, NotFound, NumfedError, PermissionDenied
from numfed.identity import PeerId

__all__ = ["SsfTransmitter"]

log = logging.getLogger(__name__)

_SVC = "/numfed.v1.GatewayService/"
GET_TRUST_BUNDLE = _SVC + "GetTrustBundle"
MAX_BODY_BYTES = 64 * 1024
MAX_ACKS = 1000
MAX_EVENTS = 100
"""Most SETs one poll answer carries (a SET holds its whole signed batch)."""
LONG_POLL_SECONDS = 10.0
"""Longest a poll with nothing to return waits for events (unless ``returnImmediately``)."""

_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_ERR = {400: "invalid_request", 401: "authentication_failed", 403: "access_denied"}


def _error(err: NumfedError) -> Response:
    status = _STATUS.get(err.code, 500)
    body: dict[str, Any] = {"description": err.message, "reason": err.reason}
    if status in _ERR:
        body = {"err": _ERR[status], **body}
    headers = {"cache-control": "no-store"}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(math.ceil(err.retry_after), 1))
    return JSONResponse(body, status_code=status, headers=headers)


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _body(request: Request) -> Any:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidArgument("BODY_TOO_LARGE", f"the body is over {MAX_BODY_BYTES} bytes")
    if not raw:
        return {}
    try:
        return json.loads(bytes(raw), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument("MALFORMED_BODY", "the body is not JSON") from exc


Handler = Callable[[Request], Awaitable[Response]]


class SsfTransmitter:
    """The gateway as an SSF transmitter: one stream per platform whose events go by SSF."""

    def __init__(
        self,
        *,
        edge: Edge,
        streams: StreamStore,
        store: Store,
        signer: SetSigner,
        platforms: Callable[[], Mapping[str, Member]],
        audit: Callable[[AuditRecord], None],
        on_stream_change: Callable[[str], None] = lambda _platform: None,
    ) -> None:
        self._edge = edge
        self._streams = streams
        self._store = store
        self.signer = signer
        self._platforms = platforms
        self._audit = audit
        self._on_stream_change = on_stream_change
        self.issuer = ""
        """The issuer (and base URL); set once the facades know where they are served."""
        self._news = asyncio.Event()

    def wake(self) -> None:
        """New events in the log: long polls look again."""
        self._news.set()
        self._news = asyncio.Event()

    # -- routes --------------------------------------------------------------------------------

    def routes(self, issuer: str) -> list[BaseRoute]:
        """The endpoints under the issuer's path; the configuration at the host's root, with
        that path after it (SSF §7.2, as RFC 8414 does)."""
        self.issuer = issuer
        prefix = url_path(issuer)
        well_known = "/.well-known/ssf-configuration" + prefix
        guard, get, post = self._guard, ["GET"], ["POST"]
        return [
            Route(well_known, guard(self.configuration, GET_TRUST_BUNDLE), methods=get),
            Route(prefix + "/ssf/jwks.json", guard(self.jwks, GET_TRUST_BUNDLE), methods=get),
            Route(
                prefix + "/ssf/stream",
                guard(self.stream, PULL_EVENTS),
                methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            ),
            Route(prefix + "/ssf/status", guard(self.status, PULL_EVENTS), methods=get + post),
            Route(prefix + "/ssf/verify", guard(self.verify, PULL_EVENTS), methods=post),
            # A long poll waits without holding an admission slot (PublishEvents shares the
            # class): the poll admits each of its reads of the log itself.
            Route(prefix + "/ssf/poll", guard(self.poll, PULL_EVENTS, admit=False), methods=post),
        ]

    def _guard(
        self,
        handler: Callable[[Request, PeerId], Awaitable[Response]],
        method: str,
        *,
        admit: bool = True,
    ) -> Handler:
        """``handler`` for callers the edge lets call gRPC ``method`` (and admitted into its
        class for the whole call, with ``admit``)."""

        async def guarded(request: Request) -> Response:
            try:
                peer = self._edge.caller(request.scope, method)
                if not admit:
                    return await handler(request, peer)
                async with self._edge.admitted(peer, method):
                    return await handler(request, peer)
            except NumfedError as err:
                return _error(err)

        return guarded

    def _url(self, path: str) -> str:
        return self.issuer + path

    # -- discovery -----------------------------------------------------------------------------

    async def configuration(self, request: Request, peer: PeerId) -> Response:
        return _json(
            {
                "spec_version": "1_0",
                "issuer": self.issuer,
                "jwks_uri": self._url("/ssf/jwks.json"),
                "delivery_methods_supported": [PUSH, POLL],
                "configuration_endpoint": self._url("/ssf/stream"),
                "status_endpoint": self._url("/ssf/status"),
                "verification_endpoint": self._url("/ssf/verify"),
                "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:8705"}],
                "default_subjects": "ALL",
            }
        )

    async def jwks(self, request: Request, peer: PeerId) -> Response:
        return _json(self.signer.jwks())

    # -- streams -------------------------------------------------------------------------------

    def _method(self, peer: PeerId) -> str | None:
        member = self._platforms().get(peer.id)
        return None if member is None else method_of(member.events)

    async def _own(self, peer: PeerId) -> Stream:
        method = self._method(peer)
        if method is None:
            raise NotFound("STREAM_NOT_FOUND", "this platform's events go by gRPC, not SSF")
        return await self._store.run(self._streams.get, peer.id, method, now_us())

    def _config(self, stream: Stream, peer: PeerId) -> dict[str, Any]:
        return stream.config(issuer=self.issuer, audience=peer.uri, poll_url=self._url("/ssf/poll"))

    async def stream(self, request: Request, peer: PeerId) -> Response:
        verb = request.method
        if verb == "GET":
            wanted = request.query_params.get("stream_id")
            if self._method(peer) is None:
                if wanted is not None:
                    raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id")
                return _json([])
            stream = await self._own(peer)
            if wanted is None:
                return _json([self._config(stream, peer)])
            if wanted != stream.stream_id:
                raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id")
            return _json(self._config(stream, peer))
        if verb == "POST":
            await _body(request)
            if self._method(peer) is None:
                raise PermissionDenied(
                    "STREAM_NOT_ALLOWED",
                    "this platform's events go by gRPC; the federation's config chooses",
                )
            raise AlreadyExists(
                "STREAM_EXISTS",
                "this receiver's stream exists already (one per platform): read or update it",
            )
        if verb == "DELETE":
            stream = await self._own(peer)
            if request.query_params.get("stream_id") != stream.stream_id:
                raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id")
            raise PermissionDenied(
                "STREAM_DELETE_NOT_ALLOWED",
                "a platform's stream lasts as long as its membership: nothing may be dropped",
            )
        stream = await self._own(peer)
        updated = stream_update(
            stream,
            await _body(request),
            replace=verb == "PUT",
            issuer=self.issuer,
            audience=peer.uri,
            poll_url=self._url("/ssf/poll"),
        )
        await self._store.run(self._streams.save, updated, now_us())
        self._audit_stream(peer, "CONFIGURED", updated, endpoint=updated.endpoint_url or "")
        self._on_stream_change(peer.id)  # its pusher reads the stream again
        return _json(self._config(updated, peer))

    async def status(self, request: Request, peer: PeerId) -> Response:
        stream = await self._own(peer)
        if request.method == "GET":
            if request.query_params.get("stream_id") != stream.stream_id:
                raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id")
            return _json(stream.status_object())
        updated = status_update(stream, await _body(request))
        await self._store.run(self._streams.save, updated, now_us())
        self._audit_stream(peer, updated.status.upper(), updated, reason=updated.reason or "")
        self._on_stream_change(peer.id)
        self.wake()
        return _json(updated.status_object())

    async def verify(self, request: Request, peer: PeerId) -> Response:
        stream = await self._own(peer)
        body = await _body(request)
        if not isinstance(body, dict):
            raise InvalidArgument("MALFORMED_BODY", "the body must be a JSON object")
        if body.get("stream_id") != stream.stream_id:
            raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id")
        state = body.get("state")
        if state is not None and (not isinstance(state, str) or len(state) > 512):
            raise InvalidArgument("BAD_STATE", "state is a string of at most 512 characters")
        await self._store.run(
            self._streams.request_verification, peer.id, new_jti(), state, now_us()
        )
        self._audit_stream(peer, "VERIFICATION_REQUESTED", stream)
        self._on_stream_change(peer.id)
        self.wake()
        return Response(status_code=204, headers={"cache-control": "no-store"})

    def _audit_stream(self, peer: PeerId, outcome: str, stream: Stream, **detail: str) -> None:
        """What a receiver did to its stream: configured it, paused or enabled it, asked for a
        verification (audited, as every change that decides where and whether events go)."""
        self._audit(
            AuditRecord(
                now_us(),
                "SSF_STREAM",
                peer.uri,
                outcome=outcome,
                detail={"stream_id": stream.stream_id, **{k: v[:200] for k, v in detail.items()}},
            )
        )

    # -- poll delivery -------------------------------------------------------------------------

    async def poll(self, request: Request, peer: PeerId) -> Response:
        stream = await self._own(peer)
        if stream.method != POLL:
            raise PermissionDenied(
                "NOT_A_POLL_STREAM", "this stream's events are pushed to the receiver"
            )
        acks, errors, max_events, immediately = _poll_request(await _body(request))
        for jti, err in errors.items():
            self._audit(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    peer.uri,
                    outcome="SET_REJECTED",
                    detail={"jti": jti[:64], "err": err[:64], "mode": "ssf-poll"},
                )
            )
        news = self._news
        polled = await self._poll_once(peer, acks | set(errors), max_events)
        if not polled.sets and not immediately and max_events > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LONG_POLL_SECONDS):
                    await news.wait()
            polled = await self._poll_once(peer, set(), max_events)
        return _json({"sets": self._sets(polled, peer), "moreAvailable": polled.more})

    async def _poll_once(self, peer: PeerId, acks: set[str], max_events: int) -> Polled:
        async with self._edge.admitted(peer, PULL_EVENTS):
            polled = await self._store.run(
                self._streams.poll, peer.id, POLL, acks, max_events, now_us()
            )
        self._acknowledged(peer, polled)
        return polled

    def _acknowledged(self, peer: PeerId, polled: Polled) -> None:
        if polled.cursor_after > polled.cursor_before:
            self._audit(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    peer.uri,
                    outcome="ACKNOWLEDGED",
                    detail={"through_seq": str(polled.cursor_after), "mode": "ssf-poll"},
                )
            )

    def _sets(self, polled: Polled, peer: PeerId) -> dict[str, str]:
        now = datetime.now(UTC)
        out: dict[str, str] = {}
        stream = polled.stream
        if stream.verification_jti is not None and not polled.verification_acknowledged:
            out[stream.verification_jti] = self.signer.sign(
                verification_claims(
                    jti=stream.verification_jti,
                    stream_id=stream.stream_id,
                    state=stream.verification_state,
                    issuer=self.issuer,
                    audience=peer.uri,
                    now=now,
                )
            )
        for batch, index in polled.sets:
            event = batch.events[index]
            jti = jti_of(event.event_id)
            if jti in out:
                continue  # the same event in two batches: one SET
            out[jti] = self.signer.sign(
                event_set_claims(
                    event=event,
                    envelope=batch.envelope,
                    carrier_id=batch.carrier_id,
                    issuer=self.issuer,
                    audience=peer.uri,
                    now=now,
                )
            )
        return out


def _poll_request(body: Any) -> tuple[set[str], dict[str, str], int, bool]:
    """(acknowledged jti, jti -> err reported, maxEvents, returnImmediately) of an RFC 8936
    poll request (INVALID_ARGUMENT for anything else)."""
    if not isinstance(body, dict):
        raise InvalidArgument("MALFORMED_BODY", "the body must be a JSON object")
    acks = body.get("ack", [])
    if not isinstance(acks, list) or not all(isinstance(a, str) for a in acks):
        raise InvalidArgument("BAD_ACK", "ack is an array of jti strings")
    errs = body.get("setErrs", {})
    if not isinstance(errs, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("err"), str) for v in errs.values()
    ):
        raise InvalidArgument("BAD_SET_ERRS", 'setErrs maps each jti to {"err", "description"}')
    if len(acks) + len(errs) > MAX_ACKS:
        raise InvalidArgument("TOO_MANY_ACKS", f"at most {MAX_ACKS} jti per poll")
    max_events = body.get("maxEvents", MAX_EVENTS)
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
        raise InvalidArgument("BAD_MAX_EVENTS", "maxEvents is a non-negative integer")
    immediately = body.get("returnImmediately", False)
    if not isinstance(immediately, bool):
        raise InvalidArgument("BAD_RETURN_IMMEDIATELY", "returnImmediately is a boolean")
    return (
        set(acks),
        {k: v["err"] for k, v in errs.items()},
        min(max_events, MAX_EVENTS),
        immediately,
    )
