"""The operator's dashboard: its Grafana JSON and a picture of each panel from a real run.

    python scripts/ops_pictures.py            # make ops-pictures: JSON, run, pictures
    python scripts/ops_pictures.py --json     # only docs/grafana/numfed.json

The panels are defined once, here (:data:`PANELS`); ``docs/grafana/numfed.json`` is written from
them (import it into Grafana, pick the Prometheus data source). The run starts a federation as
processes (a gateway, one carrier, three platforms) with a real Prometheus scraping every
second, offers queries, releases and lifecycle events for two minutes, takes one platform away
for forty seconds in the middle, sends one carrier's surge of queries near the end, and draws each panel from Prometheus' HTTP API into
``docs/img/ops/<panel>.png`` with the outage shaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RATE_INTERVAL = "10s"
"""What Grafana's ``$__rate_interval`` stands for in the pictures (a scrape every second)."""
DASHBOARD = ROOT / "docs" / "grafana" / "numfed.json"
PICTURES = ROOT / "docs" / "img" / "ops"


@dataclass(frozen=True)
class Panel:
    slug: str
    title: str
    unit: str
    """Grafana unit id (``s``, ``short``, ``reqps``, ``none``)."""
    targets: tuple[tuple[str, str], ...]
    """(PromQL, legend format)."""
    description: str


