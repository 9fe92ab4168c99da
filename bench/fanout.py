"""Fan-out query cost: the gateway beside a bare forwarding proxy, in the same run.

For each N, both are driven by the same closed-loop client (``--in-flight`` queries at once for
``--seconds``). The gateway does mTLS, claim verification, authorisation, batching and audit;
the proxy makes one plain unary call per backend per query, no TLS, no logic. Reported per
implementation: queries/s, p50/p99 latency, and CPU per query of the serving process itself
(from /proc, so the client, platforms and backends on the same cores do not count).

    python -m bench.fanout --platforms 1,7 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.trustfiles import load_trusted_state
from numfed.trusthints import VersionStatement
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

CMCC = PeerId(Role.CARRIER, "cmcc")
TICK = os.sysconf("SC_CLK_TCK")


def carrier_channel(layout: FederationLayout, target: str | None = None) -> grpc.aio.Channel:
    """cmcc's channel to the gateway (or to ``target``) as its reference adapter opens one:
    mTLS, each call stating the trust versions it holds (those of the federation's trust
    files), so that answers leave out a version hint with no news (numfed.trusthints)."""
    held = load_trusted_state(layout.trust_dir, now=datetime.now(UTC)).versions
    return pki.secure_channel(
        target or layout.gateway_endpoint,
        layout.pki_dir,
        CMCC,
        server=pki.GATEWAY,
        interceptors=[VersionStatement(lambda: held)],
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def closed_loop(
    call: Callable[[], Awaitable[Any]], in_flight: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            await call()
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies


def summary(
    name: str, n: int, latencies: list[float], cpu: float, seconds: float
) -> dict[str, Any]:
    q = sorted(latencies)
    return {
        "impl": name,
        "platforms": n,
        "queries": len(q),
        "qps": round(len(q) / seconds, 1),
        "p50_ms": round(statistics.median(q) * 1000, 2),
        "p99_ms": round(q[int(len(q) * 0.99) - 1] * 1000, 2),
        "cpu_ms_per_query": round(cpu / len(q) * 1000, 3),
    }


def stop_processes(procs: Iterable[subprocess.Popen[str] | None], timeout: float = 10.0) -> None:
    """SIGTERM every process, then wait for each; one still running after ``timeout`` is
    killed, so that no benchmark process outlives the run. Closes their output pipes."""
    running = [p for p in procs if p is not None]
    for p in running:
        p.terminate()
    for p in running:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def wait_serving(endpoint: str, pki_dir: Path, service: str, timeout: float = 60) -> None:
    creds = pki.channel_credentials(pki_dir, CMCC)
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(endpoint, creds) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{service} at {endpoint} did not become ready")


PLATFORMS_PER_HOST = 250
"""Simulated platforms served by one process (``bench.members_host``): at N = 1,000, four."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn_members(
    root: Path, platforms: list[str], *, simulated: bool = False
) -> list[subprocess.Popen[str]]:
    """The carriers and ``platforms`` in as few processes as hold them, each ready when this
    returns: reference platforms, or with ``simulated`` ``bench.sim_platforms``."""
    chunks = [
        platforms[i : i + PLATFORMS_PER_HOST] for i in range(0, len(platforms), PLATFORMS_PER_HOST)
    ]
    if simulated:
        hosts = [spawn("bench.members_host", str(root), "carriers")]
        hosts += [spawn("bench.sim_platforms", str(root), *chunk) for chunk in chunks]
    else:
        hosts = [spawn("bench.members_host", str(root), "carriers", *chunks[0])]
        hosts += [spawn("bench.members_host", str(root), *chunk) for chunk in chunks[1:]]
    try:
        for h in hosts:
            assert h.stdout is not None
            if h.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a members host did not start (exit status {h.wait()})")
    except BaseException:
        stop_processes(hosts)
        raise
    return hosts


async def gateway_run(
    n: int, seconds: float, in_flight: int, workdir: Path, *, simulated: bool = False
) -> dict[str, Any]:
    """The gateway asked by a carrier that takes the compact answer (``compact_none``): the
    platforms with nothing as one list of ids. The platforms are the reference platforms, or
    with ``simulated`` ones that answer at once that nothing is bound (``bench.sim_platforms``,
    like the proxy's echo backends)."""
    platforms = [f"p{i:04d}" for i in range(n)]
    members: list[subprocess.Popen[str]] = []
    gateway: subprocess.Popen[str] | None = None
    for attempt in range(3):  # a port taken meanwhile by another process: new ports
        layout = create_federation(
            workdir / f"gw-{n}-{attempt}", carriers=("cmcc",), platforms=platforms
        )
        gateway = None
        try:
            members = spawn_members(layout.root, platforms, simulated=simulated)
            gateway = spawn("numfed", "gateway", "serve", "--config", str(layout.gateway_config))
            wait_serving(layout.gateway_endpoint, layout.pki_dir, "numfed.v1.GatewayService")
            break
        except RuntimeError:
            stop_processes((gateway, *members))
            members = []
            if attempt == 2:
                raise
    assert gateway is not None
    try:
        world = demo_scenario()
        number = world.showcase["recycled_once"]
        now = datetime.now(UTC)
        claim = TenureClaim.new(
            number=number,
            carrier_id="cmcc",
            tenure_start=world.histories[number].tenure_start(now),
            purpose=Purpose.QUERY_PRIOR,
            now=now,
        )
        envelope = sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")).to_proto()
        request = gateway_pb2.QueryBindingsRequest(claim=envelope, compact_none=True)
        async with carrier_channel(layout) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)

            async def one() -> None:
                answer = await stub.QueryBindings(request, timeout=60)
                assert len(answer.results) + len(answer.none_platform_ids) == n

            await closed_loop(one, in_flight, 1.0)  # warm up
            cpu0 = cpu_seconds(gateway.pid)
            latencies = await closed_loop(one, in_flight, seconds)
            cpu = cpu_seconds(gateway.pid) - cpu0
            row = summary("gateway", n, latencies, cpu, seconds)
            row["rss_mb"] = round(rss_mb(gateway.pid), 1)
            row["platform_kind"] = "simulated" if simulated else "reference"
        return row
    finally:
        stop_processes((gateway, *members))


