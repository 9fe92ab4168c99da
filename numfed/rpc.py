"""The gRPC edge shared by every numfed server and client.

One interceptor per server does the cross-cutting work: it refuses a revoked client certificate
(UNAUTHENTICATED ``CERTIFICATE_REVOKED``), reads the caller's SPIFFE id from the certificate,
serves members only (PERMISSION_DENIED ``UNKNOWN_MEMBER``), allows each RPC only for the roles that
need it, and maps numfed's domain exceptions to a ``google.rpc.Status`` carrying one
``ErrorInfo`` (AIP-193). Handlers raise :class:`numfed.errors.NumfedError` and never build
statuses themselves. Health and reflection get the first two checks too, but no role policy.
Reflection is served as ``grpc.reflection.v1`` and ``v1alpha`` alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import inspect
import logging
import socket
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from numfed.config import MIN_KEEPALIVE_TIME, Limits
from numfed.errors import (
    ERROR_DOMAIN,
    FailedPrecondition,
    InvalidArgument,
    NumfedError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from numfed.identity import PeerId, Role
from numfed.observability import metrics, tracing
from numfed.pki import RevocationList, peer_certificate, peer_from_pem

__all__ = [
    "ADMISSION_REASONS",
    "MAX_MESSAGE_BYTES",
    "SERVER_CAP_DETAILS",
    "SERVER_OVERLOADED",
    "Admission",
    "Members",
    "RpcClass",
    "ServerHandle",
    "SoleGateway",
    "call_cap",
    "current_peer",
    "error_from_rpc",
    "error_from_status",
    "error_info",
    "error_status",
    "identify",
    "ok_status",
    "pending_options",
    "require_role",
    "retry_delay",
    "rpc_error_info",
    "server_cap_refusal",
    "server_options",
    "start_server",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message any numfed server or client sends or receives."""

STREAM_RECHECK = 1.0
"""Seconds between checks that the caller of an open stream is still a member (see
``_Interceptor._still_served``)."""

MAX_ERROR_TEXT = 400
"""Longest error message or ErrorInfo metadata value sent: messages may quote the input, and
gRPC clients refuse trailing metadata past 8-16 KiB (RESOURCE_EXHAUSTED, the answer lost)."""

SERVER_CAP_DETAILS = "Concurrent RPC limit exceeded!"
"""The details of gRPC's own refusal of a call past a server's ``maximum_concurrent_rpcs``
(:func:`call_cap`; grpc.aio's ``_handle_rpc``, ``_cygrpc/aio/server.pyx.pxi``): the status is
RESOURCE_EXHAUSTED and its trailing metadata is empty, so it carries no ErrorInfo and no
RetryInfo."""

SERVER_OVERLOADED = "SERVER_OVERLOADED"
"""The reason :func:`error_from_status` gives gRPC's own refusal (:data:`SERVER_CAP_DETAILS`),
which names none: the server held as many calls as it may, a caller retries with backoff."""

_CODES = {c.name: c for c in grpc.StatusCode}
_current_peer: contextvars.ContextVar[PeerId] = contextvars.ContextVar("numfed_peer")


def current_peer() -> PeerId:
    """The authenticated caller of the RPC being handled (set by the interceptor)."""
    try:
        return _current_peer.get()
    except LookupError as exc:
        raise Unauthenticated("NO_PEER_IDENTITY", "no authenticated caller") from exc


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def error_status(err: NumfedError) -> status_pb2.Status:
    """A ``google.rpc.Status`` for ``err`` with one ErrorInfo (reason, domain, metadata)."""
    info = error_details_pb2.ErrorInfo(
        reason=err.reason,
        domain=ERROR_DOMAIN,
        metadata={k: _bounded(v) for k, v in err.metadata.items()},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(int(err.retry_after * 1000), 1))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    code = _CODES.get(err.code, grpc.StatusCode.INTERNAL)
    return status_pb2.Status(code=code.value[0], message=_bounded(err.message), details=details)


