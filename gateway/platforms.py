"""The gateway's links to platforms: one channel, one query batcher, a call cap and a breaker each.

Every call to a platform goes through the link's circuit breaker: while it is open, queries
for that platform fail at once with ``PLATFORM_CIRCUIT_OPEN`` and release batches are put off,
so a platform that hangs or fails holds no capacity that other platforms' traffic needs.

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
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.batcher import Batcher, BatchTimeout, ItemTooLarge, bisect
from gateway.breaker import Breaker, BreakerState
from gateway.fanout import NOTHING, SPARSE_ANSWERS, Piece, batch_request
from numfed.config import Limits
from numfed.errors import InvalidArgument, NumfedError, Unavailable
from numfed.observability import metrics
from numfed.observability.logs import failure_reason
from numfed.rpc import MAX_MESSAGE_BYTES, error_status, rpc_error_info
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = ["MAX_REQUEST_BYTES", "CircuitOpen", "PlatformLink", "item_size"]

log = logging.getLogger(__name__)
T = TypeVar("T")

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


class CircuitOpen(Unavailable):
    """The platform's breaker is open: the call was not made."""


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
        metrics.add_source(self)

    def _breaker_changed(self, state: BreakerState) -> None:
        metrics.PLATFORM_BREAKER_TRANSITIONS.labels(self.platform_id, state.value).inc()
        if state is BreakerState.HALF_OPEN:
            log.info("circuit to platform %s is now half_open (one probe call)", self.platform_id)
        else:
            log.warning("circuit to platform %s is now %s", self.platform_id, state.value)

    async def _guarded(self, method: str, size: int, call: Callable[[], Awaitable[T]]) -> T:
        """Make one call through the breaker; a failed or timed-out call counts against it."""
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
        return [state, flying]

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
            lambda: self._query_raw(request, timeout=timeout, metadata=self.metadata()),
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
            lambda: self._release_raw(request, timeout=timeout, metadata=self.metadata()),
        )
        return _in_order([i.item_id for i in items], response.results)

    async def close(self) -> None:
        metrics.remove_source(self)
        await self.queries.close()
        await self.channel.close()


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