async def replicas_run(
    n: int, replicas: int, seconds: float, in_flight: int, workdir: Path, database_url: str
) -> dict[str, Any]:
    """``replicas`` gateway processes on one PostgreSQL database, ``n`` simulated platforms,
    the client spreading its queries over the replicas (round-robin): queries/s, and the
    replicas' CPU together per query and per second."""
    platforms = [f"p{i:04d}" for i in range(n)]
    members: list[subprocess.Popen[str]] = []
    gateways: list[subprocess.Popen[str]] = []
    for attempt in range(3):  # a port taken meanwhile by another process: new ports
        layout = create_federation(
            workdir / f"replicas-{replicas}-{attempt}",
            carriers=("cmcc",),
            platforms=platforms,
            replicas=replicas,
            database_url=database_url,
        )
        try:
            members = spawn_members(layout.root, platforms, simulated=True)
            gateways = [
                spawn("numfed", "gateway", "serve", "--config", str(config))
                for config in layout.replica_configs
            ]
            for endpoint in layout.replica_endpoints:
                wait_serving(endpoint, layout.pki_dir, "numfed.v1.GatewayService")
            break
        except RuntimeError:
            stop_processes((*gateways, *members))
            gateways, members = [], []
            if attempt == 2:
                raise
    try:
        world = demo_scenario()
        number = world.showcase["recycled_once"]
        now = datetime.now(UTC)
        claim = TenureClaim.new(
            number=number,
            carrier_id="cmcc",
            tenure_start=world.histories[number].tenure_start(now),
            purpose=Purpose.QUERY_PRIOR,
            now=now,
        )
        envelope = sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")).to_proto()
        request = gateway_pb2.QueryBindingsRequest(claim=envelope, compact_none=True)
        async with carrier_channel(layout, layout.gateway_target) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)

            async def one() -> None:
                answer = await stub.QueryBindings(request, timeout=60)
                assert len(answer.results) + len(answer.none_platform_ids) == n

            await closed_loop(one, in_flight, 1.0)  # warm up
            cpu0 = [cpu_seconds(g.pid) for g in gateways]
            latencies = await closed_loop(one, in_flight, seconds)
            cpu = sum(cpu_seconds(g.pid) - c for g, c in zip(gateways, cpu0, strict=True))
            row = summary("gateway", n, latencies, cpu, seconds)
            row["replicas"] = replicas
            row["cpu_s_per_s"] = round(cpu / seconds, 3)
            row["qps_per_core"] = round(len(latencies) / cpu, 1) if cpu else 0.0
            row["rss_mb"] = round(sum(rss_mb(g.pid) for g in gateways), 1)
        return row
    finally:
        stop_processes((*gateways, *members))


async def proxy_run(n: int, seconds: float, in_flight: int) -> dict[str, Any]:
    backends = spawn("bench.bare_proxy", "backends", str(n))
    proxy = None
    try:
        assert backends.stdout is not None
        ports = backends.stdout.readline().split()
        proxy = spawn("bench.bare_proxy", "proxy", *ports)
        assert proxy.stdout is not None
        port = int(proxy.stdout.readline())
        payload = b"x" * 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/bench.Echo/Call", lambda b: b, lambda b: b)

            async def one() -> None:
                await call(payload, timeout=60)

            await closed_loop(one, in_flight, 1.0)
            cpu0 = cpu_seconds(proxy.pid)
            latencies = await closed_loop(one, in_flight, seconds)
            cpu = cpu_seconds(proxy.pid) - cpu0
            row = summary("bare proxy", n, latencies, cpu, seconds)
            row["rss_mb"] = round(rss_mb(proxy.pid), 1)
        return row
    finally:
        stop_processes((proxy, backends))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--platforms", default="1,7", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="numfed-bench-") as tmp:
        for n in (int(x) for x in args.platforms.split(",")):
            rows.append(asyncio.run(proxy_run(n, args.seconds, args.in_flight)))
            rows.append(asyncio.run(gateway_run(n, args.seconds, args.in_flight, Path(tmp))))
            g, p = rows[-1], rows[-2]
            ratio = g["cpu_ms_per_query"] / p["cpu_ms_per_query"]
            g["cpu_ratio_to_proxy"] = round(ratio, 3)
            print(
                f"N={n:>3}  proxy {p['qps']:>7} q/s p99 {p['p99_ms']:>7} ms "
                f"{p['cpu_ms_per_query']:>7} ms CPU/q | gateway {g['qps']:>7} q/s "
                f"p99 {g['p99_ms']:>7} ms {g['cpu_ms_per_query']:>7} ms CPU/q  "
                f"(CPU ratio {ratio:.2f})",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
