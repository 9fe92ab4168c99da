"""``HolderService``: the carrier's own app channel, where a holder verifies and acts.

The holder's name, ID number and SMS code arrive here and stop here. A verified holder may also
take away a holder proof: a HOLDER_PROOF claim anyone can check offline. What goes on to the gateway
is a signed claim (number, carrier, X, purpose, times, claim id, picked binding refs) and the
platforms to ask; the gateway's answer comes back unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.longrunning import operations_pb2

from numfed.claims import Purpose, normalize_number
from numfed.config import Limits
from numfed.envelope import Envelope
from numfed.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    NumfedError,
    ResourceExhausted,
)
from numfed.observability.metrics import CALLS_THROTTLED
from numfed.proof import encode_proof
from numfed.rpc import error_from_rpc
from numfed.throttle import AdaptiveThrottle
from numfed.timeutil import to_timestamp
from numfed.v1 import claim_pb2, gateway_pb2, holder_pb2, holder_pb2_grpc

if TYPE_CHECKING:
    from carrier_adapters.base import CarrierAdapter

__all__ = ["HolderServicer"]

T = TypeVar("T")
PROOF_LIFETIME = timedelta(days=30)
"""How long a holder proof stays valid; it is carried around, unlike a one-use claim."""
_ID_NUMBER = re.compile(r"[0-9]{17}[0-9Xx]")
"""A resident ID number: 17 ASCII digits and a check character (no other script's digits)."""
_MAYBE_COMMITTED = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL", "UNKNOWN"}
)
"""Codes of a gateway call whose outcome is unknown: the release job may exist."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCOPES = {
    holder_pb2.BINDING_SCOPE_PRIOR: (Purpose.QUERY_PRIOR, Purpose.RELEASE_PRIOR),
    holder_pb2.BINDING_SCOPE_OWN: (Purpose.QUERY_OWN, Purpose.RELEASE_OWN),
}


_PREVIEWS = {
    p.value: p
    for p in (Purpose.QUERY_PRIOR, Purpose.RELEASE_PRIOR, Purpose.QUERY_OWN, Purpose.HOLDER_PROOF)
}
"""Purposes whose claim can be shown before any is signed (RELEASE_OWN needs the picked refs)."""


def _lifetime(purpose: Purpose) -> timedelta | None:
    """A holder proof is carried around for weeks; every other claim lives the adapter's
    ``claim_lifetime`` (None)."""
    return PROOF_LIFETIME if purpose is Purpose.HOLDER_PROOF else None


def _scope(scope: holder_pb2.BindingScope.ValueType) -> tuple[Purpose, Purpose]:
    """(query purpose, release purpose) of a scope."""
    if scope not in _SCOPES:
        raise InvalidArgument("BAD_SCOPE", "scope must be PRIOR or OWN")
    return _SCOPES[scope]


def _timeout(context: grpc.aio.ServicerContext[Any, Any], limits: Limits, default: float) -> float:
    """The gateway call's timeout: the holder's remaining time less a margin, else ``default``."""
    remaining = context.time_remaining()
    if remaining is None:
        return default
    left = remaining - limits.deadline_margin
    if left <= 0:
        raise DeadlineExceeded("DEADLINE_TOO_SHORT", "no time left to call the gateway")
    return left


_NOT_TAKEN = frozenset({"RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED"})
"""Codes of a gateway call the gateway did not take for overload: refused (admission, its cap,
gRPC's backlog bounds) or not answered in time. Not accepts, for the throttle (SRE: accepts are
the calls the server took); any other answer is one, a refusal of the request itself included.
UNAVAILABLE counts as taken: a gateway down or without its database refuses fast and does no
work, so refusing locally would spare it nothing and only slow the recovery."""
_UNJUDGED = frozenset({"RESOURCE_EXHAUSTED"})
"""Codes of a release refused before the gateway looked for the request's job (its admission,
its cap, this adapter's throttle): a retry refused so may still have a job from an earlier
call."""


async def _gateway(throttle: AdaptiveThrottle, method: str, call: Callable[[], Awaitable[T]]) -> T:
    """Make a gateway call; its failure reaches the holder with the same code and reason.

    While the gateway refuses most of this adapter's calls of ``method`` for overload, or does
    not answer them in time, a share of new ones is refused here at once, unsent
    (:mod:`numfed.throttle`): RESOURCE_EXHAUSTED ``OVERLOADED`` with the gateway's last
    RetryInfo, as the gateway's own refusal would have said, only sooner; counted in
    ``numfed_calls_throttled_total``. A call the holder gave up on (cancelled here) stays a
    request with no accept: the gateway may have been too slow for them."""
    if not throttle.admit():
        CALLS_THROTTLED.labels(method).inc()
        raise ResourceExhausted(
            "OVERLOADED",
            "the federation is refusing most calls for now, so this one was not sent: "
            "come back later",
            retry_after=throttle.retry_after,
        )
    try:
        answer = await call()
    except grpc.aio.AioRpcError as exc:
        err = error_from_rpc(exc)
        if err.code in _NOT_TAKEN:
            throttle.refused(err.retry_after)
        else:
            throttle.accepted()
        raise err from exc
    throttle.accepted()
    return answer


class HolderServicer(holder_pb2_grpc.HolderServiceServicer):
    def __init__(self, adapter: CarrierAdapter) -> None:
        self._a = adapter

    async def StartVerification(
        self,
        request: holder_pb2.StartVerificationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.StartVerificationResponse:
        number = normalize_number(request.number)
        if not _ID_NUMBER.fullmatch(request.id_number):
            raise InvalidArgument(
                "MALFORMED_ID_NUMBER", "an ID number is 17 digits 0-9 and a check digit (0-9 or X)"
            )
        current = self._a.registry.current_holder(number, self._a.clock())
        vid, expires = self._a.verifier.start(
            number,
            request.name,
            request.id_number,
            holder_id=current.holder.holder_id,
            holder_name=current.holder.name,
            holder_id_number=current.holder.id_number,
            tenure_start=current.tenure_start,
        )
        return holder_pb2.StartVerificationResponse(
            verification_id=vid, expire_time=to_timestamp(expires)
        )

    async def ConfirmVerification(
        self,
        request: holder_pb2.ConfirmVerificationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.ConfirmVerificationResponse:
        session = self._a.verifier.confirm(request.verification_id, request.code)
        return holder_pb2.ConfirmVerificationResponse(
            session_token=session.token, tenure_start=to_timestamp(session.tenure_start)
        )

    async def QueryHolderBindings(
        self,
        request: holder_pb2.QueryHolderBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.QueryHolderBindingsResponse:
        session = self._a.verifier.session(request.session_token)
        purpose, _ = _scope(request.scope)
        claim = self._a.sign(session, purpose)
        limits = self._a.config.limits
        timeout = _timeout(context, limits, limits.default_call_timeout)
        answer = await _gateway(
            self._a.gateway_throttles["QueryBindings"],
            "QueryBindings",
            lambda: self._a.gateway.QueryBindings(
                gateway_pb2.QueryBindingsRequest(
                    claim=claim,
                    platform_ids=request.platform_ids,
                    compact_none=request.compact_none,  # the app's choice of shape, passed on
                ),
                timeout=timeout,
            ),
        )
        return holder_pb2.QueryHolderBindingsResponse(
            results=answer.results, none_platform_ids=answer.none_platform_ids
        )

    async def ReleaseHolderBindings(
        self,
        request: holder_pb2.ReleaseHolderBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operations_pb2.Operation:
        session = self._a.verifier.session(request.session_token)
        if not _REQUEST_ID.fullmatch(request.request_id):
            raise InvalidArgument(
                "BAD_REQUEST_ID", "request_id must be 1 to 64 characters [A-Za-z0-9_-]"
            )
        _, purpose = _scope(request.scope)
        refs = tuple(request.binding_refs)
        if purpose is Purpose.RELEASE_OWN and not refs:
            raise InvalidArgument(
                "NO_BINDINGS_SELECTED", "releasing own bindings needs each one picked explicitly"
            )
        if purpose is Purpose.RELEASE_PRIOR and refs:
            raise InvalidArgument("UNEXPECTED_BINDING_REFS", "a prior release names no bindings")
        body = holder_pb2.ReleaseHolderBindingsRequest(
            scope=request.scope, binding_refs=refs, platform_ids=request.platform_ids
        )
        fingerprint = hashlib.sha256(body.SerializeToString(deterministic=True)).digest()
        retry = session.has_release(request.request_id)  # an earlier call's envelope
        raw = session.release_envelope(
            request.request_id,
            fingerprint,
            lambda: self._a.sign(session, purpose, refs).SerializeToString(deterministic=True),
        )
        limits = self._a.config.limits
        try:
            release = gateway_pb2.ReleaseBindingsRequest(
                request_id=self._a.gateway_request_id(session.holder_id, request.request_id),
                claim=claim_pb2.Envelope.FromString(raw),
                platform_ids=request.platform_ids,
            )
            timeout = _timeout(context, limits, limits.default_call_timeout)
            op: operations_pb2.Operation = await _gateway(
                self._a.gateway_throttles["ReleaseBindings"],
                "ReleaseBindings",
                lambda: self._a.gateway.ReleaseBindings(release, timeout=timeout),
            )
        except NumfedError as err:
            # Keep the envelope if the gateway may have a job made with it (a retry must then
            # send the same claim to find it): this call's outcome is unknown, or this retry
            # was refused before the gateway looked for the job of an earlier call whose
            # outcome was. Any other refusal leaves the session as it was before the call.
            maybe_job = err.code in _MAYBE_COMMITTED or (retry and err.code in _UNJUDGED)
            if not maybe_job:
                session.forget_release(request.request_id)
            raise
        session.operations.add(op.name)
        return op

    async def PreviewHolderClaim(
        self,
        request: holder_pb2.PreviewHolderClaimRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.PreviewHolderClaimResponse:
        session = self._a.verifier.session(request.session_token)
        purpose = _PREVIEWS.get(request.purpose)
        if purpose is None:
            raise InvalidArgument(
                "BAD_PURPOSE",
                "a preview is of QUERY_PRIOR, RELEASE_PRIOR, QUERY_OWN or HOLDER_PROOF",
            )
        claim = self._a.claim(session, purpose, lifetime=_lifetime(purpose))
        return holder_pb2.PreviewHolderClaimResponse(claim=claim.to_proto())

    async def IssueHolderProof(
        self,
        request: holder_pb2.IssueHolderProofRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.IssueHolderProofResponse:
        session = self._a.verifier.session(request.session_token)
        signed = self._a.sign(
            session, Purpose.HOLDER_PROOF, lifetime=_lifetime(Purpose.HOLDER_PROOF)
        )
        envelope = Envelope.from_proto(signed)
        claim = claim_pb2.TenureClaim.FromString(envelope.payload)
        return holder_pb2.IssueHolderProofResponse(
            token=encode_proof(envelope), expire_time=claim.expires_at
        )

    async def WatchHolderRelease(
        self,
        request: holder_pb2.WatchHolderReleaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[operations_pb2.Operation]:
        """Relay the gateway's WatchOperation for at most ``limits.watch_max_age`` (or the
        holder's deadline, if sooner), then end with OK: the holder's app watches again. A
        gateway stream that ends at the gateway's own maximum age is watched again meanwhile.
        When the holder goes away (or stops answering pings), the gateway's stream is
        cancelled at once, so it holds none of this carrier's watch slots at the gateway."""
        session = self._a.verifier.session(request.session_token)
        if request.name not in session.operations:
            raise NotFound("OPERATION_NOT_FOUND", "not an operation of this session")
        limits = self._a.config.limits
        lifetime = min(limits.watch_max_age, _timeout(context, limits, limits.watch_max_age))
        loop = asyncio.get_running_loop()
        ends = loop.time() + lifetime
        watch = gateway_pb2.WatchOperationRequest(name=request.name)
        last = b""
        while (left := ends - loop.time()) > 0:
            # Its deadline comes after ours, so this stream ends by our own timer below.
            call = self._a.gateway.WatchOperation(watch, timeout=left + 1.0)
            try:
                while True:
                    async with asyncio.timeout(ends - loop.time()):
                        op = await call.read()
                    if op is grpc.aio.EOF:
                        break  # the gateway's stream reached its maximum age: watch again
                    assert isinstance(op, operations_pb2.Operation)
                    body = op.SerializeToString(deterministic=True)
                    if body != last:  # a new stream starts with the state already sent
                        yield op
                        last = body
                    if op.done:
                        return
            except TimeoutError:
                return  # this stream's maximum age
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc) from exc
            finally:
                call.cancel()
