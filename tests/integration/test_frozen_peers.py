"""A peer that stops reading holds nothing: frozen (SIGSTOP) member processes, real servers.

A frozen process keeps its TCP connections open (its kernel still acknowledges every segment)
but answers no HTTP/2 ping. Every numfed server and channel pings a quiet connection after
``limits.keepalive_time`` and closes it when the ping goes unanswered for
``limits.keepalive_timeout``: the frozen peer's calls and streams end, and what they held (the
gateway's watch slots, its calls out to a platform) comes free. Here both are 1 s, so the bound
is about 2 s; the tests allow ``BOUND`` seconds on a busy machine. Long-lived streams also end
by age: a watch after ``limits.watch_max_age`` (cleanly, the client watches again), any stream
on a connection after ``limits.max_connection_age`` plus its grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carrier_adapters.base import CarrierHandle, start_carrier
from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import (
    Limits,
    load_carrier_config,
    load_gateway_config,
    load_platform_config,
)
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.scenario import demo_scenario
from numfed.testing.federation import until_serving
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from platform_stubs.reference import PlatformHandle, start_platform
from tests.helpers.watcher import spawn_watcher
from tests.integration.holder import PRIOR, HolderApp, metadata

WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")
CUCC = PeerId(Role.CARRIER, "cucc")
Outcome = gateway_pb2.PlatformOutcome
KEEPALIVE = {"keepalive_time": 1.0, "keepalive_timeout": 1.0}
BOUND = 10.0
"""Seconds the tests allow for keepalive_time + keepalive_timeout (2 s) on a busy machine."""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Member processes a test starts; killed (frozen or not) when it ends."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


async def ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the watcher's ``ready`` line: every stream it opened is streaming."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.strip() == "ready", f"watcher exited ({proc.poll()}) before its streams were open"


def freeze(proc: subprocess.Popen[Any]) -> None:
    os.kill(proc.pid, signal.SIGSTOP)


def claim(layout: FederationLayout, carrier: str, number: str, purpose: Purpose) -> Any:
    c = TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=datetime(2022, 7, 1, 9, tzinfo=UTC),
        purpose=purpose,
        now=datetime.now(UTC),
    )
    return sign_claim(c, pki.load_carrier_signer(layout.pki_dir, carrier)).to_proto()


NUMBERS = {"cmcc": "+8613812345678", "cucc": "+8618611112222"}


@dataclasses.dataclass
class Running:
    layout: FederationLayout
    gateway: Gateway

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def channel(self, peer: PeerId) -> grpc.aio.Channel:
        return pki.secure_channel(self.target, self.layout.pki_dir, peer)

    async def release(self, carrier: str, peer: PeerId) -> str:
        """A release job that stays pending (its one platform is not running)."""
        async with self.channel(peer) as ch:
            op = await gateway_pb2_grpc.GatewayServiceStub(ch).ReleaseBindings(
                gateway_pb2.ReleaseBindingsRequest(
                    request_id=f"frozen-{carrier}",
                    claim=claim(self.layout, carrier, NUMBERS[carrier], Purpose.RELEASE_PRIOR),
                ),
                timeout=5,
            )
        return str(op.name)


async def start_gateway(layout: FederationLayout, **limits: Any) -> Gateway:
    config = load_gateway_config(layout.gateway_config)
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))
    return await Gateway.start(config)


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Running]:
    """A gateway with room for 4 watch streams, all of which one carrier may hold; its one
    platform never runs, so release jobs stay pending and their watches stay open."""
    layout = create_federation(
        tmp_path / "fed",
        carriers=("cmcc", "cucc"),
        platforms=("weibo",),
        limits={**KEEPALIVE, "max_watches": 4, "max_watches_per_caller": 4},
    )
    gw = await start_gateway(layout)
    try:
        yield Running(layout, gw)
    finally:
        await gw.stop(0)


async def watch_admitted(stub: gateway_pb2_grpc.GatewayServiceAsyncStub, name: str) -> Any:
    """A WatchOperation stream that has delivered its first message (so it holds a slot)."""
    call = stub.WatchOperation(gateway_pb2.WatchOperationRequest(name=name), timeout=30)
    op = await call.read()
    assert isinstance(op, operations_pb2.Operation) and op.name == name
    return call


async def refused_watch(stub: gateway_pb2_grpc.GatewayServiceAsyncStub, name: str) -> str:
    """The reason a WatchOperation is refused with RESOURCE_EXHAUSTED."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_admitted(stub, name)
    info = rpc_error_info(e.value)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info is not None, e.value
    return str(info.reason)


