"""The gateway's links to platforms: one channel, one query batcher, a call cap and a breaker each.

Every call to a platform goes through the link's circuit breaker: while it is open, queries
for that platform fail at once with ``PLATFORM_CIRCUIT_OPEN`` and release batches are put off,
so a platform that hangs or fails holds no capacity that other platforms' traffic needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.batcher import Batcher
from gateway.breaker import Breaker, BreakerState
from numfed.config import Limits
from numfed.errors import Unavailable
from numfed.observability import metrics
from numfed.observability.logs import failure_reason
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = ["CircuitOpen", "PlatformLink"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class CircuitOpen(Unavailable):
    """The platform's breaker is open: the call was not made."""


QUERY = "BatchQueryBindings"
RELEASE = "BatchReleaseBindings"


class PlatformLink:
    """One platform as the gateway calls it. Each call is timed into
    ``numfed_platform_call_duration_seconds`` with its batch size; calls in flight, the
    breaker's state and the last error are read when scraped (:meth:`collect_metrics`) and by
    ``numfed status``."""

    def __init__(self, platform_id: str, channel: grpc.aio.Channel, limits: Limits) -> None:
        self.platform_id = platform_id
        self.in_flight = {QUERY: 0, RELEASE: 0}
        """Calls out to the platform now, by method."""
        self.last_error: tuple[float, str] | None = None
        """(wall-clock time, reason) of the last call that failed."""
        self._durations = metrics.Children(metrics.PLATFORM_CALL_DURATION, platform_id)
        self._sizes = metrics.Children(metrics.PLATFORM_BATCH_ITEMS, platform_id)
        self._skipped = metrics.Children(metrics.PLATFORM_CALLS_SKIPPED, platform_id)
        self.channel = channel
        self.stub = platform_pb2_grpc.PlatformServiceStub(channel)
        self.queries: Batcher[platform_pb2.QueryItem, platform_pb2.QueryItemResult] = Batcher(
            self._send_queries,
            max_items=limits.max_batch_items,
            max_in_flight=limits.max_in_flight_per_platform,
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

    async def _send_queries(
        self, items: Sequence[platform_pb2.QueryItem], timeout: float
    ) -> Sequence[platform_pb2.QueryItemResult]:
        request = platform_pb2.BatchQueryBindingsRequest(items=items)
        response = await self._guarded(
            QUERY, len(items), lambda: self.stub.BatchQueryBindings(request, timeout=timeout)
        )
        return _in_order([i.item_id for i in items], response.results)

    async def release(
        self, items: Sequence[platform_pb2.ReleaseItem], timeout: float
    ) -> Sequence[platform_pb2.ReleaseItemResult]:
        request = platform_pb2.BatchReleaseBindingsRequest(items=items)
        async with self.release_slots:
            response = await self._guarded(
                RELEASE,
                len(items),
                lambda: self.stub.BatchReleaseBindings(request, timeout=timeout),
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
