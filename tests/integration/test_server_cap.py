"""The gateway's server-wide cap: past it, gRPC refuses each new call itself, before the loop.

A real gateway (mTLS, port 0, SQLite) with tiny admission bounds and one platform whose answers
the test holds back, so calls keep their places exactly as long as the test wants. The test
fills the gateway to its cap (``numfed.rpc.call_cap``: every class's slots and queue plus the
headroom) with calls that stay: a health Watch and a WatchOperation stream opened first, a
query running and one queued, then health Watches until the server refuses one. Every further
call, of any class, is refused RESOURCE_EXHAUSTED in gRPC's own shape (no ErrorInfo, no
RetryInfo: the contract in gateway.proto), while the calls and streams already in go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import Limits, load_gateway_config, load_platform_config
from numfed.errors import ResourceExhausted
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import (
    SERVER_CAP_DETAILS,
    SERVER_OVERLOADED,
    call_cap,
    error_from_rpc,
    ok_status,
    rpc_error_info,
    server_cap_refusal,
)
from numfed.testing.federation import until_serving
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, platform_pb2
from platform_stubs.reference import PlatformHandle, start_platform
from platform_stubs.sdk import PlatformServicer

X = datetime(2022, 7, 1, 9, tzinfo=UTC)
NUMBER = "+8613812345678"
CMCC = PeerId(Role.CARRIER, "cmcc")
PROBE = "numfed.test.Probe"
"""A health service name the test sets, to see that a health Watch still hears a change."""
LIMITS = {
    # Every class 1 at once + 1 queued, one watch (+1 queued): 10 in all; headroom 2: cap 12.
    "max_concurrent_queries": 1,
    "max_queued_queries": 1,
    "max_concurrent_releases": 1,
    "max_queued_releases": 1,
    "max_concurrent_reads": 1,
    "max_queued_reads": 1,
    "max_concurrent_events": 1,
    "max_queued_events": 1,
    "max_watches": 1,
    "caller_share": 1.0,
    "admission_queue_wait": 30.0,
    "server_call_headroom": 2,
}


class HeldPlatform(PlatformServicer):
    """Answers queries and releases only once the test lets it."""

    arrived: asyncio.Queue[str]
    go: asyncio.Event

    async def BatchQueryBindings(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        self.arrived.put_nowait("query")
        await self.go.wait()
        return platform_pb2.BatchQueryBindingsResponse(
            results=[
                platform_pb2.QueryItemResult(item_id=i.item_id, status=ok_status())
                for i in request.items
            ]
        )

    async def BatchReleaseBindings(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        await self.go.wait()
        return await super().BatchReleaseBindings(request, context)


@dataclasses.dataclass
class Running:
    layout: FederationLayout
    gateway: Gateway

    def channel(self) -> grpc.aio.Channel:
        return pki.secure_channel(f"127.0.0.1:{self.gateway.port}", self.layout.pki_dir, CMCC)

    def claim(self, purpose: Purpose) -> Any:
        c = TenureClaim.new(
            number=NUMBER, carrier_id="cmcc", tenure_start=X, purpose=purpose, now=datetime.now(UTC)
        )
        return sign_claim(c, pki.load_carrier_signer(self.layout.pki_dir, "cmcc")).to_proto()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    layout = create_federation(
        tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",), limits=LIMITS
    )
    HeldPlatform.arrived = asyncio.Queue()
    HeldPlatform.go = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:  # stops what started, last first
        platform: PlatformHandle = await start_platform(
            load_platform_config(layout.platform_configs["weibo"]), servicer_class=HeldPlatform
        )
        stack.push_async_callback(platform.stop, 0)
        config = load_gateway_config(layout.gateway_config)
        gw = await Gateway.start(dataclasses.replace(config, listen=layout.gateway_endpoint))
        stack.push_async_callback(gw.stop, 0)
        await until_serving(gw)
        stack.callback(HeldPlatform.go.set)  # held calls go on, so the gateway can stop
        yield Running(layout, gw)


def test_the_cap_is_every_class_bound_plus_the_headroom() -> None:
    limits = Limits.from_mapping(LIMITS)
    from gateway.admission import admission

    assert call_cap(admission(limits), limits) == 12


def refused_by_the_cap(exc: BaseException) -> bool:
    """gRPC's own refusal, exactly as gateway.proto documents it: RESOURCE_EXHAUSTED, no
    google.rpc.Status (so no ErrorInfo, no RetryInfo), and read as SERVER_OVERLOADED."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    err = error_from_rpc(exc)
    return (
        server_cap_refusal(exc)
        and exc.details() == SERVER_CAP_DETAILS
        and rpc_error_info(exc) is None
        and isinstance(err, ResourceExhausted)
        and err.reason == SERVER_OVERLOADED
        and err.retry_after is None
    )


