"""The gateway's links to platforms: one channel, one query batcher, a call cap, a breaker and a
health watch each.

Every call to a platform goes through the link's circuit breaker: while it is open, queries
for that platform fail at once with ``PLATFORM_CIRCUIT_OPEN`` and release batches are put off,
so a platform that hangs or fails holds no capacity that other platforms' traffic needs.

Each link also watches the platform's own word on whether it can serve: the gRPC health service
(``grpc.health.v1.Health/Watch``) for ``numfed.v1.PlatformService``, which a platform reports
SERVING only while it holds a verified trust bundle (rule PLAT-OPS-1). While it reports anything
else (NOT_SERVING, SERVICE_UNKNOWN, or no health service at all), queries for it fail at once with
``PLATFORM_NOT_SERVING`` and release batches and event pushes wait; none of this counts against its
breaker. Before the first answer, or while the watch cannot reach the platform, calls go ahead
(the breaker judges a platform that is down).

One claim never takes its batch-mates down. Batches are cut so that each request stays under
:data:`MAX_REQUEST_BYTES`; a claim larger than that alone is never sent (``CLAIM_TOO_LARGE``).
When a whole call fails in a way one claim may cause — RESOURCE_EXHAUSTED without a numfed
reason (a message over the cap, most likely the answer to one claim), INTERNAL or UNKNOWN (the
platform broke on something it was sent) — the batch is bisected (:func:`gateway.batcher.bisect`)
and only the claim at fault fails, ``PLATFORM_ANSWER_TOO_LARGE`` or ``PLATFORM_ITEM_FAILED``
(UNAVAILABLE: a release is retried). Being overloaded or down is the platform's state, not a
claim's, and fails the batch as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.batcher import Batcher, BatchTimeout, ItemTooLarge, bisect
from gateway.breaker import Breaker, BreakerState
from gateway.fanout import NOTHING, SPARSE_ANSWERS, Piece, batch_request
from numfed.config import Limits
from numfed.errors import InvalidArgument, NumfedError, Unavailable
from numfed.observability import metrics, tracing
from numfed.observability.logs import failure_reason
from numfed.rpc import MAX_MESSAGE_BYTES, error_status, rpc_error_info
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = [
    "MAX_REQUEST_BYTES",
    "PLATFORM_SERVICE",
    "CircuitOpen",
    "NotCalled",
    "PlatformLink",
    "PlatformNotServing",
    "item_size",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
PLATFORM_SERVICE = "numfed.v1.PlatformService"
"""The health service name a platform reports its readiness under."""
WATCH_BACKOFF = (0.2, 5.0)
"""Seconds before watching a platform's health again after the watch ended: first, at most."""

CLOSE_WAIT = 5.0
"""Seconds :meth:`PlatformLink.close` waits for the health watch to end once cancelled."""
_SERVING = health_pb2.HealthCheckResponse.SERVING
_UNKNOWN_SERVICE = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_HEALTH_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
"""The values of ``numfed_platform_health``'s ``status`` label."""

MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
"""Most bytes of items in one call to a platform: the message cap, less room for framing."""
_SPLIT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def item_size(item: Piece) -> int:
    """An item's bytes in its request (tag and length included)."""
    return item.size


def _too_large(exc: BaseException) -> bool:
    """A call that failed because a message was over the cap (grpc's own RESOURCE_EXHAUSTED,
    with no numfed reason), rather than a platform turning calls away."""
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and rpc_error_info(exc) is None
    )


def _splits(exc: Exception) -> bool:
    """Whether one item may be the cause of a whole call's failure."""
    if _too_large(exc):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _SPLIT_CODES


class NotCalled(Unavailable):
    """The gateway did not call the platform (it would not have been served)."""


class CircuitOpen(NotCalled):
    """The platform's breaker is open: the call was not made."""


class PlatformNotServing(NotCalled):
    """The platform's health does not report it SERVING: the call was not made."""


QUERY = "BatchQueryBindings"
RELEASE = "BatchReleaseBindings"


