"""Prometheus metrics: one registry per process, named after the gRPC and OpenTelemetry
conventions (``docs/operations.md`` lists every family).

Two kinds of families live here:

* **updated where things happen**, cheaply (about a microsecond each): a histogram
  observation or a counter increment per RPC, per call to a platform, per retry
  (``RPC_SERVER_DURATION``, ``PLATFORM_CALL_…``, ``RELEASE_…``). Label children are looked up
  once and kept (:class:`Children`), so the hot path pays one dictionary lookup and one
  locked add;
* **read when scraped**: state that already exists elsewhere (admission queues, breakers,
  release jobs, the event log, trust versions). Objects that hold such state register as a
  :class:`MetricSource`; a scrape first lets each source refresh what it reads from a database
  (at most once a second, off the event loop), then collects. Nothing of this costs anything
  between scrapes.

Every family of the process is served by :func:`exposition` on the loopback endpoint of
:mod:`numfed.observability.http`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "CALLS_THROTTLED",
    "CONTENT_TYPE",
    "EVENT_LOOP_LAG",
    "LAG_INTERVAL",
    "LATENCY_BUCKETS",
    "PLATFORM_BATCH_ITEMS",
    "PLATFORM_BREAKER_TRANSITIONS",
    "PLATFORM_CALLS_SKIPPED",
    "PLATFORM_CALL_DURATION",
    "PLATFORM_ITEMS_FAILED",
    "REGISTRY",
    "RELEASE_JOBS_ACCEPTED",
    "RELEASE_RETRIES",
    "RELEASE_TASKS_DONE",
    "RPC_SERVER_DURATION",
    "Cached",
    "Children",
    "MetricSource",
    "add_source",
    "exposition",
    "remove_source",
    "sample_event_loop_lag",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the exposition for nothing here

REGISTRY = CollectorRegistry(auto_describe=False)
"""The process's one registry: everything :func:`exposition` serves."""

ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds: from a refused call (sub-millisecond) to a WatchOperation stream (seconds)."""

RPC_SERVER_DURATION = Histogram(
    "rpc_server_duration_seconds",
    "Duration of each RPC this process served, from the call reaching numfed's interceptor "
    "to its status (OpenTelemetry rpc.server.duration).",
    ["rpc_service", "rpc_method", "rpc_grpc_status_code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

PLATFORM_CALL_DURATION = Histogram(
    "numfed_platform_call_duration_seconds",
    "Duration of each call the gateway made to a platform (a batch of queries or releases), "
    "by the call's gRPC status (DEADLINE_EXCEEDED when it timed out).",
    ["platform", "rpc_method", "rpc_grpc_status_code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

PLATFORM_CALLS_SKIPPED = Counter(
    "numfed_platform_calls_skipped",
    "Calls to a platform the gateway did not make because its circuit breaker was open.",
    ["platform", "rpc_method"],
    registry=REGISTRY,
)

PLATFORM_BATCH_ITEMS = Histogram(
    "numfed_platform_batch_items",
    "Claims in one call to a platform (queries of several holders travel in one batch).",
    ["platform", "rpc_method"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
    registry=REGISTRY,
)

PLATFORM_ITEMS_FAILED = Counter(
    "numfed_platform_items_failed",
    "Claims that failed on their own while their batch-mates were answered: the batch's call "
    "failed in a way one claim may cause and was bisected, or the claim alone was too large "
    "to send; by the reason each got (PLATFORM_ANSWER_TOO_LARGE, PLATFORM_ITEM_FAILED, "
    "PLATFORM_TIMEOUT when bisecting ran out of time, CLAIM_TOO_LARGE, …).",
    ["platform", "rpc_method", "reason"],
    registry=REGISTRY,
)

PLATFORM_BREAKER_TRANSITIONS = Counter(
    "numfed_platform_breaker_transitions",
    "Times a platform's circuit breaker entered a state (open, half_open, closed).",
    ["platform", "state"],
    registry=REGISTRY,
)

CALLS_THROTTLED = Counter(
    "numfed_calls_throttled",
    "Calls a client refused itself, unsent, while its server refused most of its calls for "
    "overload (adaptive throttling, numfed.throttle), by the method not called.",
    ["rpc_method"],
    registry=REGISTRY,
)

RELEASE_JOBS_ACCEPTED = Counter(
    "numfed_release_jobs_accepted",
    "Release jobs committed (durable) by this replica, by carrier; retries of an accepted "
    "request are not counted again.",
    ["carrier"],
    registry=REGISTRY,
)

RELEASE_RETRIES = Counter(
    "numfed_release_retries",
    "Release tasks put off for a later attempt because the platform did not answer (or its "
    "breaker was open), by platform.",
    ["platform"],
    registry=REGISTRY,
)

RELEASE_TASKS_DONE = Counter(
    "numfed_release_tasks_done",
    "Release tasks finished by this replica, by platform and outcome (FOUND: bindings "
    "released, NONE, REFUSED, EXPIRED: the job's deadline passed before the platform answered).",
    ["platform", "outcome"],
    registry=REGISTRY,
)

EVENT_LOOP_LAG = Histogram(
    "numfed_event_loop_lag_seconds",
    "How late a timer on the process's event loop ran, set every LAG_INTERVAL (0.25 s): how "
    "long anything ready to run waits for its turn, a new call gRPC's core holds for the loop "
    "included (each call grpc.aio takes costs a few turns).",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

LAG_INTERVAL = 0.25
"""Seconds between two samples of :data:`EVENT_LOOP_LAG`."""


async def sample_event_loop_lag(interval: float = LAG_INTERVAL) -> None:
    """Observe :data:`EVENT_LOOP_LAG` every ``interval`` seconds until cancelled: the time
    between when a ``sleep(interval)`` was due and when the loop ran it (>= 0 s). Like Node's
    event-loop delay monitor; about four wake-ups a second."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))