def ok_status() -> status_pb2.Status:
    return status_pb2.Status(code=0)


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo inside a status, if any."""
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return info
    return None


def retry_delay(status: status_pb2.Status) -> float | None:
    """The RetryInfo delay inside a status, in seconds, if any."""
    for d in status.details:
        retry = error_details_pb2.RetryInfo()
        if d.Unpack(retry):
            millis: int = retry.retry_delay.ToMilliseconds()
            return millis / 1000
    return None


def error_from_status(status: status_pb2.Status) -> NumfedError:
    """Rebuild a domain exception from a status a peer returned: the same code, reason and
    metadata, and its RetryInfo delay as ``retry_after`` (so a relayed refusal still tells the
    caller when to come back). A code with no class of its own (CANCELLED, UNKNOWN, ABORTED,
    DATA_LOSS) stays that code, so a relayed call that was dropped is not mistaken for the relay's
    own failure. gRPC's own refusal at a server's cap, which names no reason, is
    RESOURCE_EXHAUSTED :data:`SERVER_OVERLOADED`."""
    from numfed import errors

    info = error_info(status)
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    if (
        info is None
        and code is grpc.StatusCode.RESOURCE_EXHAUSTED
        and status.message == SERVER_CAP_DETAILS
    ):
        return ResourceExhausted(SERVER_OVERLOADED, status.message)
    cls = next(
        (
            c
            for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, NumfedError) and c.code == code.name
        ),
        NumfedError,
    )
    err = cls(
        info.reason if info else code.name,
        status.message,
        metadata=info.metadata if info else None,
        retry_after=retry_delay(status),
    )
    err.code = code.name
    return err


def error_from_rpc(err: grpc.aio.AioRpcError) -> NumfedError:
    """A peer's failed call as a domain exception with the same code, reason and metadata."""
    status = rpc_status.from_call(cast(grpc.Call, err))
    if status is None:
        status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
    return error_from_status(status)


def rpc_error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a failed call carried in its trailing metadata, if any."""
    status = rpc_status.from_call(cast(grpc.Call, err))
    return error_info(status) if status is not None else None


def server_cap_refusal(err: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call is gRPC's own refusal at a numfed server's cap (:func:`call_cap`):
    RESOURCE_EXHAUSTED, :data:`SERVER_CAP_DETAILS` and no ``google.rpc.Status`` at all."""
    return (
        err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        and err.details() == SERVER_CAP_DETAILS
        and rpc_status.from_call(cast(grpc.Call, err)) is None
    )


@dataclass(frozen=True)
class RpcClass:
    """How many calls of one class run at once, and how many may wait for a slot (and how long)."""

    name: str
    concurrency: int
    queue: int
    wait: float
    """Longest a call waits in the queue, in seconds, before it is turned away."""
    per_caller: int | None = None
    """Most calls of the class one caller (one peer SPIFFE id) may hold at once, running or
    queued; None: no per-caller cap."""


def _caller() -> str | None:
    """The SPIFFE id of the call being handled (None on a server without peer identities)."""
    peer = _current_peer.get(None)
    return peer.uri if peer is not None else None


