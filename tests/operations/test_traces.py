"""One holder's release, and one query, is each one trace across the carrier, the gateway and
every platform.

The federation runs as processes with ``otlp_endpoint`` pointing at a small OTLP/gRPC receiver
this test starts; the trace context crosses each gRPC hop in the call metadata, and crosses the
release job stored in the gateway's database (the dispatcher sends it later, from the job).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from numfed.scenario import demo_scenario
from numfed.testing.federation import spawn_federation
from numfed.testing.otlp import start_otlp_receiver
from tests.integration.holder import PRIOR, HolderApp

WORLD = demo_scenario()
PLATFORMS = ("weibo", "taobao")


def holder_of(label: str) -> tuple[str, str, str]:
    """(number, carrier, holder id) of a showcase number now."""
    number = WORLD.showcase[label]
    now = datetime.now(UTC)
    history = WORLD.histories[number]
    carrier, tenure = history.carrier_at(now), history.current_tenure(now)
    assert carrier is not None and tenure is not None
    return number, carrier, tenure.holder_id


@pytest.mark.timeout(240)
async def test_one_release_is_one_trace_across_carrier_gateway_and_every_platform(
    tmp_path: Path,
) -> None:
    number, carrier, holder_id = holder_of("recycled_once")
    receiver = await start_otlp_receiver()
    fed = await spawn_federation(
        tmp_path / "fed", carriers=[carrier], platforms=PLATFORMS, otlp_endpoint=receiver.endpoint
    )
    try:
        channel = grpc.aio.insecure_channel(fed.layout.holder_endpoints[carrier])
        state = fed.layout.root / "state" / f"carrier-{carrier}"
        app = await HolderApp.verified(channel, state, number, WORLD.holders[holder_id])
        op = await app.release(PRIOR)
        assert (await app.watch(op.name))[-1].done
        await app.query(PRIOR)  # its trace too: the gateway traces platform calls by hand
        await channel.close()
    finally:
        # Each process exports what it still holds as it stops; the receiver answers meanwhile.
        await asyncio.to_thread(fed.stop_all)
    await receiver.stop()

    def platform_spans(holder_method: str, platform_method: str) -> dict[str, list[str]]:
        """The one trace the holder's ``holder_method`` call started: for each platform, the
        path from its ``platform_method`` span up to the root (checked to be that call)."""
        started = [s for s in receiver.spans if s.name.endswith(f"/{holder_method}")]
        assert len(started) == 1, [s.name for s in receiver.spans]
        trace = receiver.traces()[started[0].trace_id]
        by_id = {s.span_id: s for s in trace}
        roots = [s for s in trace if s.parent_span_id not in by_id]
        assert roots == started, "one root: the holder's call to the carrier"
        assert {s.service for s in trace} == {
            f"numfed-carrier-{carrier}",
            "numfed-gateway",
            *(f"numfed-platform-{p}" for p in PLATFORMS),
        }
        paths = {}
        for platform in PLATFORMS:
            name = f"/numfed.v1.PlatformService/{platform_method}"
            found = [
                s for s in trace if s.service == f"numfed-platform-{platform}" and s.name == name
            ]
            assert found, f"no {platform_method} span from {platform} in the holder's trace"
            span = found[0]
            assert span.kind == 2 and span.attributes["rpc.grpc.status_code"] == 0  # SERVER, OK
            client = by_id[span.parent_span_id]  # the gateway's call (traced by hand)
            assert client.kind == 3 and client.attributes["rpc.method"] == platform_method
            out = [f"{span.service}:{span.name}"]
            while span.parent_span_id in by_id:
                span = by_id[span.parent_span_id]
                out.append(f"{span.service}:{span.name}")
            paths[platform] = out
        return paths

    for platform, path in platform_spans("ReleaseHolderBindings", "BatchReleaseBindings").items():
        assert path == [
            f"numfed-platform-{platform}:/numfed.v1.PlatformService/BatchReleaseBindings",
            "numfed-gateway:/numfed.v1.PlatformService/BatchReleaseBindings",
            "numfed-gateway:numfed.release.dispatch",
            "numfed-gateway:/numfed.v1.GatewayService/ReleaseBindings",
            f"numfed-carrier-{carrier}:/numfed.v1.GatewayService/ReleaseBindings",
            f"numfed-carrier-{carrier}:/numfed.v1.HolderService/ReleaseHolderBindings",
        ]
    for platform, path in platform_spans("QueryHolderBindings", "BatchQueryBindings").items():
        assert path == [
            f"numfed-platform-{platform}:/numfed.v1.PlatformService/BatchQueryBindings",
            "numfed-gateway:/numfed.v1.PlatformService/BatchQueryBindings",
            "numfed-gateway:/numfed.v1.GatewayService/QueryBindings",
            f"numfed-carrier-{carrier}:/numfed.v1.GatewayService/QueryBindings",
            f"numfed-carrier-{carrier}:/numfed.v1.HolderService/QueryHolderBindings",
        ]