async def test_past_the_cap_every_call_is_refused_by_grpc_and_what_was_in_goes_on(
    running: Running,
) -> None:
    gw = running.gateway
    await gw.server.health.set(PROBE, health_pb2.HealthCheckResponse.SERVING)
    async with running.channel() as ch, contextlib.AsyncExitStack() as streams:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)

        def watch_health() -> Any:
            call = health.Watch(health_pb2.HealthCheckRequest(service=PROBE), timeout=60)
            streams.callback(call.cancel)
            return call

        # Opened before the flood: a health Watch and a release's WatchOperation stream.
        probe = watch_health()
        assert (await probe.read()).status == health_pb2.HealthCheckResponse.SERVING
        op = await stub.ReleaseBindings(
            gateway_pb2.ReleaseBindingsRequest(
                request_id=uuid.uuid4().hex, claim=running.claim(Purpose.RELEASE_PRIOR)
            ),
            timeout=10,
        )
        watch = stub.WatchOperation(gateway_pb2.WatchOperationRequest(name=op.name), timeout=60)
        streams.callback(watch.cancel)
        first = await watch.read()
        assert isinstance(first, operations_pb2.Operation) and not first.done
        # A query held at the platform, and one waiting in the query class's queue.
        queries = [
            asyncio.ensure_future(
                stub.QueryBindings(
                    gateway_pb2.QueryBindingsRequest(claim=running.claim(Purpose.QUERY_PRIOR)),
                    timeout=60,
                )
            )
            for _ in range(2)
        ]
        async with asyncio.timeout(10):
            await HeldPlatform.arrived.get()
            while gw.admission is None or gw.admission.gates["query"].queued < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # Health Watches (bounded by no class) until the server holds its cap: the next is
        # refused by gRPC itself. The cap is 12; the release's watch, the two queries and the
        # probe hold 4, so at most 8 more get in.
        fillers: list[Any] = []
        refused: BaseException | None = None
        for _ in range(20):
            call = watch_health()
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                refused = exc
                break
            fillers.append(call)
        assert refused is not None, "no cap: 20 more health Watches were all served"
        assert refused_by_the_cap(refused), refused
        assert len(fillers) <= 8

        # The flood: every class, and health. Each is refused by gRPC, none by admission.
        query = gateway_pb2.QueryBindingsRequest(claim=running.claim(Purpose.QUERY_PRIOR))
        flood: list[Callable[[], Awaitable[Any]]] = [
            *(lambda: stub.QueryBindings(query, timeout=10) for _ in range(4)),
            *(lambda: stub.GetTrustBundle(gateway_pb2.GetTrustBundleRequest(), timeout=10),) * 3,
            *(
                lambda: stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=uuid.uuid4().hex, claim=running.claim(Purpose.RELEASE_PRIOR)
                    ),
                    timeout=10,
                )
                for _ in range(2)
            ),
            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
        ]
        outcomes = await asyncio.gather(*(f() for f in flood), return_exceptions=True)
        assert all(refused_by_the_cap(o) for o in outcomes), outcomes
        # They were refused while the admitted queries still wait for the platform.
        assert not any(q.done() for q in queries)

        # What was in goes on: the probe hears a change, the queries finish, the release's
        # watch sees it done.
        await gw.server.health.set(PROBE, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with asyncio.timeout(10):
            assert (await probe.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        HeldPlatform.go.set()
        async with asyncio.timeout(20):
            answers = await asyncio.gather(*queries)
            assert all(len(a.results) == 1 for a in answers)
            update: Any = await watch.read()
            while not update.done:
                update = await watch.read()
        assert update.name == op.name
        # Room again: the fillers gone, a call is served.
        for call in fillers:
            call.cancel()
        async with asyncio.timeout(10):
            while True:
                try:
                    await stub.GetTrustBundle(gateway_pb2.GetTrustBundleRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert refused_by_the_cap(exc), exc
                    await asyncio.sleep(0.05)


CROWD = """
import asyncio, json, sys, time
from pathlib import Path
import grpc
from numfed import pki
from numfed.identity import PeerId, Role
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

async def main(endpoint: str, pki_dir: str, n: int) -> None:
    async with pki.secure_channel(endpoint, Path(pki_dir), PeerId(Role.CARRIER, "cmcc")) as ch:
        await ch.channel_ready()
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one() -> list[object]:
            t = time.monotonic()
            try:
                await stub.GetTrustBundle(gateway_pb2.GetTrustBundleRequest(), timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            return [code, time.monotonic() - t, time.time()]

        calls = [asyncio.ensure_future(one()) for _ in range(n)]
        for _ in range(3):  # turns, not time: each call started, its batch in gRPC's core
            await asyncio.sleep(0)
        print("sent", flush=True)
        print(json.dumps(await asyncio.gather(*calls)), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def crowd_while_stuck(
    tmp_path: Path, limits: dict[str, object], n: int, stuck: float
) -> tuple[list[Any], float]:
    """``n`` GetTrustBundle calls from another process while the test blocks the gateway's event
    loop, from when the process says it has sent them until ``stuck`` seconds later: the
    outcomes, [[status code name, seconds, wall time it ended], ...], and the wall time the
    loop came back. (The loop is blocked from the "go" on: the block ends ``stuck`` seconds after
    the calls went out however late the other process ran, on a loaded machine too.)"""
    import json
    import subprocess
    import sys
    import time

    layout = create_federation(
        tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",), limits=limits
    )
    async with contextlib.AsyncExitStack() as stack:
        platform = await start_platform(load_platform_config(layout.platform_configs["weibo"]))
        stack.push_async_callback(platform.stop, 0)
        config = load_gateway_config(layout.gateway_config)
        gw = await Gateway.start(dataclasses.replace(config, listen=layout.gateway_endpoint))
        stack.push_async_callback(gw.stop, 0)
        await until_serving(gw)
        # Plain pipes: they are read blocking below, while the loop is stuck on purpose.
        crowd = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-c", CROWD, f"127.0.0.1:{gw.port}", str(layout.pki_dir), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        def kill_crowd() -> None:
            if crowd.poll() is None:
                crowd.kill()
            crowd.wait()

        stack.callback(kill_crowd)
        assert crowd.stdin is not None and crowd.stdout is not None
        async with asyncio.timeout(30):
            assert (await asyncio.to_thread(crowd.stdout.readline)).strip() == "ready"
        crowd.stdin.write("go\n")
        crowd.stdin.flush()
        # From here the gateway's loop, this one, is stuck (the point): blocking reads and sleep.
        assert crowd.stdout.readline().strip() == "sent"
        time.sleep(stuck)  # noqa: ASYNC251
        back = time.time()
        async with asyncio.timeout(60):
            outcomes: list[Any] = json.loads(await asyncio.to_thread(crowd.stdout.readline))
    assert len(outcomes) == n
    return outcomes, back


@pytest.mark.timeout(120)
async def test_a_crowd_the_stuck_loop_cannot_take_is_turned_away_at_once(tmp_path: Path) -> None:
    """While the gateway's event loop is stuck (here: the test blocks it until 3 s after the
    calls went out), gRPC's core holds at most twice ``server_pending_calls`` new calls for it
    and cancels the rest at once, before the loop sees them; the calls it held are answered
    once the loop is back (held for less than ``server_pending_seconds``). With gRPC's default
    backlog, all 60 would have waited for the loop."""
    outcomes, back = await crowd_while_stuck(
        tmp_path, {"server_pending_calls": 4, "server_pending_seconds": 30}, 60, stuck=3.0
    )
    turned_away = [ended for code, _, ended in outcomes if code == "CANCELLED"]
    answered = [ended for code, _, ended in outcomes if code == "OK"]
    assert len(turned_away) + len(answered) == 60, outcomes
    assert 0 < len(answered) <= 2 * 4 + 1  # held for the loop (the +1: one the loop was taking)
    assert max(turned_away) < back  # at once, while the loop was still stuck
    assert min(answered) >= back  # after it came back


@pytest.mark.timeout(120)
async def test_calls_held_for_the_loop_longer_than_the_bound_are_turned_away(
    tmp_path: Path,
) -> None:
    """A few calls (far below ``server_pending_calls``) wait 2.5 s for the stuck loop: past
    ``server_pending_seconds`` (1 s) gRPC's core turns them away CANCELLED when the loop takes
    its next call, rather than serving calls that waited longer than admission's own queue
    would let them. With gRPC's default (30 s) all of them were answered, 2.5 s late."""
    outcomes, _ = await crowd_while_stuck(tmp_path, {"server_pending_seconds": 1}, 8, stuck=2.5)
    turned_away = [s for code, s, _ in outcomes if code == "CANCELLED"]
    answered = [s for code, s, _ in outcomes if code == "OK"]
    assert len(turned_away) + len(answered) == 8, outcomes
    assert len(answered) <= 2, outcomes  # the call(s) the loop had asked gRPC for before it stuck
    assert len(turned_away) >= 6 and min(turned_away) >= 1.0, outcomes
