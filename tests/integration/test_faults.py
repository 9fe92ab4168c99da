"""Faults with real servers: a platform down during a release; the gateway killed mid-release."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carrier_adapters.base import CarrierHandle, start_carrier
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_carrier_config, load_platform_config
from numfed.federation import create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, holder_pb2
from platform_stubs.reference import PlatformHandle, start_platform
from tests.helpers.processes import spawn_gateway
from tests.integration.conftest import Federation
from tests.integration.holder import PRIOR, metadata, response
from tests.integration.test_journey import holder_app

Outcome = gateway_pb2.PlatformOutcome
WORLD = demo_scenario()


async def test_platform_down_during_release_completes_when_it_returns(
    federation: Federation,
) -> None:
    number = WORLD.showcase["recycled_once"]  # has prior bindings on weibo
    await federation.platforms["weibo"].stop(0)
    app = await holder_app(federation, number)
    op = await app.release(PRIOR)
    seen: list[gateway_pb2.ReleaseMetadata] = []
    final: list[operations_pb2.Operation] = []
    weibo_unavailable = asyncio.Event()

    async def follow() -> None:
        call = app.stub.WatchHolderRelease(
            holder_pb2.WatchHolderReleaseRequest(session_token=app.token, name=op.name),
            timeout=60,
        )
        async for update in call:
            meta = metadata(update)
            seen.append(meta)
            if any(
                r.platform_id == "weibo" and r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
                for r in meta.results
            ):
                weibo_unavailable.set()
            if update.done:
                final.append(update)

    watcher = asyncio.create_task(follow())
    await asyncio.wait_for(weibo_unavailable.wait(), 20)
    # While weibo is down the job waits for it; Watch shows the other platforms' progress.
    assert not final
    await federation.restart_platform("weibo")
    await asyncio.wait_for(watcher, 30)
    done = response(final[0])
    weibo = next(r for r in done.results if r.platform_id == "weibo")
    assert weibo.outcome == Outcome.PLATFORM_OUTCOME_FOUND and weibo.attempts >= 2
    total = len(federation.platforms)
    assert seen[-1].platforms_done == total
    assert any(m.platforms_done == total - 1 for m in seen)  # Watch showed the wait


def _wait_serving(endpoint: str, pki_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    creds = pki.channel_credentials(pki_dir, PeerId(Role.CARRIER, "cmcc"))
    with grpc.secure_channel(endpoint, creds) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(300):
            assert proc.poll() is None, "gateway exited"
            try:
                r = stub.Check(
                    health_pb2.HealthCheckRequest(service="numfed.v1.GatewayService"), timeout=1
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            import time

            time.sleep(0.05)
    raise AssertionError("gateway did not become ready")


@pytest.fixture
def gateway_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


async def test_gateway_killed_mid_release_resumes_and_applies_each_release_once(
    tmp_path: Path, gateway_process: list[subprocess.Popen[bytes]]
) -> None:
    knobs = {
        p: {"latency_ms": 800.0}
        for p in ("weibo", "taobao", "douyin", "toutiao", "meituan", "dianping", "xiaomi")
    }
    layout = create_federation(
        tmp_path / "fed", platform_knobs=knobs, limits={"max_in_flight_per_platform": 1}
    )
    platforms: dict[str, PlatformHandle] = {}
    carriers: dict[str, CarrierHandle] = {}

    def spawn() -> subprocess.Popen[bytes]:
        p = spawn_gateway(layout.gateway_config, tmp_path / f"gateway-{len(gateway_process)}.log")
        gateway_process.append(p)
        return p

    async with contextlib.AsyncExitStack() as stack:  # stops the members that started
        for platform_id, cfg in layout.platform_configs.items():
            platforms[platform_id] = await start_platform(load_platform_config(cfg))
            stack.push_async_callback(platforms[platform_id].stop, 0)
        for carrier_id, cfg in layout.carrier_configs.items():
            carriers[carrier_id] = await start_carrier(load_carrier_config(cfg))
            stack.push_async_callback(carriers[carrier_id].stop, 0)
        first = spawn()
        await asyncio.to_thread(_wait_serving, layout.gateway_endpoint, layout.pki_dir, first)
        now = datetime.now(UTC)
        signer = pki.load_carrier_signer(layout.pki_dir, "cmcc")
        served = [h for h in WORLD.histories_served_by("cmcc", now) if h.current_tenure(now)]
        names: list[str] = []
        claim_ids: set[bytes] = set()
        async with pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, PeerId(Role.CARRIER, "cmcc")
        ) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            for h in served:
                claim = TenureClaim.new(
                    number=h.number,
                    carrier_id="cmcc",
                    tenure_start=h.tenure_start(now),
                    purpose=Purpose.RELEASE_PRIOR,
                    now=now,
                )
                claim_ids.add(claim.claim_id)
                op = await stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=uuid.uuid4().hex, claim=sign_claim(claim, signer).to_proto()
                    ),
                    timeout=5,
                )
                names.append(op.name)
        # Kill once every platform has applied its first batch but not yet answered it (each
        # platform answers 0.8 s after applying): the answers are lost with the gateway.
        async with asyncio.timeout(20):
            while any(p.store.counts()["applied"] == 0 for p in platforms.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        async with pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, PeerId(Role.CARRIER, "cmcc")
        ) as ch:
            pending = await gateway_pb2_grpc.GatewayServiceStub(ch).GetOperation(
                gateway_pb2.GetOperationRequest(name=names[-1]), timeout=5
            )
        assert not pending.done
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = spawn()
        await asyncio.to_thread(_wait_serving, layout.gateway_endpoint, layout.pki_dir, second)
        async with pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, PeerId(Role.CARRIER, "cmcc")
        ) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            for name in names:
                call = stub.WatchOperation(gateway_pb2.WatchOperationRequest(name=name), timeout=60)
                op = [update async for update in call][-1]
                assert op.done
                assert all(
                    r.outcome in (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
                    for r in response(op).results
                )
        numbers = {h.number: h.tenure_start(now) for h in served}
        for p, handle in platforms.items():
            c = handle.store.counts()
            assert c["applied"] == len(served), f"{p} applied a release twice or missed one"
            expected = sum(
                1
                for b in WORLD.bindings_on(p)
                if b.number in numbers and b.bound_at < numbers[b.number]
            )
            assert c["released"] == expected
        assert len(claim_ids) == len(served)
        # The platforms answered the first gateway after it died; the second one's retries were
        # answered from the stored first result instead of being applied again.
        assert sum(p.store.counts()["replays"] for p in platforms.values()) > 0