class PlatformLink:
    """One platform as the gateway calls it. Each call is timed into
    ``numfed_platform_call_duration_seconds`` with its batch size (each call of a bisected
    batch too), and each claim that fails on its own is counted in
    ``numfed_platform_items_failed_total``; calls in flight, the breaker's state and the last
    error are read when scraped (:meth:`collect_metrics`) and by ``numfed status``."""

    def __init__(
        self,
        platform_id: str,
        channel: grpc.aio.Channel,
        limits: Limits,
        *,
        metadata: Callable[[], Sequence[tuple[str, str]]] = tuple,
    ) -> None:
        self.platform_id = platform_id
        self.in_flight = {QUERY: 0, RELEASE: 0}
        """Calls out to the platform now, by method."""
        self.last_error: tuple[float, str] | None = None
        """(wall-clock time, reason) of the last call that failed."""
        self._durations = metrics.Children(metrics.PLATFORM_CALL_DURATION, platform_id)
        self._sizes = metrics.Children(metrics.PLATFORM_BATCH_ITEMS, platform_id)
        self._skipped = metrics.Children(metrics.PLATFORM_CALLS_SKIPPED, platform_id)
        self._items_failed = metrics.Children(metrics.PLATFORM_ITEMS_FAILED, platform_id)
        self.channel = channel
        self.stub = platform_pb2_grpc.PlatformServiceStub(channel)
        # Batches go out as the concatenation of their items' bytes, serialised once each
        # (gateway.fanout): these calls take a serialised request as it is.
        self._query_raw: grpc.aio.UnaryUnaryMultiCallable[
            bytes, platform_pb2.BatchQueryBindingsResponse
        ] = channel.unary_unary(
            "/numfed.v1.PlatformService/BatchQueryBindings",
            response_deserializer=platform_pb2.BatchQueryBindingsResponse.FromString,
        )
        self._release_raw: grpc.aio.UnaryUnaryMultiCallable[
            bytes, platform_pb2.BatchReleaseBindingsResponse
        ] = channel.unary_unary(
            "/numfed.v1.PlatformService/BatchReleaseBindings",
            response_deserializer=platform_pb2.BatchReleaseBindingsResponse.FromString,
        )
        self.metadata = metadata
        """Request metadata for each call, asked for at the time of the call (the gateway's
        trust versions, :mod:`numfed.trusthints`)."""
        self.queries: Batcher[Piece, platform_pb2.QueryItemResult] = Batcher(
            self._send_queries,
            max_items=limits.max_batch_items,
            max_in_flight=limits.max_in_flight_per_platform,
            max_bytes=MAX_REQUEST_BYTES,
            size=item_size,
        )
        self.release_slots = asyncio.Semaphore(limits.max_in_flight_per_platform)
        self.breaker = Breaker(
            failures=limits.breaker_failures,
            cooldown=limits.breaker_cooldown,
            on_change=self._breaker_changed,
        )
        self._health: int | None = None
        """The platform's last health status for PLATFORM_SERVICE; None: no word (yet)."""
        self._may_call = asyncio.Event()
        self._may_call.set()
        self._serving = asyncio.Event()
        self._changed = asyncio.Event()
        """Set (and replaced) at each change of health: what :meth:`until_health` waits on."""
        self._closed = False
        self._watch = asyncio.get_running_loop().create_task(self._watch_health())
        metrics.add_source(self)

    @property
    def health(self) -> str:
        """The platform's health as last reported (UNKNOWN before any word)."""
        if self._health is None:
            return "UNKNOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(self._health))

    def _heard(self, status: int | None) -> None:
        changed, self._health = status != self._health, status
        if changed:
            log.info("platform %s reports %s", self.platform_id, _name(status))
            self._changed.set()
            self._changed = asyncio.Event()
        for event, on in (
            (self._may_call, status in (None, _SERVING)),
            (self._serving, status == _SERVING),
        ):
            if on:
                event.set()
            else:
                event.clear()

    async def _watch_health(self) -> None:
        """Follow the platform's health for as long as the link lives."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        delay = WATCH_BACKOFF[0]
        # Not "while True": grpc may turn the cancellation of a stream it is setting up into an
        # AioRpcError (CANCELLED), which would swallow close()'s cancel.
        while not self._closed:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=PLATFORM_SERVICE))
                async for answer in call:
                    self._heard(answer.status)
                    delay = WATCH_BACKOFF[0]
                self._heard(None)  # the stream ended: no word until the next one
            except grpc.aio.AioRpcError as exc:
                # No health service at all is a platform that never says it can serve.
                self._heard(
                    _UNKNOWN_SERVICE if exc.code() is grpc.StatusCode.UNIMPLEMENTED else None
                )
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_BACKOFF[1])

    def check_serving(self) -> None:
        """Raise PlatformNotServing unless the platform may be called now."""
        if not self._may_call.is_set():
            raise PlatformNotServing(
                "PLATFORM_NOT_SERVING",
                f"{self.platform_id} reports {self.health} for {PLATFORM_SERVICE}; not calling it",
                metadata={"health": self.health},
            )

    async def until_callable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the platform may be called; whether it may."""
        try:
            async with asyncio.timeout(timeout):
                await self._may_call.wait()
        except TimeoutError:
            return False
        return True

    async def until_serving(self, timeout: float) -> None:
        """Wait until the platform has reported SERVING (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self._serving.wait()

    async def until_health(self, status: str, timeout: float) -> None:
        """Wait until :attr:`health` is ``status`` (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.health != status:
                await self._changed.wait()

    def _breaker_changed(self, state: BreakerState) -> None:
        metrics.PLATFORM_BREAKER_TRANSITIONS.labels(self.platform_id, state.value).inc()
        if state is BreakerState.HALF_OPEN:
            log.info("circuit to platform %s is now half_open (one probe call)", self.platform_id)
        else:
            log.warning("circuit to platform %s is now %s", self.platform_id, state.value)

    async def _guarded(self, method: str, size: int, call: Callable[[], Awaitable[T]]) -> T:
        """Make one call through the breaker, if the platform's health lets it be called; a
        failed or timed-out call counts against the breaker, a platform not serving does not."""
        self.check_serving()
        if not self.breaker.allow():
            self._skipped.inc(method)
            raise CircuitOpen(
                "PLATFORM_CIRCUIT_OPEN",
                f"{self.platform_id} failed repeatedly; not calling it for now",
                retry_after=self.breaker.retry_after(),
            )
        self._sizes.observe(size, method)
        self.in_flight[method] += 1
        start = time.perf_counter()
        code = "OK"
        try:
            result = await call()
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "DEADLINE_EXCEEDED"
            self.last_error = (time.time(), failure_reason(exc))
            if _too_large(exc):
                self.breaker.abandon()  # it answered, too much: no verdict on the platform
            else:
                self.breaker.failure()
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            self.breaker.abandon()  # the caller gave up: no verdict on the platform
            raise
        finally:
            self.in_flight[method] -= 1
            self._durations.observe(time.perf_counter() - start, method, code)
        self.breaker.success()
        return result

    def note_error(self, reason: str) -> None:
        """A failure outside the link's own calls (an event push, a SET delivery): the
        platform's last error from now."""
        self.last_error = (time.time(), reason)

    def collect_metrics(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "numfed_platform_breaker_state",
            "1 for the state the platform's circuit breaker is in (closed, open, half_open).",
            labels=["platform", "state"],
        )
        now = self.breaker.state
        for s in BreakerState:
            state.add_metric([self.platform_id, s.value], 1 if s is now else 0)
        flying = GaugeMetricFamily(
            "numfed_platform_calls_in_flight",
            "Calls out to the platform now, by method.",
            labels=["platform", "rpc_method"],
        )
        for method, n in self.in_flight.items():
            flying.add_metric([self.platform_id, method], n)
        health = GaugeMetricFamily(
            "numfed_platform_health",
            "1 for the health the platform last reported for numfed.v1.PlatformService (UNKNOWN:"
            " no word yet, or the watch cannot reach it); queries are sent only while SERVING.",
            labels=["platform", "status"],
        )
        for status in _HEALTH_STATUSES:
            health.add_metric([self.platform_id, status], 1 if status == self.health else 0)
        return [state, flying, health]

    def _item_failed(self, method: str, exc: Exception) -> NumfedError:
        """:meth:`_item_error`, counted by its reason."""
        err = self._item_error(exc)
        self._items_failed.inc(method, err.reason)
        return err

    def _item_error(self, exc: Exception) -> NumfedError:
        """Why one claim failed on its own (after bisection, or never sent)."""
        name = self.platform_id
        if isinstance(exc, ItemTooLarge):
            return InvalidArgument(
                "CLAIM_TOO_LARGE", f"the claim alone is too large to send to {name}: {exc}"
            )
        if isinstance(exc, NumfedError):
            return exc  # the breaker opened meanwhile
        if isinstance(exc, BatchTimeout | TimeoutError):
            return Unavailable("PLATFORM_TIMEOUT", f"{name} did not answer in time")
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code().name
            if _too_large(exc):
                return Unavailable(
                    "PLATFORM_ANSWER_TOO_LARGE",
                    f"{name}'s answer to this claim is over the {MAX_MESSAGE_BYTES}-byte message "
                    f"cap: {exc.details()}",
                    metadata={"code": code},
                )
            if exc.code() in _SPLIT_CODES:
                return Unavailable(
                    "PLATFORM_ITEM_FAILED",
                    f"{name} failed every call that carried this claim ({code}: "
                    f"{exc.details()}) and answered the others",
                    metadata={"code": code},
                )
            return Unavailable(
                "PLATFORM_UNAVAILABLE", f"{name} did not answer: {code}", metadata={"code": code}
            )
        return Unavailable("PLATFORM_BAD_ANSWER", f"{name}: {exc}")

    async def _send_queries(
        self, items: Sequence[Piece], timeout: float
    ) -> Sequence[platform_pb2.QueryItemResult]:
        """One result per item; an item at fault gets its error as its result (bisection), an
        item the platform left out of its sparse answer :data:`gateway.fanout.NOTHING`."""
        return await bisect(
            items,
            self._query_call,
            timeout,
            splits=_splits,
            failed=lambda item, exc: platform_pb2.QueryItemResult(
                item_id=item.item_id, status=error_status(self._item_failed(QUERY, exc))
            ),
            size=item_size,
            max_bytes=MAX_REQUEST_BYTES,
        )

    async def _query_call(
        self, items: Sequence[Piece], timeout: float
    ) -> Sequence[platform_pb2.QueryItemResult]:
        request = batch_request(items, SPARSE_ANSWERS)
        response: platform_pb2.BatchQueryBindingsResponse = await self._guarded(
            QUERY,
            len(items),
            lambda: self.call(QUERY, functools.partial(self._query_raw, request, timeout=timeout)),
        )
        ids = [i.item_id for i in items]
        if response.sparse:
            return _sparse_in_order(ids, response.results)
        return _in_order(ids, response.results)

    async def release(
        self, items: Sequence[Piece], timeout: float
    ) -> Sequence[platform_pb2.ReleaseItemResult]:
        """One result per item, as :meth:`_send_queries`; the batch holds one of the link's
        release slots while it is out, bisected or not."""
        async with self.release_slots:
            return await bisect(
                items,
                self._release_call,
                timeout,
                splits=_splits,
                failed=lambda item, exc: platform_pb2.ReleaseItemResult(
                    item_id=item.item_id, status=error_status(self._item_failed(RELEASE, exc))
                ),
                size=item_size,
                max_bytes=MAX_REQUEST_BYTES,
            )

    async def _release_call(
        self, items: Sequence[Piece], timeout: float
    ) -> Sequence[platform_pb2.ReleaseItemResult]:
        request = batch_request(items)
        response: platform_pb2.BatchReleaseBindingsResponse = await self._guarded(
            RELEASE,
            len(items),
            lambda: self.call(
                RELEASE, functools.partial(self._release_raw, request, timeout=timeout)
            ),
        )
        return _in_order([i.item_id for i in items], response.results)

    async def call(self, method: str, send: Callable[..., Awaitable[T]]) -> T:
        """Make one call of PlatformService's ``method`` (``"DeliverEvents"``, say): ``send`` gets
        the call's request metadata as ``metadata=``: the gateway's trust versions and, with
        tracing on, the context of the call's own client span (the channel has no tracing
        interceptor, :func:`numfed.observability.tracing.client_call`)."""
        with tracing.client_call(f"/{PLATFORM_SERVICE}/{method}") as traced:
            return await send(metadata=(*self.metadata(), *traced))

    async def close(self) -> None:
        """End the health watch and the batcher, then close the channel; never waits for good.

        The channel is closed before the watch is waited for: closing it cancels the watch's
        call inside grpc, wherever that call stands (a task cancel alone may reach a call still
        being set up, which grpc can turn into an error the watch handles, or not end it at
        all). The watch is then given :data:`CLOSE_WAIT` seconds, and left behind, logged, if
        it has not ended: a gateway's stop must not hang on one platform's link."""
        self._closed = True
        self._watch.cancel()
        metrics.remove_source(self)
        await self.queries.close()
        await self.channel.close()
        done, _ = await asyncio.wait([self._watch], timeout=CLOSE_WAIT)
        if not done:
            log.warning(
                "health watch of platform %s still running %s s after its link closed",
                self.platform_id,
                CLOSE_WAIT,
            )
        elif not self._watch.cancelled() and self._watch.exception() is not None:
            log.warning(
                "health watch of platform %s ended with %r",
                self.platform_id,
                self._watch.exception(),
            )


def _name(status: int | None) -> str:
    if status is None:
        return "nothing (no health answer)"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


class _HasItemId(Protocol):
    @property
    def item_id(self) -> str: ...


R = TypeVar("R", bound=_HasItemId)


def _in_order(item_ids: list[str], results: Sequence[R]) -> list[R]:
    by_id = {r.item_id: r for r in results}
    if set(by_id) != set(item_ids):
        raise ValueError("platform answered other items than it was asked")
    return [by_id[i] for i in item_ids]


def _sparse_in_order(
    item_ids: list[str], results: Sequence[platform_pb2.QueryItemResult]
) -> list[platform_pb2.QueryItemResult]:
    """A sparse answer's results by item, :data:`NOTHING` for the items it left out."""
    by_id = {r.item_id: r for r in results}
    if len(by_id) != len(results) or not by_id.keys() <= set(item_ids):
        raise ValueError("platform answered other items than it was asked")
    return [by_id.get(i, NOTHING) for i in item_ids]
