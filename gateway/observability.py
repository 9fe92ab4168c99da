"""The gateway seen from outside: its metrics read when scraped, and its ``/status`` document.

Release jobs, the event log and the audit chain are read from the database at most once a
second (:func:`gateway.status.read_snapshot`, on the store's own thread); members' breakers,
calls in flight and last errors live in this process and are read as they are. ``/status`` is
what ``numfed status`` shows; it is served on the loopback metrics endpoint only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.results import now_us
from gateway.status import DbSnapshot, read_snapshot
from numfed.observability.logs import failure_reason
from numfed.observability.metrics import Cached
from numfed.observability.trust import TrustSource, trust_figures

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["CarrierHealth", "GatewayObserver"]

log = logging.getLogger(__name__)


@dataclass
class CarrierHealth:
    """What the gateway last saw of a carrier: its last sync and its last failure."""

    synced_at: float | None = None
    last_error: tuple[float, str] | None = None

    def failed(self, exc: BaseException) -> None:
        self.last_error = (time.time(), failure_reason(exc))


def _when(at: tuple[float, str] | None) -> dict[str, Any] | None:
    if at is None:
        return None
    return {"at": datetime.fromtimestamp(at[0], UTC).isoformat(), "reason": at[1]}


@dataclass(eq=False)
class GatewayObserver:
    gateway: Gateway
    snapshot: DbSnapshot = field(default_factory=lambda: DbSnapshot(at_us=0))
    _cache: Cached | None = None
    _trust: TrustSource | None = None
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._cache = Cached(self._read, ttl=1.0)
        gw = self.gateway
        self._trust = TrustSource(lambda: gw.trust)

    def _platform_ids(self) -> list[str]:
        return [m.id for m in self.gateway.config.platforms]

    async def _read(self) -> None:
        gw = self.gateway
        self.snapshot = await gw.store.run(
            read_snapshot, gw.store.engine, self._platform_ids(), now_us()
        )

    async def refresh_metrics(self) -> None:
        assert self._cache is not None
        try:
            await self._cache.refresh()
        except Exception as exc:  # the database away: the last figures stay
            log.debug("reading the status figures failed (%s)", failure_reason(exc))

    def collect_metrics(self) -> Iterable[Metric]:
        snap = self.snapshot
        platforms = self._platform_ids()
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            out.append(GaugeMetricFamily(name, doc, value=value))

        def per_platform(name: str, doc: str, value: Callable[[str], float]) -> None:
            family = GaugeMetricFamily(name, doc, labels=["platform"])
            for p in platforms:
                family.add_metric([p], value(p))
            out.append(family)

        gauge(
            "numfed_release_jobs_open",
            "Release jobs with at least one platform still to answer (all replicas).",
            snap.open_jobs,
        )
        gauge(
            "numfed_release_jobs_oldest_open_age_seconds",
            "Age of the oldest open release job (0 when none is open).",
            snap.oldest_open_age(),
        )
        per_platform(
            "numfed_release_tasks_open",
            "Release tasks waiting for the platform (all replicas).",
            lambda p: snap.tasks_open.get(p, 0),
        )
        per_platform(
            "numfed_release_tasks_retrying",
            "Open release tasks tried at least once already: the platform has not answered.",
            lambda p: snap.tasks_retrying.get(p, 0),
        )
        gauge(
            "numfed_event_log_head_seq",
            "Sequence number of the newest batch in the event log.",
            snap.event_head,
        )
        per_platform(
            "numfed_event_lag_batches",
            "Batches in the event log the platform has not acknowledged.",
            snap.event_lag,
        )
        per_platform(
            "numfed_event_lag_seconds",
            "How long the oldest batch the platform has not acknowledged has waited.",
            snap.event_lag_seconds,
        )
        gauge("numfed_audit_chain_length", "Entries in the audit hash chain.", snap.audit_length)
        audit = self.gateway.audit
        gauge(
            "numfed_audit_backlog",
            "Audit records in this replica's memory, not written yet (the database refusing "
            "writes); new audited work is refused AUDIT_BACKLOG at numfed_audit_backlog_limit.",
            audit.backlog,
        )
        gauge(
            "numfed_audit_backlog_limit",
            "limits.audit_max_backlog: the audit backlog at which new audited work is refused.",
            audit.max_backlog,
        )
        if snap.checkpoint_size is not None:
            gauge(
                "numfed_audit_last_checkpoint_size",
                "Chain length the newest signed audit checkpoint covers.",
                snap.checkpoint_size,
            )
        if snap.checkpoint_issued_us is not None:
            gauge(
                "numfed_audit_last_checkpoint_timestamp_seconds",
                "When the newest audit checkpoint was signed (Unix time).",
                snap.checkpoint_issued_us / 1e6,
            )
        assert self._trust is not None
        out += list(self._trust.collect_metrics())
        up = GaugeMetricFamily(
            "numfed_gateway_serving",
            "1 while the gateway reports SERVING (every carrier synced, not stopping).",
            value=1 if self.gateway.serving else 0,
        )
        out.append(up)
        return out

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: this gateway, its members as it sees them, the work in
        hand, and the trust it holds."""
        gw = self.gateway
        platforms = []
        for member in gw.config.platforms:
            link = gw.links.get(member.id)
            platforms.append(
                {
                    "id": member.id,
                    "endpoint": member.endpoint,
                    "events": member.events,
                    "breaker": link.breaker.state.value if link is not None else None,
                    "health_seen": link.health if link is not None else None,
                    "calls_in_flight": dict(link.in_flight) if link is not None else {},
                    "last_error": _when(link.last_error) if link is not None else None,
                }
            )
        carriers = []
        for member in gw.config.carriers:
            seen = gw.carrier_health.get(member.id, CarrierHealth())
            carriers.append(
                {
                    "id": member.id,
                    "endpoint": member.endpoint,
                    "synced": member.id in gw.synced,
                    "last_sync": (
                        datetime.fromtimestamp(seen.synced_at, UTC).isoformat()
                        if seen.synced_at is not None
                        else None
                    ),
                    "last_error": _when(seen.last_error),
                }
            )
        return {
            "gateway": {
                "listen": gw.config.listen,
                "replica": gw.dispatcher.owner,
                "serving": gw.serving,
                "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(),
                "snapshot_at": (
                    datetime.fromtimestamp(self.snapshot.at_us / 1e6, UTC).isoformat()
                    if self.snapshot.at_us
                    else None
                ),
            },
            "carriers": carriers,
            "platforms": platforms,
            **self.snapshot.to_json([m.id for m in gw.config.platforms]),
            "trust": trust_figures(gw.trust),
        }

    async def status_json(self) -> tuple[str, bytes]:
        await self.refresh_metrics()
        return "application/json", (json.dumps(self.status(), indent=2) + "\n").encode()