class Children:
    """Label children of one family, looked up once per label values and kept."""

    def __init__(self, family: Histogram | Counter, *fixed: str) -> None:
        self._family = family
        self._fixed = fixed
        self._children: dict[tuple[str, ...], Histogram | Counter] = {}

    def get(self, *values: str) -> Histogram | Counter:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._family.labels(*self._fixed, *values)
        return child

    def observe(self, value: float, *values: str) -> None:
        child = self.get(*values)
        assert isinstance(child, Histogram)
        child.observe(value)

    def inc(self, *values: str) -> None:
        child = self.get(*values)
        assert isinstance(child, Counter)
        child.inc()


@runtime_checkable
class MetricSource(Protocol):
    """An object whose state is read when the process is scraped."""

    def collect_metrics(self) -> Iterable[Metric]: ...


@runtime_checkable
class RefreshedSource(MetricSource, Protocol):
    """A source that first reads something slow (a database) before it can be collected."""

    async def refresh_metrics(self) -> None: ...


_sources: weakref.WeakSet[MetricSource] = weakref.WeakSet()


def add_source(source: MetricSource) -> None:
    """Collect ``source`` on every scrape while it lives (it is held weakly)."""
    _sources.add(source)


def remove_source(source: MetricSource) -> None:
    _sources.discard(source)


class _Sources(Collector):
    """Every registered source's families, merged by name (several platform links, say)."""

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for source in list(_sources):
            for family in source.collect_metrics():
                held = merged.get(family.name)
                if held is None:
                    merged[family.name] = family
                else:
                    held.samples.extend(family.samples)
        return list(merged.values())


REGISTRY.register(_Sources())


class Cached:
    """A value read by a slow function at most once per ``ttl`` seconds (on scrape)."""

    def __init__(self, read: Callable[[], Awaitable[None]], ttl: float = 1.0) -> None:
        self._read = read
        self._ttl = ttl
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._at < self._ttl:
                return
            await self._read()
            self._at = time.monotonic()


async def exposition(sources: Sequence[object] | None = None) -> bytes:
    """The Prometheus text exposition of the whole registry, after the refreshed sources have
    read their databases (a source whose refresh fails keeps its previous values)."""
    pending = [
        s.refresh_metrics()
        for s in (list(_sources) if sources is None else sources)
        if isinstance(s, RefreshedSource)
    ]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return generate_latest(REGISTRY)
