"""The gateway's links to platforms: one channel, one query batcher, a call cap and a breaker each.

Every call to a platform goes through the link's circuit breaker: while it is open, queries
for that platform fail at once with ``PLATFORM_CIRCUIT_OPEN`` and release batches are put off,
so a platform that hangs or fails holds no capacity that other platforms' traffic needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from gateway.batcher import Batcher
from gateway.breaker import Breaker, BreakerState
from numfed.config import Limits
from numfed.errors import Unavailable
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = ["CircuitOpen", "PlatformLink"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class CircuitOpen(Unavailable):
    """The platform's breaker is open: the call was not made."""


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

    def _breaker_changed(self, state: BreakerState) -> None:
        log.warning("circuit to platform %s is now %s", self.platform_id, state.value)

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make one call through the breaker; a failed or timed-out call counts against it."""
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
