"""A real Prometheus scrapes a federation of processes: the series an operator's dashboard reads
are there after a query and a release, and show a platform outage (its breaker open, its event
lag and release tasks rising) and its recovery (breaker closed, lag back to zero)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from numfed import pki
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import NUMBER_RANGES, FederationLayout
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing.federation import FederationProcesses, spawn_federation, wait_serving
from numfed.testing.prometheus import PrometheusUnavailable, TempPrometheus
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.holder import PRIOR, HolderApp

WORLD = demo_scenario()
PLATFORMS = ("weibo", "taobao")
CARRIER = "cmcc"
FAST = {"retry_max_backoff": 1.0, "breaker_cooldown": 1.0, "breaker_failures": 3}
"""Retries and breakers quick enough for a test; the same code paths as the defaults."""


def numbers_of(carrier: str) -> Iterator[tuple[str, str]]:
    """(number, holder id) of numbers in ``carrier``'s own blocks that it serves now, with a
    current holder."""
    now = datetime.now(UTC)
    for number, history in sorted(WORLD.histories.items()):
        tenure = history.current_tenure(now)
        in_plan = number.startswith(NUMBER_RANGES[carrier])
        if in_plan and history.carrier_at(now) == carrier and tenure is not None:
            yield number, tenure.holder_id


async def holder(
    layout: FederationLayout, number: str, holder_id: str, channels: list[grpc.aio.Channel]
) -> HolderApp:
    """A verified holder on the carrier's app channel (added to ``channels``, to close)."""
    channel = grpc.aio.insecure_channel(layout.holder_endpoints[CARRIER])
    channels.append(channel)
    state = layout.root / "state" / f"carrier-{CARRIER}"
    return await HolderApp.verified(channel, state, number, WORLD.holders[holder_id])


async def publish_deactivation(layout: FederationLayout, number: str) -> None:
    """One signed lifecycle batch, published as the carrier's operator would."""
    event = LifecycleEvent(
        secrets.token_bytes(16), number, EventKind.DEACTIVATED, datetime.now(UTC)
    )
    envelope = sign_event_batch(
        CARRIER, [event], pki.load_carrier_signer(layout.pki_dir, CARRIER), now=datetime.now(UTC)
    )
    peer = PeerId(Role.CARRIER, CARRIER)
    async with pki.secure_channel(
        layout.gateway_endpoint, layout.pki_dir, peer, server=pki.GATEWAY
    ) as channel:
        await gateway_pb2_grpc.GatewayServiceStub(channel).PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=envelope.to_proto()), timeout=5
        )


async def eventually(
    prom: TempPrometheus, promql: str, ok: Callable[[float | None], bool], within: float = 30
) -> float | None:
    """Poll ``promql`` until ``ok(value)``; fail with the last value seen."""
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(prom.value, promql)
        if ok(value):
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"{promql} = {value} after {within} s")


