"""The gateway's links to platforms: one channel, one query batcher and a call cap each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, TypeVar

import grpc

from gateway.batcher import Batcher
from numfed.config import Limits
from numfed.v1 import platform_pb2, platform_pb2_grpc

__all__ = ["PlatformLink"]


class PlatformLink:
    def __init__(self, platform_id: str, channel: grpc.aio.Channel, limits: Limits) -> None:
        self.platform_id = platform_id
        self.channel = channel
        self.stub = platform_pb2_grpc.PlatformServiceStub(channel)
        self.queries: Batcher[platform_pb2.QueryItem, platform_pb2.QueryItemResult] = Batcher(
            self._send_queries,
            max_items=limits.max_batch_items,
            max_in_flight=limits.max_in_flight_per_platform,
        )
        self.release_slots = asyncio.Semaphore(limits.max_in_flight_per_platform)

    async def _send_queries(
        self, items: Sequence[platform_pb2.QueryItem], timeout: float
    ) -> Sequence[platform_pb2.QueryItemResult]:
        response = await self.stub.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(items=items), timeout=timeout
        )
        return _in_order([i.item_id for i in items], response.results)

    async def release(
        self, items: Sequence[platform_pb2.ReleaseItem], timeout: float
    ) -> Sequence[platform_pb2.ReleaseItemResult]:
        async with self.release_slots:
            response = await self.stub.BatchReleaseBindings(
                platform_pb2.BatchReleaseBindingsRequest(items=items), timeout=timeout
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
