"""A reference platform seen from outside: the trust it holds and its dead letters (the event
batches it set aside, ``platform_stubs.store.dead_letters``; read when scraped)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from numfed.observability.metrics import Cached
from numfed.observability.trust import TrustSource
from platform_stubs.store import PlatformStore
from platform_stubs.trustclient import TrustClient

__all__ = ["PlatformObserver"]


class PlatformObserver:
    def __init__(self, store: PlatformStore, trust: TrustClient) -> None:
        self._store = store
        self._trust = TrustSource(lambda: trust.state if trust.ready.is_set() else None)
        self._dead: int | None = None
        self._cache = Cached(self._read, ttl=1.0)

    async def _read(self) -> None:
        self._dead = await self._store.run(self._store.dead_letter_count)

    async def refresh_metrics(self) -> None:
        await self._cache.refresh()

    def collect_metrics(self) -> Iterable[Metric]:
        out = list(self._trust.collect_metrics())
        if self._dead is not None:
            out.append(
                GaugeMetricFamily(
                    "numfed_event_dead_letters",
                    "Event batches this platform set aside as dead letters (acknowledged, not "
                    "applied; numfed platform dead-letters list / replay).",
                    value=self._dead,
                )
            )
        return out