class _Gate:
    """Admission for one RPC class: a counter and a FIFO of waiters, on the event loop, and a
    count per caller of the calls it holds (running or queued), dropped when it reaches zero."""

    def __init__(self, cls: RpcClass) -> None:
        self.cls = cls
        self.active = 0
        self.rejected = 0
        self.rejections: dict[str, int] = {}
        """reason -> calls turned away for it (OVERLOADED, OVERLOADED_QUEUE_TIMEOUT,
        CALLER_OVERLOADED), read when metrics are scraped."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._held: dict[str, int] = {}
        """caller -> calls of this class it has running or queued (no entry at zero)."""

    def held_by(self, caller: str) -> int:
        return self._held.get(caller, 0)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    @property
    def callers(self) -> int:
        """Callers holding at least one call of this class (the per-caller memory in use)."""
        return len(self._held)

    def _overloaded(
        self, reason: str, message: str, metadata: dict[str, str] | None = None
    ) -> ResourceExhausted:
        self.rejected += 1
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        return ResourceExhausted(
            reason,
            message,
            metadata=metadata
            or {"rpc_class": self.cls.name, "concurrency": str(self.cls.concurrency)},
            retry_after=max(self.cls.wait / 2, 0.05),
        )

    async def enter(self, caller: str | None = None) -> str | None:
        """Take a slot, or wait in the queue for one, or raise RESOURCE_EXHAUSTED at once.

        ``caller`` (default: the authenticated peer of the call being handled) may hold at most
        ``per_caller`` calls of the class; past that, ``CALLER_OVERLOADED`` before it takes any
        of the class's room, so one caller cannot fill the slots or the queue of the others.
        Returns the caller charged for the call (None if none), to hand back to :meth:`exit`.
        """
        caller = caller if caller is not None else _caller()
        cap = self.cls.per_caller
        if caller is None or cap is None:
            await self._take_slot()
            return None
        held = self._held.get(caller, 0)
        if held >= cap:
            raise self._overloaded(
                "CALLER_OVERLOADED",
                f"too many {self.cls.name} calls from this caller at once; retry later",
                {"rpc_class": self.cls.name, "per_caller": str(cap)},
            )
        self._held[caller] = held + 1
        try:
            await self._take_slot()
        except BaseException:
            self._release(caller)
            raise
        return caller

    def exit(self, charged: str | None = None) -> None:
        """Give the slot back; ``charged`` is what :meth:`enter` returned."""
        self._pass_slot()
        self._release(charged)

    def _release(self, caller: str | None) -> None:
        if caller is None:
            return
        held = self._held.get(caller, 0) - 1
        if held > 0:
            self._held[caller] = held
        else:
            self._held.pop(caller, None)

    async def _take_slot(self) -> None:
        if self.active < self.cls.concurrency and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.cls.queue:
            raise self._overloaded(
                "OVERLOADED", f"too many {self.cls.name} calls at once; retry later"
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            async with asyncio.timeout(self.cls.wait):
                await asyncio.shield(granted)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if granted.done() and not granted.cancelled():
                self._pass_slot()  # the slot came just as we gave up: pass it on
            else:
                granted.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(granted)
            if isinstance(exc, TimeoutError):
                raise self._overloaded(
                    "OVERLOADED_QUEUE_TIMEOUT",
                    f"no {self.cls.name} slot came free in {self.cls.wait:g} s; retry later",
                ) from None
            raise

    def _pass_slot(self) -> None:
        self.active -= 1
        while self._waiters:
            nxt = self._waiters.popleft()
            if not nxt.done():
                self.active += 1
                nxt.set_result(None)
                return


class Admission:
    """Bounded concurrency per RPC class with a small queue; excess calls are turned away fast.

    A call whose class is full waits in a FIFO queue of at most ``queue`` calls for at most
    ``wait`` seconds; a call that finds the queue full, or waits too long, gets
    RESOURCE_EXHAUSTED at once with RetryInfo. So a surge costs a bounded amount of memory and
    never crashes the server; admitted calls still finish in their usual time. Limits hold per
    caller as well as in total: a caller holding ``per_caller`` calls of a class (running or
    queued) gets RESOURCE_EXHAUSTED ``CALLER_OVERLOADED`` for the next, so one member cannot
    take every slot of a class from the others. Bookkeeping is O(1) per call, and memory per
    class grows only with the callers holding calls at that moment. Methods not named are not
    limited (health, reflection).
    """

    def __init__(self, classes: Iterable[RpcClass], methods: Mapping[str, str]) -> None:
        self.gates = {c.name: _Gate(c) for c in classes}
        unknown = set(methods.values()) - set(self.gates)
        if unknown:
            raise ValueError(f"methods name unknown RPC classes: {sorted(unknown)}")
        self._methods = dict(methods)

    def gate(self, method: str) -> _Gate | None:
        name = self._methods.get(method)
        return self.gates[name] if name is not None else None

    @property
    def capacity(self) -> int:
        """Most calls the classes hold at once: every class's slots plus its queue."""
        return sum(g.cls.concurrency + g.cls.queue for g in self.gates.values())

    def collect_metrics(self) -> Iterable[Metric]:
        """Per RPC class: calls running and queued now, the bounds, and the calls turned away
        by reason (read when scraped; admission itself keeps plain counters)."""
        active = GaugeMetricFamily(
            "numfed_admission_calls_active",
            "Calls running now, by RPC class.",
            labels=["rpc_class"],
        )
        queued = GaugeMetricFamily(
            "numfed_admission_queue_depth",
            "Calls waiting for a slot now, by RPC class.",
            labels=["rpc_class"],
        )
        limit = GaugeMetricFamily(
            "numfed_admission_limit",
            "Admission bounds by RPC class: kind=concurrency (calls at once) or queue (calls "
            "that may wait).",
            labels=["rpc_class", "kind"],
        )
        rejected = CounterMetricFamily(
            "numfed_admission_rejections",
            "Calls turned away with RESOURCE_EXHAUSTED, by RPC class and reason (OVERLOADED, "
            "OVERLOADED_QUEUE_TIMEOUT, CALLER_OVERLOADED).",
            labels=["rpc_class", "reason"],
        )
        for name, gate in self.gates.items():
            active.add_metric([name], gate.active)
            queued.add_metric([name], gate.queued)
            limit.add_metric([name, "concurrency"], gate.cls.concurrency)
            limit.add_metric([name, "queue"], gate.cls.queue)
            for reason in ADMISSION_REASONS:
                rejected.add_metric([name, reason], gate.rejections.get(reason, 0))
        return [active, queued, limit, rejected]