PANELS: tuple[Panel, ...] = (
    Panel(
        "rpc-rate",
        "Gateway RPCs per second, by method and status",
        "reqps",
        (
            (
                'sum by (rpc_method, rpc_grpc_status_code) (rate(rpc_server_duration_seconds_count{process="gateway"}[$__rate_interval]))',
                "{{rpc_method}} {{rpc_grpc_status_code}}",
            ),
        ),
        "Calls the gateway served; a status other than OK names the reason class.",
    ),
    Panel(
        "rpc-latency",
        "Gateway RPC latency p99, by method",
        "s",
        (
            (
                'histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_server_duration_seconds_bucket{process="gateway",rpc_method!="WatchOperation"}[$__rate_interval])))',
                "{{rpc_method}}",
            ),
        ),
        "A query's latency is its slowest platform's, bounded by platform_call_timeout.",
    ),
    Panel(
        "platform-latency",
        "Calls to platforms: latency p99, by platform",
        "s",
        (
            (
                "histogram_quantile(0.99, sum by (le, platform) (rate(numfed_platform_call_duration_seconds_bucket[$__rate_interval])))",
                "{{platform}}",
            ),
        ),
        "Each batch the gateway sends a platform (queries and releases).",
    ),
    Panel(
        "platform-outcomes",
        "Calls to platforms per second, by outcome",
        "reqps",
        (
            (
                "sum by (platform, rpc_grpc_status_code) (rate(numfed_platform_call_duration_seconds_count[$__rate_interval]))",
                "{{platform}} {{rpc_grpc_status_code}}",
            ),
            (
                "sum by (platform) (rate(numfed_platform_calls_skipped_total[$__rate_interval]))",
                "{{platform}} skipped (breaker open)",
            ),
        ),
        "UNAVAILABLE or DEADLINE_EXCEEDED: the platform failed the call; skipped: not called.",
    ),
    Panel(
        "breaker",
        "Circuit breakers open",
        "none",
        (('max by (platform) (numfed_platform_breaker_state{state!="closed"})', "{{platform}}"),),
        "1 while a platform's breaker is open or half-open (calls fail fast).",
    ),
    Panel(
        "in-flight",
        "Calls in flight to each platform",
        "none",
        (("sum by (platform) (numfed_platform_calls_in_flight)", "{{platform}}"),),
        "Bounded by max_in_flight_per_platform for queries and for releases.",
    ),
    Panel(
        "batch-size",
        "Claims per call to a platform",
        "none",
        (
            (
                "sum by (platform) (rate(numfed_platform_batch_items_sum[$__rate_interval])) / sum by (platform) (rate(numfed_platform_batch_items_count[$__rate_interval]))",
                "{{platform}}",
            ),
        ),
        "Holders' queries at the same moment travel in one call.",
    ),
    Panel(
        "admission",
        "Admission: calls queued, and turned away per second",
        "none",
        (
            ("sum by (rpc_class) (numfed_admission_queue_depth)", "{{rpc_class}} queued"),
            (
                "sum by (rpc_class, reason) (rate(numfed_admission_rejections_total[$__rate_interval]))",
                "{{rpc_class}} {{reason}}/s",
            ),
        ),
        "Rejections are RESOURCE_EXHAUSTED: the gateway shedding load, by design.",
    ),
    Panel(
        "release-jobs",
        "Release jobs open, and the age of the oldest",
        "none",
        (
            ("numfed_release_jobs_open", "open jobs"),
            ("numfed_release_jobs_oldest_open_age_seconds", "oldest (s)"),
        ),
        "A job stays open until every platform answered or its deadline passed.",
    ),
    Panel(
        "release-tasks",
        "Release tasks waiting per platform, and retries per second",
        "none",
        (
            ("numfed_release_tasks_open", "{{platform}} waiting"),
            (
                "sum by (platform) (rate(numfed_release_retries_total[$__rate_interval]))",
                "{{platform}} retries/s",
            ),
        ),
        "Tasks of a platform that does not answer wait and are retried with backoff.",
    ),
    Panel(
        "event-lag",
        "Event log: batches each platform has not acknowledged",
        "none",
        (("numfed_event_lag_batches", "{{platform}}"),),
        "Rises while a platform is away; falls when it acknowledges again.",
    ),
    Panel(
        "trust-expiry",
        "Trust bundle held: days until it expires",
        "none",
        (("numfed_trust_bundle_expires_in_seconds / 86400", "{{process}}"),),
        "Publish the next bundle well before this reaches zero: claims are refused after.",
    ),
    Panel(
        "audit",
        "Audit chain length",
        "none",
        (("numfed_audit_chain_length", "entries"),),
        "Grows with every claim, job, delivery and event; never shrinks.",
    ),
)


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana imports it, one time-series panel per :data:`PANELS` entry."""
    panels = []
    for i, panel in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
                    }
                    for j, (expr, legend) in enumerate(panel.targets)
                ],
            }
        )
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "title": "numfed federation",
        "uid": "numfed",
        "description": "The gateway, its members and the work in hand (docs/operations.md).",
        "tags": ["numfed"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def write_dashboard(path: Path = DASHBOARD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grafana_dashboard(), indent=2) + "\n")


# -- the run ------------------------------------------------------------------------------------


async def _drive(root: Path, seconds: float, outage: tuple[float, float]) -> tuple[float, float]:
    """Start everything, offer traffic for ``seconds``, take taobao away during ``outage``
    (seconds after the start); return the wall-clock start and end."""
    sys.path.insert(0, str(ROOT))
    from numfed import pki
    from numfed.claims import Purpose, TenureClaim, sign_claim
    from numfed.events import EventKind, LifecycleEvent, sign_event_batch
    from numfed.federation import NUMBER_RANGES
    from numfed.identity import PeerId, Role
    from numfed.scenario import demo_scenario
    from numfed.testing.federation import spawn_federation, wait_serving
    from numfed.testing.prometheus import TempPrometheus
    from numfed.v1 import gateway_pb2, gateway_pb2_grpc

    world = demo_scenario()
    fed = await spawn_federation(
        root / "fed",
        carriers=["cmcc"],
        platforms=["weibo", "taobao", "douyin"],
        metrics=True,
        # The query class bounded small, so that the surge near the end is shed.
        limits={
            "retry_max_backoff": 2.0,
            "max_concurrent_queries": 8,
            "max_queued_queries": 16,
            "caller_share": 1.0,
        },
    )
    prom = TempPrometheus(root / "prometheus", fed.layout.metrics_endpoints).start()
    layout = fed.layout
    signer = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    now = datetime.now(UTC)
    numbers = [
        (n, h.tenure_start(now))
        for n, h in sorted(world.histories.items())
        if n.startswith(NUMBER_RANGES["cmcc"])
        and h.carrier_at(now) == "cmcc"
        and h.current_tenure(now) is not None
    ]
    peer = PeerId(Role.CARRIER, "cmcc")
    channel = pki.secure_channel(layout.gateway_endpoint, layout.pki_dir, peer, server=pki.GATEWAY)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)

    def claim(purpose: Purpose, i: int) -> Any:
        number, x = numbers[i % len(numbers)]
        c = TenureClaim.new(
            number=number, carrier_id="cmcc", tenure_start=x, purpose=purpose, now=datetime.now(UTC)
        )
        return sign_claim(c, signer).to_proto()

    start = time.time()
    i = 0
    down = False
    try:
        while (elapsed := time.time() - start) < seconds:
            i += 1
            if not down and outage[0] <= elapsed < outage[1]:
                fed.stop("platform-taobao", signal.SIGKILL)
                down = True
            if down and elapsed >= outage[1]:
                fed.restart("platform-taobao")
                await wait_serving(
                    layout.platform_endpoints["taobao"],
                    layout.pki_dir,
                    PeerId(Role.PLATFORM, "taobao"),
                    "numfed.v1.PlatformService",
                )
                down = False
            # Near the end, one carrier's surge: more queries at once than the query class
            # holds running and queued, so the admission panel shows load shed (the carrier
            # holds the whole class: CALLER_OVERLOADED).
            surge = seconds - 15 <= elapsed < seconds - 12
            queries = [
                stub.QueryBindings(
                    gateway_pb2.QueryBindingsRequest(claim=claim(Purpose.QUERY_PRIOR, i * 8 + k)),
                    timeout=5,
                )
                for k in range(160 if surge else 8)
            ]
            await asyncio.gather(*queries, return_exceptions=True)
            if i % 4 == 0:
                await stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=uuid.uuid4().hex, claim=claim(Purpose.RELEASE_PRIOR, i)
                    ),
                    timeout=5,
                )
            if i % 10 == 0:
                number, _x = numbers[i % len(numbers)]
                event = LifecycleEvent(
                    secrets.token_bytes(16), number, EventKind.DEACTIVATED, datetime.now(UTC)
                )
                batch = sign_event_batch("cmcc", [event], signer, now=datetime.now(UTC))
                await stub.PublishEvents(
                    gateway_pb2.PublishEventsRequest(batch=batch.to_proto()), timeout=5
                )
            await asyncio.sleep(0.5)
        end = time.time()
        await asyncio.sleep(3)  # the last scrapes
        _draw(prom, start, end + 2, (start + outage[0], start + outage[1]))
    finally:
        await channel.close()
        prom.stop()
        await asyncio.to_thread(fed.stop_all)
    return start, end


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def _draw(prom: Any, start: float, end: float, outage: tuple[float, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PICTURES.mkdir(parents=True, exist_ok=True)
    for panel in PANELS:
        fig, ax = plt.subplots(figsize=(7, 2.8))
        drawn = []
        for expr, legend in panel.targets:
            query = expr.replace("$__rate_interval", RATE_INTERVAL)
            for series in prom.query_range(query, start, end, 2.0):
                xs = [float(t) - start for t, _v in series["values"]]
                ys = [float(v) for _t, v in series["values"]]
                drawn.append((xs, ys, _legend(legend, series["metric"]) or expr[:30]))
        # Many series that stayed at zero (no load shed in this run, say) say nothing: one
        # line stands for them.
        flat = [d for d in drawn if not any(d[1])]
        if len(drawn) > 4 and flat:
            moved = [d for d in drawn if any(d[1])]
            label = "all others at 0" if moved else "all at 0 in this run"
            drawn = [*moved, (flat[0][0], flat[0][1], label)]
        for xs, ys, label in drawn:
            ax.plot(xs, ys, label=label)
        ax.axvspan(outage[0] - start, outage[1] - start, color="tab:red", alpha=0.08)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("seconds (shaded: taobao down)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        fig.tight_layout()
        fig.savefig(PICTURES / f"{panel.slug}.png", dpi=90)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/ops_pictures.py", description=__doc__)
    parser.add_argument("--json", action="store_true", help="only write the Grafana JSON")
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    write_dashboard()
    print(f"wrote {DASHBOARD.relative_to(ROOT)}")
    if args.json:
        return 0
    third = args.seconds / 3
    with tempfile.TemporaryDirectory(prefix="numfed-ops-") as tmp:
        asyncio.run(_drive(Path(tmp), args.seconds, (third, third + 40.0)))
    print(f"wrote {len(PANELS)} pictures in {PICTURES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