@pytest.mark.timeout(300)
async def test_prometheus_sees_queries_releases_and_a_platform_outage(tmp_path: Path) -> None:
    fed: FederationProcesses = await spawn_federation(
        tmp_path / "fed", carriers=[CARRIER], platforms=PLATFORMS, metrics=True, limits=FAST
    )
    prom = TempPrometheus(tmp_path / "prometheus", fed.layout.metrics_endpoints)
    channels: list[grpc.aio.Channel] = []
    try:
        try:
            await asyncio.to_thread(prom.start)
        except PrometheusUnavailable as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(str(exc))
        await eventually(prom, 'count(up{job="numfed"} == 1)', lambda v: v == 4)
        # Every process serves the RPC histogram and the process metrics; each verifier its
        # trust versions; the gateway its admission bounds.
        assert await eventually(
            prom, 'numfed_admission_limit{rpc_class="query",kind="concurrency"}', lambda v: v == 64
        )
        for p in PLATFORMS:
            await eventually(
                prom, f'numfed_trust_bundle_version{{process="platform-{p}"}}', lambda v: v == 1
            )
        await eventually(
            prom,
            'numfed_trust_bundle_expires_in_seconds{process="gateway"}',
            lambda v: (v or 0) > 86400,
        )

        numbers = numbers_of(CARRIER)
        first = next(numbers)
        app = await holder(fed.layout, *first, channels)
        await app.query(PRIOR)
        await eventually(
            prom,
            'sum(rpc_server_duration_seconds_count{process="gateway",rpc_method="QueryBindings",'
            'rpc_grpc_status_code="OK"})',
            lambda v: v == 1,
        )
        await eventually(
            prom,
            'sum(rpc_server_duration_seconds_count{process="carrier-cmcc",'
            'rpc_method="QueryHolderBindings"})',
            lambda v: v == 1,
        )
        for p in PLATFORMS:
            await eventually(
                prom,
                f'sum(numfed_platform_call_duration_seconds_count{{platform="{p}",'
                f'rpc_method="BatchQueryBindings",rpc_grpc_status_code="OK"}})',
                lambda v: v == 1,
            )
            await eventually(
                prom,
                f'sum(rpc_server_duration_seconds_count{{process="platform-{p}",'
                f'rpc_method="BatchQueryBindings"}})',
                lambda v: v == 1,
            )

        op = await app.release(PRIOR)
        assert (await app.watch(op.name))[-1].done
        await eventually(
            prom, 'numfed_release_jobs_accepted_total{carrier="cmcc"}', lambda v: v == 1
        )
        await eventually(prom, "sum(numfed_release_tasks_done_total)", lambda v: v == 2)
        await eventually(prom, "numfed_release_jobs_open", lambda v: v == 0)
        await eventually(prom, "numfed_audit_chain_length", lambda v: (v or 0) > 0)

        # taobao goes away: its releases wait and retry until its breaker opens, and the
        # events it has not acknowledged pile up; weibo carries on.
        fed.stop("platform-taobao", signal.SIGKILL)
        await eventually(prom, 'up{process="platform-taobao"}', lambda v: v == 0)
        second = await holder(fed.layout, *next(numbers), channels)
        await second.release(PRIOR)
        await eventually(
            prom, 'numfed_platform_breaker_state{platform="taobao",state="open"}', lambda v: v == 1
        )
        await eventually(
            prom, 'numfed_release_tasks_open{platform="taobao"}', lambda v: (v or 0) >= 1
        )
        await eventually(
            prom, 'numfed_release_retries_total{platform="taobao"}', lambda v: (v or 0) >= 1
        )
        await eventually(prom, 'numfed_release_tasks_open{platform="weibo"}', lambda v: v == 0)
        await eventually(
            prom,
            'sum(numfed_platform_call_duration_seconds_count{platform="taobao",'
            'rpc_grpc_status_code="UNAVAILABLE"})',
            lambda v: (v or 0) >= 1,
        )
        await publish_deactivation(fed.layout, first[0])
        await eventually(
            prom, 'numfed_event_lag_batches{platform="taobao"}', lambda v: (v or 0) >= 1
        )
        await eventually(
            prom, 'numfed_event_lag_seconds{platform="taobao"}', lambda v: (v or 0) > 1
        )
        await eventually(prom, 'numfed_event_lag_batches{platform="weibo"}', lambda v: v == 0)
        status = await asyncio.to_thread(prom.value, "numfed_gateway_serving")
        assert status == 1  # one platform down does not take the gateway down

        # taobao is back: the next retry closes its breaker, the release completes, the events
        # are delivered, and the lag falls back to zero.
        fed.restart("platform-taobao")
        await wait_serving(
            fed.layout.platform_endpoints["taobao"],
            fed.layout.pki_dir,
            PeerId(Role.PLATFORM, "taobao"),
            "numfed.v1.PlatformService",
        )
        await eventually(
            prom,
            'numfed_platform_breaker_state{platform="taobao",state="closed"}',
            lambda v: v == 1,
            within=60,
        )
        await eventually(prom, 'numfed_release_tasks_open{platform="taobao"}', lambda v: v == 0)
        await eventually(prom, "numfed_release_jobs_open", lambda v: v == 0)
        await eventually(
            prom, 'numfed_event_lag_batches{platform="taobao"}', lambda v: v == 0, within=60
        )
        await eventually(
            prom,
            'numfed_platform_breaker_transitions_total{platform="taobao",state="closed"}',
            lambda v: (v or 0) >= 1,
        )
        # The lag rose, then fell: the range query a dashboard draws shows both.
        peak = await asyncio.to_thread(
            prom.value, 'max_over_time(numfed_event_lag_batches{platform="taobao"}[10m])'
        )
        assert peak is not None and peak >= 1
        log = (fed.layout.root / "logs" / "gateway.log").read_text()
        assert "circuit to platform taobao is now open" in log
        assert "circuit to platform taobao is now closed" in log
        assert "platform taobao unreachable for releases (UNAVAILABLE); retrying" in log
        assert "platform taobao reachable again for releases after" in log
        assert log.count("platform taobao unreachable for releases") <= 2, log
    finally:
        for channel in channels:
            await channel.close()
        prom.stop()
        await asyncio.to_thread(fed.stop_all)