ADMISSION_REASONS = ("OVERLOADED", "OVERLOADED_QUEUE_TIMEOUT", "CALLER_OVERLOADED")
"""The ErrorInfo reasons of admission's RESOURCE_EXHAUSTED refusals (each with RetryInfo)."""


Policy = Mapping[str, frozenset[Role]]
"""Full method name ("/numfed.v1.GatewayService/QueryBindings") -> roles allowed to call it."""

InitialMetadata = Callable[[Iterable[tuple[str, str | bytes]] | None], Sequence[tuple[str, str]]]
"""Metadata to send with each answer, asked for at the time of the answer and given the call's
request metadata; empty: nothing to send (the answer then goes without initial metadata of its
own, which saves grpc a separate operation per call)."""
OnMetadata = Callable[[Iterable[tuple[str, str | bytes]] | None], None]
"""Shown the request metadata of each admitted call; must not block."""

Members = Container[PeerId]
"""The peers a server serves at all: the gateway's live :class:`gateway.membership.Membership`,
or :class:`SoleGateway` for a platform or carrier; asked once per call."""


@dataclass(frozen=True)
class SoleGateway:
    """Members as a platform or a carrier knows them: of the gateway role, only the federation's
    gateway (the one it dials itself). It holds no member list, so peers of other roles are
    left to the role policy, which refuses them with ROLE_NOT_ALLOWED."""

    gateway: PeerId

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, PeerId) and (peer.role is not Role.GATEWAY or peer == self.gateway)


def identify(pem: bytes, members: Members | None, revocations: RevocationList | None) -> PeerId:
    """The peer a verified client certificate (PEM) names, if it may be served at all: the
    certificate is not on the CA's revocation list (UNAUTHENTICATED ``CERTIFICATE_REVOKED``) and
    names a member (PERMISSION_DENIED ``UNKNOWN_MEMBER``). Every edge of a numfed server asks
    this first: the gRPC interceptor and the gateway's HTTPS facades (gateway/facades)."""
    if revocations is not None:
        revocations.check(pem)
    peer = peer_from_pem(pem)
    if members is not None and peer not in members:
        raise PermissionDenied(
            "UNKNOWN_MEMBER",
            f"{peer.uri} is not a member of this federation",
            metadata={"peer": peer.uri},
        )
    return peer


def require_role(peer: PeerId, allowed: Container[Role], method: str) -> None:
    """PERMISSION_DENIED ``ROLE_NOT_ALLOWED`` unless ``peer``'s role may call ``method``."""
    if peer.role not in allowed:
        raise PermissionDenied(
            "ROLE_NOT_ALLOWED",
            f"{peer.uri} may not call {method}",
            metadata={"method": method, "role": peer.role.value},
        )


