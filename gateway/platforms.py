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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.batcher import Batcher
from gateway.breaker import Breaker, BreakerState
from numfed.config import Limits
from numfed.errors import Unavailable
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = ["PLATFORM_SERVICE", "CircuitOpen", "NotCalled", "PlatformLink", "PlatformNotServing"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PLATFORM_SERVICE = "numfed.v1.PlatformService"
"""The health service name a platform reports its readiness under."""
WATCH_BACKOFF = (0.2, 5.0)
"""Seconds before watching a platform's health again after the watch ended: first, at most."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_UNKNOWN_SERVICE = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class NotCalled(Unavailable):
    """The gateway did not call the platform (it would not have been served)."""


class CircuitOpen(NotCalled):
    """The platform's breaker is open: the call was not made."""


class PlatformNotServing(NotCalled):
    """The platform's health does not report it SERVING: the call was not made."""


class PlatformLink:
    def __init__(
        self,
        platform_id: str,
        channel: grpc.aio.Channel,
        limits: Limits,
        *,
        metadata: Callable[[], Sequence[tuple[str, str]]] = tuple,
    ) -> None:
        self.platform_id = platform_id
        self.channel = channel
        self.stub = platform_pb2_grpc.PlatformServiceStub(channel)
        self.metadata = metadata
        """Request metadata for each call, asked for at the time of the call (the gateway's
        trust versions, :mod:`numfed.trusthints`)."""
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
        self._health: int | None = None
        """The platform's last health status for PLATFORM_SERVICE; None: no word (yet)."""
        self._may_call = asyncio.Event()
        self._may_call.set()
        self._serving = asyncio.Event()
        self._changed = asyncio.Event()
        """Set (and replaced) at each change of health: what :meth:`until_health` waits on."""
        self._closed = False
        self._watch = asyncio.get_running_loop().create_task(self._watch_health())

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
            await asyncio.wait_for(self._may_call.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def until_serving(self, timeout: float) -> None:
        """Wait until the platform has reported SERVING (TimeoutError after ``timeout``)."""
        await asyncio.wait_for(self._serving.wait(), timeout)

    async def until_health(self, status: str, timeout: float) -> None:
        """Wait until :attr:`health` is ``status`` (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.health != status:
                await self._changed.wait()

    def _breaker_changed(self, state: BreakerState) -> None:
        log.warning("circuit to platform %s is now %s", self.platform_id, state.value)

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make one call through the breaker, if the platform's health lets it be called; a
        failed or timed-out call counts against the breaker, a platform not serving does not."""
        self.check_serving()
        if not self.breaker.allow():
            raise CircuitOpen(
                "PLATFORM_CIRCUIT_OPEN",
                f"{self.platform_id} failed repeatedly; not calling it for now",
                retry_after=self.breaker.retry_after(),
            )
        try:
            result = await call()
        except (grpc.aio.AioRpcError, TimeoutError):
            self.breaker.failure()
            raise
        except asyncio.CancelledError:
            self.breaker.abandon()  # the caller gave up: no verdict on the platform
            raise
        self.breaker.success()
        return result

    async def _send_queries(
        self, items: Sequence[platform_pb2.QueryItem], timeout: float
    ) -> Sequence[platform_pb2.QueryItemResult]:
        request = platform_pb2.BatchQueryBindingsRequest(items=items)
        response = await self._guarded(
            lambda: self.stub.BatchQueryBindings(request, timeout=timeout, metadata=self.metadata())
        )
        return _in_order([i.item_id for i in items], response.results)

    async def release(
        self, items: Sequence[platform_pb2.ReleaseItem], timeout: float
    ) -> Sequence[platform_pb2.ReleaseItemResult]:
        request = platform_pb2.BatchReleaseBindingsRequest(items=items)
        async with self.release_slots:
            response = await self._guarded(
                lambda: self.stub.BatchReleaseBindings(
                    request, timeout=timeout, metadata=self.metadata()
                )
            )
        return _in_order([i.item_id for i in items], response.results)

    async def close(self) -> None:
        self._closed = True
        self._watch.cancel()
        await asyncio.gather(self._watch, return_exceptions=True)
        await self.queries.close()
        await self.channel.close()


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
