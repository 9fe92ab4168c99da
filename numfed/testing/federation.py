"""Whole federations for tests: in this process, or one process per member.

:func:`start_federation` runs the gateway, the carriers and the platforms as grpc.aio servers in
the test's own event loop (fast; a test can reach into any member). :func:`spawn_federation`
runs each as its own ``numfed <role> serve`` process, the way production runs them (slower; for
tests that kill or restart members). Both lay the federation out with
:func:`numfed.federation.create_federation` on free loopback ports, with real mTLS and SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carrier_adapters.base import CarrierHandle, start_carrier
from gateway.server import Gateway
from numfed import pki
from numfed.config import load_carrier_config, load_gateway_config, load_platform_config
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from platform_stubs.reference import PlatformHandle, start_platform

__all__ = [
    "Federation",
    "FederationProcesses",
    "spawn_federation",
    "start_federation",
    "wait_serving",
]


@dataclass
class Federation:
    """A federation running in this process."""

    layout: FederationLayout
    gateway: Gateway
    carriers: dict[str, CarrierHandle] = field(default_factory=dict)
    platforms: dict[str, PlatformHandle] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    """Channels opened through :meth:`holder_channel`; :meth:`stop` closes them."""

    def holder_channel(self, carrier_id: str) -> grpc.aio.Channel:
        """A channel to the carrier's HolderService (plaintext, loopback: the carrier's app),
        closed when the federation stops."""
        port = self.carriers[carrier_id].holder_port
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.channels.append(channel)
        return channel

    def running_platforms(self) -> list[str]:
        """The platforms started here and not stopped since."""
        return [p for p, handle in self.platforms.items() if not handle.stopped]

    async def restart_platform(self, platform_id: str) -> PlatformHandle:
        config = load_platform_config(self.layout.platform_configs[platform_id])
        handle = await start_platform(config)
        self.platforms[platform_id] = handle  # stop() stops it, even if it never gets ready
        async with asyncio.timeout(10):
            await handle.trust.ready.wait()
        if platform_id in self.gateway.links:  # it is sent traffic once the gateway sees SERVING
            await until_serving(self.gateway, [platform_id], timeout=10)
        return handle

    async def events_settled(self, timeout: float = 20.0) -> None:
        """Wait until every platform has acknowledged the whole event log so far (the port
        halves the gateway took from the carriers at start, say). Platforms whose events go by
        SSF are left out: their receivers are the tests' own."""
        gw = self.gateway
        grpc_delivery = {m.id for m in gw.config.platforms if not m.events.startswith("ssf-")}
        async with asyncio.timeout(timeout):
            while True:
                head = await gw.store.run(gw.events.head)
                acked = [
                    await gw.store.run(gw.events.cursor, p)
                    for p in self.platforms
                    if p in grpc_delivery
                ]
                if all(a >= head for a in acked):
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Close the holder channels, then stop the gateway, the carriers and the platforms;
        each of them even if stopping one before it failed."""
        await _stop_all(self.gateway, self.carriers, self.platforms, self.channels)


async def _stop_all(
    gateway: Gateway | None,
    carriers: Mapping[str, CarrierHandle],
    platforms: Mapping[str, PlatformHandle],
    channels: Sequence[grpc.aio.Channel] = (),
) -> None:
    async with contextlib.AsyncExitStack() as stack:  # runs the callbacks last to first
        for platform in platforms.values():
            stack.push_async_callback(platform.stop, 0)
        for carrier in carriers.values():
            stack.push_async_callback(carrier.stop, 0)
        if gateway is not None:
            stack.push_async_callback(gateway.stop, 0)
        for channel in channels:
            stack.push_async_callback(channel.close)


async def start_federation(root: Path, *, settle: bool = True, **kw: object) -> Federation:
    """Lay out a federation in ``root`` (``kw`` go to ``create_federation``) and start it here.

    Returns once the gateway is ready, every platform holds a verified trust bundle and the
    gateway has seen its health report SERVING, and (with
    ``settle``; pass False when a platform is made to fail) every platform has acknowledged
    the event log so far (the carriers' port halves).
    """
    layout = create_federation(root, **kw)  # type: ignore[arg-type]
    platforms: dict[str, PlatformHandle] = {}
    carriers: dict[str, CarrierHandle] = {}
    gw: Gateway | None = None
    try:
        for p, cfg in layout.platform_configs.items():
            platforms[p] = await start_platform(load_platform_config(cfg))
        for c, cfg in layout.carrier_configs.items():
            carriers[c] = await start_carrier(load_carrier_config(cfg))
        gw = await Gateway.start(load_gateway_config(layout.gateway_config))
        async with asyncio.timeout(20):
            await gw.ready.wait()
            for handle in platforms.values():
                await handle.trust.ready.wait()
        await until_serving(gw, platforms)  # and the gateway has seen each report SERVING
    except BaseException:
        # Stop whatever started, so no server is left to grpc's garbage-collection shutdown.
        await _stop_all(gw, carriers, platforms)
        raise
    fed = Federation(layout, gw, carriers, platforms)
    try:
        if settle:
            await fed.events_settled()
    except BaseException:
        await fed.stop()
        raise
    return fed


@dataclass
class FederationProcesses:
    """A federation with one ``numfed`` process per member."""

    layout: FederationLayout
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """"gateway", "carrier-<id>", "platform-<id>" -> its process."""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal one member and wait for it to exit; returns its exit code."""
        proc = self.processes[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def restart(self, name: str, timeout: float = 10.0) -> subprocess.Popen[bytes]:
        """Stop one member (SIGTERM) and start it again from its config, its output appended to
        its log; returns the new process (also in ``processes``). A member already stopped is
        just started."""
        self.stop(name, timeout=timeout)
        role, _, member = name.partition("-")
        configs = {"carrier": self.layout.carrier_configs, "platform": self.layout.platform_configs}
        config = self.layout.gateway_config if role == "gateway" else configs[role][member]
        log = self.layout.root / "logs" / f"{name}.log"
        self.processes[name] = _spawn(role, config, log, append=True)
        return self.processes[name]

    def stop_all(self) -> None:
        for name in list(self.processes):
            try:
                self.stop(name)
            except subprocess.TimeoutExpired:
                self.stop(name, signal.SIGKILL)


async def until_serving(
    gateway: Gateway, platform_ids: Iterable[str] | None = None, timeout: float = 20.0
) -> None:
    """Wait until ``gateway`` has heard each platform (default: each it links to) report
    SERVING on its health watch: only then does it send the platform queries (rule
    PLAT-OPS-1). A gateway started by hand meets platforms that are still fetching their first
    trust bundle, or a channel still in reconnect backoff; a test that queries at once waits
    here first. TimeoutError after ``timeout`` seconds, naming what each platform reports."""
    ids = list(gateway.links if platform_ids is None else platform_ids)
    try:
        async with asyncio.timeout(timeout):
            for p in ids:
                await gateway.links[p].until_serving(timeout)
    except TimeoutError:
        heard = {p: gateway.links[p].health for p in ids}
        raise TimeoutError(f"not all platforms SERVING after {timeout} s: {heard}") from None


async def wait_serving(
    endpoint: str, pki_dir: Path, server: PeerId, service: str = "", timeout: float = 20.0
) -> None:
    """Poll the gRPC health service at ``endpoint`` (mTLS, as the gateway) until SERVING."""
    async with asyncio.timeout(timeout):
        while True:
            channel = pki.secure_channel(endpoint, pki_dir, pki.GATEWAY, server=server)
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            finally:
                await channel.close()
            await asyncio.sleep(0.1)


def _spawn(role: str, config: Path, log: Path, *, append: bool = False) -> subprocess.Popen[bytes]:
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "numfed", role, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def spawn_federation(
    root: Path,
    *,
    carriers: Sequence[str] | None = None,
    platforms: Sequence[str] | None = None,
    ready_timeout: float = 20.0,
    **kw: object,
) -> FederationProcesses:
    """Lay out a federation in ``root`` and start each member as its own process.

    Returns once every platform and the gateway answer health checks as SERVING (each within
    ``ready_timeout`` seconds: a dozen processes starting at once on a busy machine need more
    than the default); each process's output goes to ``root/logs/<name>.log``. Call
    ``stop_all()`` when done.
    """
    if carriers is not None:
        kw["carriers"] = tuple(carriers)
    if platforms is not None:
        kw["platforms"] = tuple(platforms)
    layout = create_federation(root, **kw)  # type: ignore[arg-type]
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    fed = FederationProcesses(layout)
    try:
        for c, cfg in layout.carrier_configs.items():
            fed.processes[f"carrier-{c}"] = _spawn("carrier", cfg, logs / f"carrier-{c}.log")
        for p, cfg in layout.platform_configs.items():
            fed.processes[f"platform-{p}"] = _spawn("platform", cfg, logs / f"platform-{p}.log")
        fed.processes["gateway"] = _spawn("gateway", layout.gateway_config, logs / "gateway.log")
        await wait_serving(
            layout.gateway_endpoint,
            layout.pki_dir,
            pki.GATEWAY,
            "numfed.v1.GatewayService",
            timeout=ready_timeout,
        )
        waits: Mapping[str, str] = layout.platform_endpoints
        for p, endpoint in waits.items():
            await wait_serving(
                endpoint,
                layout.pki_dir,
                PeerId(Role.PLATFORM, p),
                "numfed.v1.PlatformService",
                timeout=ready_timeout,
            )
    except BaseException:
        fed.stop_all()
        raise
    return fed