class _Unparsed:
    """Stands in for a request whose bytes do not parse, so the handler refuses it precisely
    (gRPC itself would answer a failing deserializer with UNKNOWN)."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Unparsed(exc)

    return parse


def _parsed(request: Any, method: str) -> Any:
    if isinstance(request, _Unparsed):
        raise InvalidArgument(
            "MALFORMED_REQUEST", f"the request to {method} does not parse: {request.error}"
        )
    return request


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        policy: Policy | None,
        admission: Admission | None = None,
        *,
        members: Members | None = None,
        revocations: RevocationList | None = None,
        initial_metadata: InitialMetadata | None = None,
        on_metadata: OnMetadata | None = None,
    ) -> None:
        self._policy = policy
        self._admission = admission
        self._members = members
        self._revocations = revocations
        self._initial_metadata = initial_metadata
        self._on_metadata = on_metadata
        self._wrapped: dict[tuple[str, int], Any] = {}
        """Wrapped handlers, built once per method (and per underlying handler)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        unchecked = self._members is None and self._revocations is None
        if handler is None or (method.startswith("/grpc.") and unchecked):
            return cast("grpc.RpcMethodHandler[Any, Any] | None", handler)
        key = (method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrap = self._guard if method.startswith("/grpc.") else self._wrap
            wrapped = self._wrapped[key] = (handler, wrap(method, handler))
        return cast("grpc.RpcMethodHandler[Any, Any]", wrapped[1])

    def _identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> PeerId:
        """The caller, if it may be served at all: a certificate not revoked, naming a member."""
        return identify(peer_certificate(context), self._members, self._revocations)

    async def _still_served(
        self, items: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """``items``, for as long as the caller may still be served: a stream outlives the check
        made when it opened, so the caller's certificate and membership are checked again before
        each message and at least every ``STREAM_RECHECK`` seconds; a member removed or revoked
        meanwhile loses its open streams (UNKNOWN_MEMBER, CERTIFICATE_REVOKED) at once."""
        if self._members is None and self._revocations is None:
            async for item in items:
                yield item
            return
        iterator = aiter(items)
        pending: asyncio.Future[Any] = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=STREAM_RECHECK)
                self._identify(context)
                if not done:
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                yield item
                pending = asyncio.ensure_future(anext(iterator))
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    def _guard(self, method: str, handler: Any) -> Any:
        """Health and reflection: served to members with valid certificates, whatever their role."""
        identify = self._identify

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                identify(context)
            except NumfedError as err:
                await context.abort_with_status(rpc_status.to_status(error_status(err)))

        def guarded(inner: Any) -> Any:
            if inspect.isasyncgenfunction(inner):

                async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    await check(context)
                    async for item in inner(request, context):
                        yield item

                return stream

            async def call(request: Any, context: Any) -> Any:
                await check(context)
                return await inner(request, context)

            return call

        serdes = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(guarded(handler.unary_unary), **serdes)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(guarded(handler.unary_stream), **serdes)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(guarded(handler.stream_unary), **serdes)
        return grpc.stream_stream_rpc_method_handler(guarded(handler.stream_stream), **serdes)

    def _wrap(self, method: str, handler: Any) -> Any:
        policy = self._policy
        allowed = policy.get(method, frozenset()) if policy is not None else frozenset()
        gate = self._admission.gate(method) if self._admission is not None else None
        initial_metadata = self._initial_metadata
        on_metadata = self._on_metadata
        service, _, name = method.strip("/").partition("/")
        durations = metrics.Children(metrics.RPC_SERVER_DURATION, service, name)

        def observe(seconds: float, code: str) -> None:
            durations.observe(seconds, code)

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if policy is None:
                return  # a server without mTLS (a carrier's own app channel)
            peer = self._identify(context)
            require_role(peer, allowed, method)
            _current_peer.set(peer)
            if on_metadata is not None:
                on_metadata(context.invocation_metadata())

        if handler.unary_unary is not None:
            handle: Any = handler.unary_unary

            async def inner(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                response = await handle(request, context)
                if initial_metadata is not None:
                    # Only with an answer: an error's status goes alone (Trailers-Only), so that
                    # a channel may still retry it on another replica.
                    sent = initial_metadata(context.invocation_metadata())
                    if sent:
                        await context.send_initial_metadata(sent)
                return response

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                code = "OK"
                try:
                    await admit(context)
                    request = _parsed(request, method)
                    if gate is None:
                        return await inner(request, context)
                    charged = await gate.enter()
                    try:
                        return await inner(request, context)
                    finally:
                        gate.exit(charged)
                except NumfedError as err:
                    code = err.code
                    await context.abort_with_status(rpc_status.to_status(error_status(err)))
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = "UNKNOWN"
                    raise
                finally:
                    observe(time.perf_counter() - start, code)

            return grpc.unary_unary_rpc_method_handler(
                cast(Any, _traced_unary(method, unary) if tracing.traced_method(method) else unary),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                start = time.perf_counter()
                code = "OK"
                try:
                    await admit(context)
                    request = _parsed(request, method)
                    charged = await gate.enter() if gate is not None else None
                    try:
                        first = True
                        async for item in self._still_served(
                            inner_stream(request, context), context
                        ):
                            if first and initial_metadata is not None:
                                sent = initial_metadata(context.invocation_metadata())
                                if sent:
                                    await context.send_initial_metadata(sent)
                            first = False
                            yield item
                    finally:
                        if gate is not None:
                            gate.exit(charged)
                except NumfedError as err:
                    code = err.code
                    await context.abort_with_status(rpc_status.to_status(error_status(err)))
                except (asyncio.CancelledError, GeneratorExit):
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = "UNKNOWN"
                    raise
                finally:
                    observe(time.perf_counter() - start, code)

            return grpc.unary_stream_rpc_method_handler(
                cast(
                    Any, _traced_stream(method, stream) if tracing.traced_method(method) else stream
                ),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return cast("grpc.RpcMethodHandler[Any, Any]", handler)


def _traced_unary(
    method: str, serve: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """``serve`` inside the call's SERVER span (tracing on; :func:`tracing.server_call`)."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with tracing.server_call(method, context):
            return await serve(request, context)

    return call


def _traced_stream(
    method: str, serve: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    """``serve``'s messages inside the stream's SERVER span (tracing on)."""

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with tracing.server_call(method, context):
            async for item in serve(request, context):
                yield item

    return stream


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""The stable name of gRPC server reflection. grpcio-reflection serves only v1alpha, whose
messages are the same on the wire; numfed serves both names with one servicer."""


def _message_files() -> list[str]:
    """Every file of numfed's contracts, imported so that the descriptor pool holds it."""
    from numfed.v1 import (
        audit_pb2,
        binding_pb2,
        carrier_pb2,
        claim_pb2,
        conformance_pb2,
        events_pb2,
        gateway_pb2,
        holder_pb2,
        platform_admin_pb2,
        platform_pb2,
        trust_pb2,
    )

    modules = (
        audit_pb2,
        binding_pb2,
        carrier_pb2,
        claim_pb2,
        conformance_pb2,
        events_pb2,
        gateway_pb2,
        holder_pb2,
        platform_admin_pb2,
        platform_pb2,
        trust_pb2,
    )
    return [m.DESCRIPTOR.name for m in modules]


def _reflection_v1_file() -> None:
    """Put grpc/reflection/v1/reflection.proto in the default pool (v1alpha's, renamed), so
    that a client can describe the v1 service too."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")

    def renamed(type_name: str) -> str:
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        messages += message.nested_type
        for f in message.field:
            if f.type_name:
                f.type_name = renamed(f.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


class _Reflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """Server reflection whose every file answer also carries every file of numfed's contracts:
    the messages carried inside envelopes' payloads (``trust.proto``'s RootMetadata and
    TrustBundle, a TenureClaim, an EventBatch) are imported by no service's file, so a client
    that knows only reflection would otherwise never see them."""

    def __init__(self, service_names: Sequence[str], files: Sequence[str]) -> None:
        super().__init__(service_names)
        self._extra = [
            _file_proto(descriptor_pool.Default().FindFileByName(name)) for name in files
        ]

    def _with_contracts(self, response: Any) -> Any:
        if response.HasField("file_descriptor_response"):
            listed = response.file_descriptor_response.file_descriptor_proto
            names = {descriptor_pb2.FileDescriptorProto.FromString(raw).name for raw in listed}
            for name, raw in self._extra:
                if name not in names:
                    listed.append(raw)
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_contracts(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, name: str) -> Any:
        return self._with_contracts(super()._file_containing_symbol(request, name))


def _file_proto(descriptor: Any) -> tuple[str, bytes]:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto.name, proto.SerializeToString()


def _add_reflection(server: grpc.aio.Server, names: Sequence[str]) -> None:
    """Serve reflection under v1alpha and v1, answering with numfed's contracts as well."""
    _reflection_v1_file()
    servicer = _Reflection(names, _message_files())
    serdes = {
        "request_deserializer": reflection_pb2.ServerReflectionRequest.FromString,
        "response_serializer": reflection_pb2.ServerReflectionResponse.SerializeToString,
    }
    for name in (reflection.SERVICE_NAME, REFLECTION_V1):
        handler = grpc.stream_stream_rpc_method_handler(servicer.ServerReflectionInfo, **serdes)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )


def server_options(
    limits: Limits, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[str, int]]:
    """The options of every numfed server: message size, keepalive and connection age.

    The server pings a connection that has been quiet for ``keepalive_time`` and closes it when
    the ping goes unanswered for ``keepalive_timeout``: the calls and streams of a dead or
    frozen client are cancelled, and the handlers' ``finally`` blocks give back what they
    held (an admission slot, a watch). grpc waits ``grpc.http2.ping_timeout_ms`` for a
    keepalive ping's ack (60 s by default) whatever ``grpc.keepalive_timeout_ms`` says, so both
    are set. Pings are sent on quiet streams too (``max_pings_without_data`` 0), and clients may
    ping as often as every ``MIN_KEEPALIVE_TIME / 2`` with no call open, so that a client
    keeping its own connection alive is never told to go away for pinging too much. A
    connection is asked to go away after ``max_connection_age`` and closed
    ``max_connection_age_grace`` later, so nothing lives on one connection forever (health
    Watch and reflection streams included).

    Rules: PLAT-OPS-7, CARR-OPS-7 (pings every 0.5 s on a quiet connection are accepted).
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout)),
        ("grpc.http2.ping_timeout_ms", _ms(limits.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS (grpc ignores unknown names).
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_KEEPALIVE_TIME / 2)),
        ("grpc.max_connection_age_ms", _ms(limits.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", _ms(limits.max_connection_age_grace)),
    ]


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def call_cap(admission: Admission, limits: Limits) -> int:
    """The most calls a server with ``admission`` holds at once, health, reflection and calls on
    their way to a refusal included: every class's slots and queue, plus
    ``limits.server_call_headroom``.

    Admission refuses on the event loop; when the loop itself is saturated, each excess call
    would wait for it before being refused. Past this cap gRPC refuses a new call at once
    (``maximum_concurrent_rpcs``): no request read, no handler, no status built, RESOURCE_EXHAUSTED
    with :data:`SERVER_CAP_DETAILS` and no ErrorInfo or RetryInfo (it has no trailers to carry
    them). Streams already open keep their place and go on; a call opened while the server is
    at its cap, a stream included, is refused like any other and retried with backoff. The
    headroom keeps the cap above what admission holds, so while the loop keeps up every
    refusal is admission's own, with its ErrorInfo. The cap makes a refusal cheap, not early:
    grpc.aio checks it when its serving loop, on the same event loop, takes the call from
    gRPC's core, and until then the call waits in the core's pending queue.
    """
    return admission.capacity + limits.server_call_headroom


def pending_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC's bounds on the calls its core holds for a server whose event loop has not taken
    them yet: past ``limits.server_pending_calls`` it cancels a growing share of new calls at
    once, past twice that every one (gRPC's backlog protector), and a call held longer than
    ``limits.server_pending_seconds`` is cancelled when the loop next takes a call; the caller
    sees CANCELLED either way.

    When the loop falls behind a crowd, a new call would otherwise wait in that backlog (up to
    1,000 calls, and 3,000 before every one is turned away; 30 s) before admission could even
    refuse it: seconds, and a client's deadline often passed first. grpc.aio takes one call of
    a method every few turns of the loop, so a backlog of 128 calls is 128 times that wait.
    Measured with ``bench.soak`` at 10x: the count bound, 30 s run: refusals of queries p99
    9.6 -> 3.7 s, calls ending DEADLINE_EXCEEDED 3,393 -> 0, releases accepted 947 -> 2,408;
    the time bound at 1 s besides, 60 s runs: refusals of queries p99 8.0 -> 1.2 s, of
    releases 4.9 -> 1.1 s, answered calls' p99 8.1 -> 1.9 s (loop lag 22 / 18 ms mean); the
    calls the time bound turned away, each after more than 1 s, end CANCELLED and are in
    neither figure, so part of that drop is the slowest calls leaving both."""
    return [
        ("grpc.server.max_pending_requests", limits.server_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 2 * limits.server_pending_calls),
        ("grpc.server_max_unrequested_time_in_server", limits.server_pending_seconds),
    ]


class ServerHandle:
    """A started server: its port, health servicer and a graceful stop."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health: health.aio.HealthServicer,
        *,
        address: str = "",
        serving: Mapping[str, bool] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health
        self.address = address
        self._serving: dict[str, bool] = dict(serving or {})
        """service -> SERVING?, as last set (transitions are logged)."""

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report ``service`` SERVING or NOT_SERVING in the health service; a change is logged."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await self.health.set(service, status)
        if self._serving.get(service) != serving:
            self._serving[service] = serving
            log.info("%s is %s", service, "SERVING" if serving else "NOT_SERVING")

    async def stop(self, grace: float | None = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        serving = sorted(s for s, on in self._serving.items() if on)
        if serving:
            log.info("%s NOT_SERVING: stopping", ", ".join(serving))
        self._serving = dict.fromkeys(self._serving, False)
        await self.server.stop(grace)


_UNIX_SCHEMES = ("unix:", "unix-abstract:")


def _check_bind(bind: str) -> None:
    """Refuse an address the server could not listen on, with the operating system's reason
    (CANNOT_LISTEN), before gRPC tries and fails with a bare RuntimeError. A Unix domain
    socket (``unix:PATH``, a platform's admin socket) is left to gRPC: its failure to bind is
    CANNOT_LISTEN too (:func:`start_server`)."""
    if bind.startswith(_UNIX_SCHEMES):
        return
    host, _, port_text = bind.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as exc:
        raise FailedPrecondition(
            "CANNOT_LISTEN", f"cannot listen on {bind}: not HOST:PORT ({exc})"
        ) from exc
    if port == 0:
        return
    failures: list[OSError] = []
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return  # gRPC can listen on at least this one
            except OSError as exc:
                failures.append(exc)
    if failures:
        first = failures[0]
        what = "address already in use" if first.errno == errno.EADDRINUSE else first.strerror
        raise FailedPrecondition("CANNOT_LISTEN", f"cannot listen on {bind}: {what}") from first


async def start_server(
    *,
    register: Iterable[Callable[[grpc.aio.Server], str]],
    credentials: grpc.ServerCredentials | None,
    policy: Policy | None,
    bind: str = "127.0.0.1:0",
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    admission: Admission | None = None,
    members: Members | None = None,
    revocations: RevocationList | None = None,
    initial_metadata: InitialMetadata | None = None,
    on_metadata: OnMetadata | None = None,
    limits: Limits | None = None,
    not_serving: Iterable[str] = (),
) -> ServerHandle:
    """Start a grpc.aio server with mTLS, the policy interceptor, health and reflection.

    Each ``register`` callable adds one servicer and returns its full service name. Returns once
    the server is listening; ``bind`` may use port 0. ``admission`` bounds concurrency per RPC
    class (see :class:`Admission`). ``members`` are the peers served at all (every other
    caller: PERMISSION_DENIED ``UNKNOWN_MEMBER``), ``revocations`` the CA's revocation list
    (a revoked certificate: UNAUTHENTICATED ``CERTIFICATE_REVOKED``); both apply to every
    method, health and reflection included. ``initial_metadata`` gives the metadata sent with
    each answer of the registered services (given the call's own request metadata),
    ``on_metadata`` is shown every admitted call's request metadata (both: the trust version
    hints, :mod:`numfed.trusthints`).
    ``credentials=None, policy=None`` starts a plaintext server without peer identities, for a
    carrier's own app channel only.

    ``limits`` (default: :class:`Limits` defaults) give the connection settings of
    :func:`server_options`; with ``admission``, they also cap the calls the server holds at
    once, below the event loop (:func:`call_cap`). Services named in ``not_serving`` start
    NOT_SERVING in the health service (until :meth:`ServerHandle.set_serving`; a platform's,
    until it holds a trust bundle); the others start SERVING. An address the server cannot
    listen on is FAILED_PRECONDITION ``CANNOT_LISTEN``. Reflection is served under
    ``grpc.reflection.v1`` and ``v1alpha``, and its file answers carry every file of numfed's
    contracts (:class:`_Reflection`).

    A client without a certificate (with ``credentials``) is refused in the TLS handshake, so it
    sees UNAVAILABLE: the server requires one (:func:`numfed.pki.server_credentials`) rather
    than admitting anonymous connections to refuse them UNAUTHENTICATED in every handler.

    Every call is timed into ``rpc_server_duration_seconds``; with tracing on
    (:mod:`numfed.observability.tracing`) each call of a registered service is a SERVER span.
    """
    if (credentials is None) != (policy is None):
        raise ValueError("a server without mTLS has no role policy, and one with mTLS needs one")
    if credentials is None and (members is not None or revocations is not None):
        raise ValueError("a server without mTLS has no peers to check")
    _check_bind(bind)
    limits = limits or Limits()
    server = grpc.aio.server(
        interceptors=[
            _Interceptor(
                policy,
                admission,
                members=members,
                revocations=revocations,
                initial_metadata=initial_metadata,
                on_metadata=on_metadata,
            ),
        ],
        options=server_options(limits, max_message_bytes)
        + (pending_options(limits) if admission is not None else []),
        maximum_concurrent_rpcs=call_cap(admission, limits) if admission is not None else None,
    )
    names = [reg(server) for reg in register]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names += [health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    _add_reflection(server, names)
    try:
        if credentials is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, credentials)
    except RuntimeError as exc:  # taken between the check above and now
        raise FailedPrecondition("CANNOT_LISTEN", f"cannot listen on {bind}") from exc
    if port == 0:
        raise FailedPrecondition("CANNOT_LISTEN", f"cannot listen on {bind}")
    await server.start()
    held = set(not_serving)
    serving = {name: name not in held for name in names if not name.startswith("grpc.")}
    for name in ["", *names]:
        on = serving.get(name, True)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if on
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await health_servicer.set(name, status)
    address = bind if bind.startswith(_UNIX_SCHEMES) else f"{bind.rpartition(':')[0]}:{port}"
    log.info(
        "listening on %s (%s%s)",
        address,
        ", ".join(n for n in names if not n.startswith("grpc.")),
        "" if credentials is not None else ", plaintext",
    )
    if admission is not None:
        metrics.add_source(admission)
    for name, on in serving.items():
        if on:
            log.info("%s is SERVING", name)
    return ServerHandle(server, port, health_servicer, address=address, serving=serving)