async def admitted_again(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, name: str, n: int
) -> tuple[list[Any], float]:
    """Open ``n`` watches as soon as the gateway admits them; (the streams, seconds it took)."""
    started = time.monotonic()
    calls: list[Any] = []
    async with asyncio.timeout(BOUND):
        while len(calls) < n:
            try:
                calls.append(await watch_admitted(stub, name))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                await asyncio.sleep(0.1)  # the frozen peer's connection is not closed yet
    return calls, time.monotonic() - started


async def test_a_frozen_carrier_holds_no_watch_slots(
    watched: Running, processes: list[subprocess.Popen[Any]]
) -> None:
    mine = await watched.release("cmcc", CMCC)
    theirs = await watched.release("cucc", CUCC)
    carrier = spawn_watcher(
        "gateway", watched.target, str(watched.layout.pki_dir), "cmcc", mine, "4"
    )
    processes.append(carrier)
    await ready(carrier)
    freeze(carrier)
    async with watched.channel(CUCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        # The frozen carrier holds every watch slot: another carrier is turned away ...
        assert await refused_watch(stub, theirs) == "OVERLOADED_QUEUE_TIMEOUT"
        # ... until the gateway's pings go unanswered and it closes the frozen connection.
        calls, took = await admitted_again(stub, theirs, 4)
        assert took < BOUND
        for c in calls:
            c.cancel()
    assert carrier.poll() is None  # still frozen, not dead: its streams ended at the gateway


async def test_a_frozen_holder_app_holds_none_of_its_carriers_watch_slots(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    layout = create_federation(
        tmp_path / "fed",
        carriers=("cmcc",),
        platforms=("weibo",),
        limits={**KEEPALIVE, "max_watches": 2, "max_watches_per_caller": 2},
    )
    gw = await start_gateway(layout)
    carrier = await start_carrier(load_carrier_config(layout.carrier_configs["cmcc"]))
    channels: list[grpc.aio.Channel] = []
    try:
        app = await verified_holder(layout, carrier, "cmcc", channels)
        op = await app.release(PRIOR)
        target = f"127.0.0.1:{carrier.holder_port}"
        holder = spawn_watcher("holder", target, app.token, op.name, "2")
        processes.append(holder)
        await ready(holder)
        freeze(holder)
        running = Running(layout, gw)
        async with running.channel(CMCC) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            # The frozen app's two streams hold both of cmcc's watches at the gateway ...
            assert await refused_watch(stub, op.name) == "CALLER_OVERLOADED"
            # ... until the carrier drops the frozen app and cancels its gateway streams.
            calls, took = await admitted_again(stub, op.name, 2)
            assert took < BOUND
            for c in calls:
                c.cancel()
    finally:
        for ch in channels:
            await ch.close()
        await carrier.stop(0)
        await gw.stop(0)


async def verified_holder(
    layout: FederationLayout, carrier: CarrierHandle, cid: str, channels: list[grpc.aio.Channel]
) -> HolderApp:
    """A verified holder app of ``cid``; its channel joins ``channels`` (the caller closes it)."""
    now = datetime.now(UTC)
    history = next(h for h in WORLD.histories_served_by(cid, now) if h.current_tenure(now))
    tenure = history.current_tenure(now)
    assert tenure is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{carrier.holder_port}")
    channels.append(channel)
    state = layout.root / "state" / f"carrier-{cid}"
    return await HolderApp.verified(channel, state, history.number, WORLD.holders[tenure.holder_id])


async def test_a_watch_ends_cleanly_at_its_maximum_age_and_the_holder_follows_the_job_across(
    tmp_path: Path,
) -> None:
    layout = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    gw = await start_gateway(layout, watch_max_age=1.0)
    carrier_config = load_carrier_config(layout.carrier_configs["cmcc"])
    carrier = await start_carrier(
        dataclasses.replace(carrier_config, limits=Limits(watch_max_age=60.0))
    )
    platform: PlatformHandle | None = None
    channels: list[grpc.aio.Channel] = []
    try:
        app = await verified_holder(layout, carrier, "cmcc", channels)
        op = await app.release(PRIOR)
        # The gateway ends a watch after a second with OK, though the job is not done.
        async with Running(layout, gw).channel(CMCC) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            started = time.monotonic()
            seen = [
                u
                async for u in stub.WatchOperation(
                    gateway_pb2.WatchOperationRequest(name=op.name), timeout=30
                )
            ]
            assert 1.0 <= time.monotonic() - started < BOUND
            assert seen and not seen[-1].done
        # The holder's one stream outlives several gateway streams and sees the job finish.
        follow = asyncio.ensure_future(app.watch(op.name, timeout=60))
        await asyncio.sleep(3.0)  # three gateway watch lifetimes with weibo down
        assert not follow.done()
        platform = await start_platform(load_platform_config(layout.platform_configs["weibo"]))
        updates = await asyncio.wait_for(follow, 45)
        assert updates[-1].done
        assert metadata(updates[-1]).platforms_done == 1
        bodies = [u.SerializeToString(deterministic=True) for u in updates]
        assert len(bodies) == len(set(bodies))  # a new gateway stream repeats nothing
    finally:
        for ch in channels:
            await ch.close()
        if platform is not None:
            await platform.stop(0)
        await carrier.stop(0)
        await gw.stop(0)


async def test_every_stream_on_a_connection_ends_by_the_connections_maximum_age(
    tmp_path: Path,
) -> None:
    layout = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    gw = await start_gateway(
        layout, max_connection_age=1.0, max_connection_age_grace=1.0, watch_max_age=1.0
    )
    try:
        async with Running(layout, gw).channel(CMCC) as ch:
            call = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            first = await call.read()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async with asyncio.timeout(BOUND):
                    while True:
                        await call.read()
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < BOUND
            # The channel reconnects: the next call is served as usual.
            answer = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await gw.stop(0)


async def test_a_client_pinging_every_second_is_never_told_to_go_away(tmp_path: Path) -> None:
    """Servers accept pings twice a second, whatever their own keepalive_time: a member with
    ``keepalive_time = 1`` keeps an idle stream open to a gateway on the defaults (which would
    otherwise answer its third early ping with GOAWAY too_many_pings and end the stream)."""
    layout = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    gw = await start_gateway(layout)
    running = Running(layout, gw)
    try:
        eager = Limits(keepalive_time=1.0, keepalive_timeout=1.0)
        async with pki.secure_channel(
            running.target, layout.pki_dir, CMCC, server=pki.GATEWAY, limits=eager
        ) as ch:
            call = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert isinstance(await call.read(), health_pb2.HealthCheckResponse)
            # Nothing is sent for five seconds: the channel pings about five times meanwhile.
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait([read], timeout=5.0)
            assert not done and not call.done()  # still open, nothing said
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await read
    finally:
        await gw.stop(0)


def spawn_platform(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "numfed", "platform", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def test_a_frozen_platform_holds_none_of_the_gateways_calls(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    layout = create_federation(
        tmp_path / "fed",
        carriers=("cmcc",),
        platforms=("weibo", "taobao"),
        limits={**KEEPALIVE, "platform_call_timeout": 1.0, "breaker_cooldown": 0.5},
    )
    gw = await start_gateway(layout)
    taobao = await start_platform(load_platform_config(layout.platform_configs["taobao"]))
    weibo = spawn_platform(layout.platform_configs["weibo"], tmp_path / "weibo.log")
    processes.append(weibo)
    link = gw.links["weibo"]
    try:
        await until_serving(gw)  # the gateway has heard both report SERVING
        async with Running(layout, gw).channel(CMCC) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)

            async def query() -> dict[str, gateway_pb2.PlatformResult]:
                request = gateway_pb2.QueryBindingsRequest(
                    claim=claim(layout, "cmcc", NUMBERS["cmcc"], Purpose.QUERY_PRIOR)
                )
                answer = await stub.QueryBindings(request, timeout=10)
                return {r.platform_id: r for r in answer.results}

            answered = (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
            assert (await query())["weibo"].outcome in answered
            assert link.channel.get_state() == grpc.ChannelConnectivity.READY
            freeze(weibo)
            started = time.monotonic()
            # Each call to the frozen platform ends at its deadline; the other one answers.
            results = await asyncio.gather(*(query() for _ in range(8)))
            for r in results:
                assert r["weibo"].outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
                assert r["taobao"].outcome in answered
            # No call to it outlives its deadline, and its dead connection is closed by
            # keepalive rather than kept for the next call.
            async with asyncio.timeout(BOUND):
                while (  # noqa: ASYNC110
                    link.queries.in_flight
                    or link.queries.queued
                    or link.channel.get_state() == grpc.ChannelConnectivity.READY
                ):
                    await asyncio.sleep(0.05)
            assert time.monotonic() - started < BOUND
            # Thawed, it is called again and answers.
            os.kill(weibo.pid, signal.SIGCONT)
            async with asyncio.timeout(30):
                while (await query())["weibo"].outcome not in answered:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
    finally:
        await gw.stop(0)
        await taobao.stop(0)
