"""Every benchmark of issue 6, each beside its reference, in one run (``make bench``).

Writes ``bench/results/*.json``, ``bench/results/summary.json`` (one object per target:
name, value, reference, ratio, target, met — ``met`` computed from the figures), PNG plots in
``bench/results/`` and the results section of ``docs/benchmarks.md``.

    python -m bench.suite            # the full run (under 10 minutes on 2 cores)
    python -m bench.suite --quick    # every benchmark at tiny size (the smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as platform_mod
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa

from bench import facades, portal
from bench.fanout import (
    carrier_channel,
    gateway_run,
    proxy_run,
    replicas_run,
    spawn,
    stop_processes,
    wait_serving,
)
from bench.observability import bench_observability, document_section
from bench.observability import write_doc as write_observability_doc
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.cli import Command
from numfed.envelope import Envelope
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout, create_federation, number_plan
from numfed.pgtemp import PostgresUnavailable, TempPostgres
from numfed.portability import NumberPlan
from numfed.scenario import APP_PLATFORMS, CARRIERS, demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

RESULTS = Path("bench/results")
DOC = Path("docs/benchmarks.md")
WORLD = demo_scenario()
MARK_START = "<!-- results:start (written by python -m bench.suite) -->"
MARK_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Size:
    fanout_ns: tuple[int, ...]
    fanout_seconds: float
    in_flight: int
    latency_queries: int
    releases: int
    acceptance: int
    raw_rows: int
    verify_rounds: int
    events: int
    overload_seconds: float
    facade_calls: int = 500
    facade_events: int = 2000
    scale_ns: tuple[int, ...] = (7, 50, 200, 1000)
    scale_seconds: float = 6.0
    scale_in_flight: int = 16
    replicas_n: int = 200
    launch_seconds: float = 90.0
    launch_warmup: float = 10.0


FULL = Size((1, 7, 50, 200), 4.0, 64, 200, 200, 1000, 1000, 3000, 20000, 20.0)
QUICK = Size((1, 7), 0.5, 4, 5, 5, 20, 50, 50, 200, 2.0, 10, 100, (7, 20), 0.5, 4, 7, 3.0, 2.0)


def p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(int(len(s) * q), len(s) - 1)] if s else 0.0


def served_now() -> list[tuple[str, datetime]]:
    """cmcc's held numbers in its own ranges: the benchmark federations have no other carrier
    to sign the other half of a port, so numbers ported in from one are not cmcc's there."""
    now = datetime.now(UTC)
    plan = NumberPlan(number_plan(CARRIERS))
    return [
        (h.number, h.tenure_start(now))
        for h in WORLD.histories_served_by("cmcc", now)
        if h.current_tenure(now) and plan.range_holder(h.number) == "cmcc"
    ]


def claim_for(layout: FederationLayout, purpose: Purpose, i: int = 0) -> Any:
    numbers = served_now()
    number, start = numbers[i % len(numbers)]
    claim = TenureClaim.new(
        number=number,
        carrier_id="cmcc",
        tenure_start=start,
        purpose=purpose,
        now=datetime.now(UTC),
    )
    return sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")).to_proto()


@dataclass
class Running:
    layout: FederationLayout
    gateway_pid: int
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub


@asynccontextmanager
async def federation(
    workdir: Path,
    name: str,
    *,
    platforms: tuple[str, ...] = APP_PLATFORMS,
    knobs: Mapping[str, Mapping[str, object]] | None = None,
    limits: Mapping[str, object] | None = None,
    database_url: str = "",
    process_per_platform: bool = False,
    facades: bool = False,
) -> AsyncIterator[Running]:
    """A gateway process, and its carriers and platforms in one other process (or, with
    ``process_per_platform``, the carriers in one and each platform in a process of its own)."""
    for attempt in range(3):  # a port taken meanwhile by another process: new ports
        layout = create_federation(
            workdir / (name if attempt == 0 else f"{name}-{attempt}"),
            carriers=("cmcc",),
            platforms=platforms,
            platform_knobs=knobs,
            limits=limits,
            database_url=database_url,
            facades=facades,
        )
        if process_per_platform:
            hosts = [spawn("bench.members_host", str(layout.root), p) for p in platforms]
            hosts.append(spawn("bench.members_host", str(layout.root), "carriers"))
        else:
            hosts = [spawn("bench.members_host", str(layout.root))]
        gateway = None
        try:
            for h in hosts:
                assert h.stdout is not None
                if h.stdout.readline().strip() != "ready":
                    raise RuntimeError("a members host did not start")
            gateway = spawn("numfed", "gateway", "serve", "--config", str(layout.gateway_config))
            wait_serving(layout.gateway_endpoint, layout.pki_dir, "numfed.v1.GatewayService")
            for endpoint in layout.platform_endpoints.values():  # each holds a verified bundle
                wait_serving(endpoint, layout.pki_dir, "numfed.v1.PlatformService")
            break
        except RuntimeError:
            stop_processes((gateway, *hosts), timeout=15)
            if attempt == 2:
                raise
    assert gateway is not None
    try:
        async with carrier_channel(layout) as ch:
            yield Running(layout, gateway.pid, ch, gateway_pb2_grpc.GatewayServiceStub(ch))
    finally:
        stop_processes((gateway, *hosts), timeout=15)


# -- 1 and 8: fan-out and the scale curve ------------------------------------------------------


async def bench_fanout(size: Size, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in size.fanout_ns:
        seconds = size.fanout_seconds
        rows.append(await proxy_run(n, seconds, size.in_flight))
        rows.append(await gateway_run(n, seconds, size.in_flight, workdir))
        g, b = rows[-1], rows[-2]
        g["cpu_ratio_to_proxy"] = round(g["cpu_ms_per_query"] / b["cpu_ms_per_query"], 3)
        print(
            f"  fan-out N={n:>3}: proxy {b['qps']} q/s p99 {b['p99_ms']} ms "
            f"{b['cpu_ms_per_query']} ms CPU/q | gateway {g['qps']} q/s p99 {g['p99_ms']} ms "
            f"{g['cpu_ms_per_query']} ms CPU/q (x{g['cpu_ratio_to_proxy']})",
            flush=True,
        )
    return rows


async def bench_scale(size: Size, workdir: Path) -> list[dict[str, Any]]:
    """The scale curve to N = 1,000: simulated platforms (``bench.sim_platforms``, 250 to a
    process, answering at once that nothing is bound) beside the proxy's echo backends, the same
    client with ``scale_in_flight`` queries at once; CPU per query and RSS of each serving
    process."""
    rows: list[dict[str, Any]] = []
    for n in size.scale_ns:
        seconds, in_flight = size.scale_seconds, size.scale_in_flight
        b = await proxy_run(n, seconds, in_flight)
        g = await gateway_run(n, seconds, in_flight, workdir / "scale", simulated=True)
        g["cpu_ratio_to_proxy"] = round(g["cpu_ms_per_query"] / b["cpu_ms_per_query"], 3)
        rows += [b, g]
        print(
            f"  scale N={n:>4}: proxy {b['qps']} q/s {b['cpu_ms_per_query']} ms CPU/q "
            f"{b['rss_mb']} MB | gateway {g['qps']} q/s {g['cpu_ms_per_query']} ms CPU/q "
            f"(x{g['cpu_ratio_to_proxy']}) {g['rss_mb']} MB",
            flush=True,
        )
    return rows


async def bench_replicas(size: Size, workdir: Path) -> list[dict[str, Any]]:
    """1, 2 and 3 gateway replicas on one PostgreSQL database, N = 200 simulated platforms."""
    rows: list[dict[str, Any]] = []
    try:
        pg = TempPostgres(workdir / "pg-replicas").start()
    except PostgresUnavailable as exc:
        print(f"  (replicas skipped: {exc})")
        return rows
    try:
        for replicas in (1, 2, 3):
            url = pg.create_database(f"replicas{replicas}")
            row = await replicas_run(
                size.replicas_n,
                replicas,
                size.scale_seconds,
                size.in_flight,
                workdir / "replicas",
                url,
            )
            rows.append(row)
            print(
                f"  {replicas} replica(s), N={size.replicas_n}: {row['qps']} q/s, "
                f"{row['cpu_ms_per_query']} ms CPU/q, {row['cpu_s_per_s']} cores busy, "
                f"{row['qps_per_core']} q/s per core",
                flush=True,
            )
    finally:
        pg.stop()
    return rows


# -- 2: one holder's query while every platform takes 20 ms ------------------------------------


async def bench_latency(size: Size, workdir: Path) -> dict[str, Any]:
    """One holder's query at a time; each platform (a process of its own) adds 20 ms. The
    reference is each platform's own latency, called directly, the same way, in the same run."""
    from numfed.identity import PeerId, Role
    from numfed.v1 import platform_pb2, platform_pb2_grpc

    knobs = {p: {"latency_ms": 20.0} for p in APP_PLATFORMS}
    async with federation(workdir, "latency", knobs=knobs, process_per_platform=True) as fed:
        claim = claim_for(fed.layout, Purpose.QUERY_PRIOR)
        request = gateway_pb2.QueryBindingsRequest(claim=claim)
        for _ in range(5):  # warm up
            await fed.stub.QueryBindings(request, timeout=5)
        times: list[float] = []
        for _ in range(size.latency_queries):
            t0 = time.monotonic()
            await fed.stub.QueryBindings(request, timeout=5)
            times.append((time.monotonic() - t0) * 1000)
        direct: dict[str, list[float]] = {}
        batch = platform_pb2.BatchQueryBindingsRequest(
            items=[platform_pb2.QueryItem(item_id="x", claim=claim)]
        )
        stubs: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as channels:  # closes each channel at the end
            for pid in APP_PLATFORMS:
                ch = pki.secure_channel(
                    fed.layout.platform_endpoints[pid],
                    fed.layout.pki_dir,
                    pki.GATEWAY,
                    server=PeerId(Role.PLATFORM, pid),
                )
                channels.push_async_callback(ch.close)
                stubs[pid] = platform_pb2_grpc.PlatformServiceStub(ch)
                await stubs[pid].BatchQueryBindings(batch, timeout=5)
            # Each platform alone, one after another.
            for pid, stub in stubs.items():
                direct[pid] = []
                for _ in range(max(size.latency_queries // 4, 3)):
                    t0 = time.monotonic()
                    await stub.BatchQueryBindings(batch, timeout=5)
                    direct[pid].append((time.monotonic() - t0) * 1000)
            # All seven at once, straight from here: the slowest platform's latency while the
            # others answer too (on the same two cores), with no gateway in between.
            together: list[float] = []
            for _ in range(size.latency_queries):
                t0 = time.monotonic()
                await asyncio.gather(
                    *(s.BatchQueryBindings(batch, timeout=5) for s in stubs.values())
                )
                together.append((time.monotonic() - t0) * 1000)
    slowest = max(direct, key=lambda k: statistics.median(direct[k]))
    row = {
        "platforms": len(APP_PLATFORMS),
        "platform_latency_ms": 20.0,
        "queries": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(p(times, 0.99), 2),
        "slowest_platform": slowest,
        "slowest_platform_p50_ms": round(statistics.median(direct[slowest]), 2),
        "slowest_platform_p99_ms": round(p(direct[slowest], 0.99), 2),
        "sum_of_platform_p50_ms": round(sum(statistics.median(v) for v in direct.values()), 2),
        "all_platforms_at_once_direct_p50_ms": round(statistics.median(together), 2),
        "all_platforms_at_once_direct_p99_ms": round(p(together, 0.99), 2),
    }
    print(
        f"  latency with 20 ms platforms: gateway p50 {row['p50_ms']} ms, p99 {row['p99_ms']} "
        f"ms; slowest platform alone p50 {row['slowest_platform_p50_ms']} ms, all seven called "
        f"at once directly p50 {row['all_platforms_at_once_direct_p50_ms']} ms "
        f"(their sum: {row['sum_of_platform_p50_ms']} ms)"
    )
    return row


# -- 3: release turnaround ---------------------------------------------------------------------


async def bench_turnaround(size: Size, workdir: Path) -> dict[str, Any]:
    async with federation(workdir, "turnaround") as fed:
        times: list[float] = []
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                op = await fed.stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=uuid.uuid4().hex,
                        claim=claim_for(fed.layout, Purpose.RELEASE_PRIOR, i),
                    ),
                    timeout=10,
                )
                accepted = time.monotonic()
                call = fed.stub.WatchOperation(
                    gateway_pb2.WatchOperationRequest(name=op.name), timeout=30
                )
                async for update in call:
                    if update.done:
                        times.append((time.monotonic() - accepted) * 1000)

        await asyncio.gather(*(one(i) for i in range(size.releases)))
    row = {
        "platforms": len(APP_PLATFORMS),
        "releases": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(p(times, 0.99), 1),
    }
    print(f"  release turnaround: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
    return row


# -- 4: durable acceptance ---------------------------------------------------------------------


def raw_core_rate(url: str, rows: int) -> float:
    """Raw SQLAlchemy Core: one row per transaction, committed, on the same database."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    t = sa.Table(
        f"raw_{uuid.uuid4().hex[:8]}",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    if url.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _rec: Any) -> None:  # the gateway's own settings
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    meta.create_all(engine)
    body = b"x" * 400
    t0 = time.monotonic()
    for i in range(rows):
        with engine.begin() as c:
            c.execute(sa.insert(t).values(id=i, body=body))
    rate = rows / (time.monotonic() - t0)
    engine.dispose()
    return rate


async def accept_rate(
    layout: FederationLayout,
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    n: int,
    *,
    first: int = 0,
) -> float:
    """Releases accepted per second, 64 calls at once: the same client for the gateway and for
    the bare commit server (``first`` picks other numbers, so that no claim is sent twice)."""
    requests = [
        gateway_pb2.ReleaseBindingsRequest(
            request_id=uuid.uuid4().hex,
            claim=claim_for(layout, Purpose.RELEASE_PRIOR, first + i),
        )
        for i in range(n)
    ]
    sem = asyncio.Semaphore(64)

    async def one(r: gateway_pb2.ReleaseBindingsRequest) -> None:
        async with sem:
            await stub.ReleaseBindings(r, timeout=30)

    await asyncio.gather(*(one(r) for r in requests[: max(n // 10, 1)]))  # warm up
    t0 = time.monotonic()
    await asyncio.gather(*(one(r) for r in requests[max(n // 10, 1) :]))
    return (n - max(n // 10, 1)) / (time.monotonic() - t0)


async def commit_server_rate(layout: FederationLayout, url: str, n: int) -> float:
    """The reference: ``bench/commit_server.py`` on the same mTLS, driven by the same client."""
    server = spawn("bench.commit_server", str(layout.pki_dir), url)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        async with carrier_channel(layout, f"127.0.0.1:{port}") as ch:
            return await accept_rate(layout, gateway_pb2_grpc.GatewayServiceStub(ch), n)
    finally:
        stop_processes((server,))


async def accept_with_queries(fed: Running, n: int, in_flight: int) -> tuple[float, float]:
    """Releases accepted per second while ``in_flight`` queries run at once all along, and the
    queries answered per second meanwhile: the dispatcher and the queries' fan-out must not
    starve acceptance."""
    request = gateway_pb2.QueryBindingsRequest(
        claim=claim_for(fed.layout, Purpose.QUERY_PRIOR), compact_none=True
    )
    answered = 0
    stop = asyncio.Event()

    async def querier() -> None:
        nonlocal answered
        while not stop.is_set():
            await fed.stub.QueryBindings(request, timeout=30)
            answered += 1

    queriers = [asyncio.create_task(querier()) for _ in range(in_flight)]
    try:
        t0 = time.monotonic()
        rate = await accept_rate(fed.layout, fed.stub, n, first=n)
        qps = answered / (time.monotonic() - t0)
    finally:
        stop.set()
        await asyncio.gather(*queriers)
    return rate, qps


async def bench_acceptance(size: Size, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    backends: list[tuple[str, str]] = [("sqlite", f"sqlite:///{workdir / 'raw.db'}")]
    pg: TempPostgres | None = None
    try:
        pg = TempPostgres(workdir / "pg").start()
        backends.append(("postgresql", pg.create_database("raw")))
    except PostgresUnavailable as exc:
        print(f"  (PostgreSQL skipped: {exc})")
    try:
        for name, raw_url in backends:
            raw = raw_core_rate(raw_url, size.raw_rows)
            if name == "sqlite":
                url, bare_url = (
                    f"sqlite:///{workdir / 'accept.db'}",
                    f"sqlite:///{workdir / 'bare.db'}",
                )
            else:
                assert pg is not None
                url, bare_url = pg.create_database("accept"), pg.create_database("bare")
            async with federation(workdir, f"accept-{name}", database_url=url) as fed:
                bare = await commit_server_rate(fed.layout, bare_url, size.acceptance)
                rate = await accept_rate(fed.layout, fed.stub, size.acceptance)
                mixed, qps = await accept_with_queries(fed, size.acceptance, 16)
            rows.append(
                {
                    "database": name,
                    "accepted_per_s": round(rate, 1),
                    "bare_commit_server_per_s": round(bare, 1),
                    "ratio": round(rate / bare, 3),
                    "accepted_per_s_with_queries": round(mixed, 1),
                    "queries_per_s_meanwhile": round(qps, 1),
                    "raw_core_commits_per_s": round(raw, 1),
                }
            )
            print(
                f"  durable acceptance on {name}: {rate:.0f} releases/s (bare gRPC commit "
                f"server: {bare:.0f}/s; raw Core one row per commit: {raw:.0f}/s); with 16 "
                f"queries in flight: {mixed:.0f} releases/s and {qps:.0f} queries/s"
            )
    finally:
        if pg is not None:
            pg.stop()
    return rows


# -- 5: claim verification ---------------------------------------------------------------------


def bench_verification(size: Size, workdir: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.authority import Portability, check_claim
    from gateway.pseudonym import Pseudonymizer
    from numfed.envelope import pae
    from numfed.identity import PeerId, Role
    from numfed.trustfiles import load_trusted_state

    layout = create_federation(workdir / "verify", carriers=("cmcc",), platforms=("weibo",))
    now = datetime.now(UTC)
    trust = load_trusted_state(layout.trust_dir, now=now)
    pseudonym = Pseudonymizer(b"k" * 32)
    envelopes = [Envelope.from_proto(claim_for(layout, Purpose.QUERY_PRIOR, i)) for i in range(50)]
    portability = Portability(
        NumberPlan.from_bundle(trust.bundle),
        pseudonym,
        {pseudonym(n): "cmcc" for n, _ in served_now()},
    )
    caller = PeerId(Role.CARRIER, "cmcc")
    spki = pki.load_carrier_signer(layout.pki_dir, "cmcc").public.spki
    public = serialization.load_der_public_key(spki)
    assert isinstance(public, Ed25519PublicKey)
    raw = [(e.signatures[0].sig, pae(e.payload_type, e.payload)) for e in envelopes]

    def gateway_path(e: Envelope) -> None:
        check_claim(
            e,
            caller=caller,
            trust=trust,
            portability=portability,
            pseudonym=pseudonym,
            purposes=(Purpose.QUERY_PRIOR,),
            now=now,
        )

    def timed(fn: Callable[[int], None]) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for i in range(size.verify_rounds):
                fn(i % 50)
            best = min(best, (time.process_time() - t0) / size.verify_rounds)
        return best * 1e6

    ours = timed(lambda i: gateway_path(envelopes[i]))
    ref = timed(lambda i: public.verify(raw[i][0], raw[i][1]))
    row = {"gateway_us_per_claim": round(ours, 1), "raw_ed25519_us": round(ref, 1)}
    row["ratio"] = round(ours / ref, 3)
    print(f"  claim verification: {ours:.0f} us per claim (raw Ed25519 verify {ref:.0f} us)")
    return row


# -- 6: lifecycle events -----------------------------------------------------------------------


async def bench_events(size: Size, workdir: Path) -> dict[str, Any]:
    per_batch = 200
    async with federation(workdir, "events", process_per_platform=True) as fed:
        signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
        numbers = [n for n, _ in served_now()]
        at = datetime.now(UTC) - timedelta(days=1)
        batches = []
        for b in range(max(size.events // per_batch, 1)):
            events = [
                LifecycleEvent.new(
                    numbers[(b * per_batch + k) % len(numbers)], EventKind.DEACTIVATED, at
                )
                for k in range(per_batch)
            ]
            batches.append(sign_event_batch("cmcc", events, signer, now=datetime.now(UTC)))
        db = sa.create_engine(f"sqlite:///{fed.layout.root / 'state' / 'gateway' / 'gateway.db'}")
        t0 = time.monotonic()
        head = 0
        for env in batches:
            answer = await fed.stub.PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=env.to_proto()), timeout=10
            )
            head = answer.seq
        while True:
            with db.connect() as c:
                acked = c.execute(sa.text("SELECT platform_id, acked_seq FROM event_cursors")).all()
            if len(acked) >= len(APP_PLATFORMS) and all(r.acked_seq >= head for r in acked):
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError("events were not acknowledged within 120 s")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - t0
        db.dispose()
        # The reference: new batches of the same size fed to the same platforms directly, as
        # the gateway's pushers send them (20 to a call, each platform on its own), in order.
        fresh = [
            sign_event_batch(
                "cmcc",
                [
                    LifecycleEvent.new(
                        numbers[(b * per_batch + k) % len(numbers)], EventKind.DEACTIVATED, at
                    )
                    for k in range(per_batch)
                ],
                signer,
                now=datetime.now(UTC),
            ).to_proto()
            for b in range(len(batches))
        ]
        direct = await direct_events_rate(fed.layout, fresh, head, per_batch)
    total = len(batches) * per_batch
    row = {
        "events": total,
        "platforms": len(APP_PLATFORMS),
        "seconds": round(elapsed, 2),
        "events_per_s": round(total / elapsed, 1),
        "direct_events_per_s": round(direct, 1),
    }
    print(
        f"  events: {row['events_per_s']} events/s acknowledged by {len(APP_PLATFORMS)} "
        f"platforms (fed directly: {row['direct_events_per_s']} events/s)"
    )
    return row


async def direct_events_rate(
    layout: FederationLayout, batches: list[Any], after: int, per_batch: int
) -> float:
    """Events per second the platforms apply and acknowledge when fed directly."""
    from numfed.identity import PeerId, Role
    from numfed.v1 import events_pb2, platform_pb2, platform_pb2_grpc

    async def feed(platform_id: str) -> None:
        async with pki.secure_channel(
            layout.platform_endpoints[platform_id],
            layout.pki_dir,
            pki.GATEWAY,
            server=PeerId(Role.PLATFORM, platform_id),
        ) as ch:
            stub = platform_pb2_grpc.PlatformServiceStub(ch)
            for i in range(0, len(batches), 20):
                part = batches[i : i + 20]
                request = platform_pb2.DeliverEventsRequest(
                    batches=[
                        events_pb2.SequencedBatch(seq=after + i + k + 1, batch=b)
                        for k, b in enumerate(part)
                    ]
                )
                answer = await stub.DeliverEvents(request, timeout=60)
                if answer.ack_through_seq < after + i + len(part):
                    raise RuntimeError(f"{platform_id} did not acknowledge a direct delivery")

    t0 = time.monotonic()
    await asyncio.gather(*(feed(p) for p in APP_PLATFORMS))
    return len(batches) * per_batch / (time.monotonic() - t0)


# -- 7: overload -------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_overload(size: Size, workdir: Path) -> dict[str, Any]:
    concurrency, latency_s = 16, 0.2
    sustainable = concurrency / latency_s
    limits: dict[str, object] = {
        "max_concurrent_queries": concurrency,
        "max_queued_queries": concurrency,
        "admission_queue_wait": 0.5,
    }
    knobs = {p: {"latency_ms": latency_s * 1000} for p in APP_PLATFORMS}
    timeline: list[dict[str, float]] = []
    async with federation(workdir, "overload", knobs=knobs, limits=limits) as fed:
        requests = [
            gateway_pb2.QueryBindingsRequest(claim=claim_for(fed.layout, Purpose.QUERY_PRIOR, i))
            for i in range(32)
        ]
        loop = asyncio.get_running_loop()
        start = loop.time()
        buckets: dict[int, dict[str, list[float]]] = {}

        async def one(i: int) -> None:
            t0 = loop.time()
            b = buckets.setdefault(int(t0 - start), {"ok": [], "rejected": [], "other": []})
            try:
                await fed.stub.QueryBindings(requests[i % len(requests)], timeout=10)
                b["ok"].append((loop.time() - t0) * 1000)
            except grpc.aio.AioRpcError as exc:
                key = "rejected" if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else "other"
                b[key].append((loop.time() - t0) * 1000)

        rate = 10 * sustainable
        calls: list[asyncio.Task[None]] = []
        sent = 0
        rss: dict[int, float] = {}
        while (now := loop.time()) - start < size.overload_seconds:
            while sent < int((now - start) * rate):
                calls.append(asyncio.create_task(one(sent)))
                sent += 1
            rss.setdefault(int(now - start), rss_mb(fed.gateway_pid))
            await asyncio.sleep(0.005)
        await asyncio.gather(*calls)
        offered = sent / (loop.time() - start)
    for sec in sorted(buckets):
        b = buckets[sec]
        timeline.append(
            {
                "second": sec,
                "admitted": len(b["ok"]),
                "rejected": len(b["rejected"]),
                "other": len(b["other"]),
                "admitted_p99_ms": round(p(b["ok"], 0.99), 1),
                "rejection_p99_ms": round(p(b["rejected"], 0.99), 1),
                "rss_mb": round(rss.get(sec, 0.0), 1),
            }
        )
    ok = [x for b in buckets.values() for x in b["ok"]]
    rejected = [x for b in buckets.values() for x in b["rejected"]]
    row = {
        "sustainable_qps": sustainable,
        "offered_qps": round(offered, 1),
        "admitted": len(ok),
        "rejected": len(rejected),
        "other_errors": sum(len(b["other"]) for b in buckets.values()),
        "admitted_p99_ms": round(p(ok, 0.99), 1),
        "rejection_p99_ms": round(p(rejected, 0.99), 1),
        "rss_max_mb": round(max(rss.values()), 1),
        "timeline": timeline,
    }
    print(
        f"  overload at {offered:.0f} q/s (~10x {sustainable:.0f}): {len(ok)} admitted "
        f"(p99 {row['admitted_p99_ms']} ms), {len(rejected)} rejected (p99 "
        f"{row['rejection_p99_ms']} ms), RSS max {row['rss_max_mb']} MB"
    )
    return row


# -- summary, plots, document ------------------------------------------------------------------


def target(
    name: str, value: float, reference: float, target_ratio: float, *, higher_is_better: bool
) -> dict[str, Any]:
    ratio = value / reference if reference else float("inf")
    met = ratio >= target_ratio if higher_is_better else ratio <= target_ratio
    return {
        "name": name,
        "value": round(value, 3),
        "reference": round(reference, 3),
        "ratio": round(ratio, 3),
        "target": (">= " if higher_is_better else "<= ") + f"{target_ratio:g}x reference",
        "met": bool(met),
    }


def summarize(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    by_n = {(row["impl"], row["platforms"]): row for row in r["fanout"]}
    for n, limit in ((7, 0.5), (50, 0.2), (200, 0.1)):
        g, b = by_n.get(("gateway", n)), by_n.get(("bare proxy", n))
        if g and b:
            out.append(
                target(
                    f"fan-out gateway CPU ms/query, N={n} (reference: bare proxy)",
                    g["cpu_ms_per_query"],
                    b["cpu_ms_per_query"],
                    limit,
                    higher_is_better=False,
                )
            )
    scale = {(row["impl"], row["platforms"]): row for row in r["scale"]}
    g, b = scale.get(("gateway", 1000)), scale.get(("bare proxy", 1000))
    if g and b:
        out.append(
            target(
                "scale curve gateway CPU ms/query, N=1000 simulated platforms "
                "(reference: bare proxy, echo backends)",
                g["cpu_ms_per_query"],
                b["cpu_ms_per_query"],
                0.05,
                higher_is_better=False,
            )
        )
    g, b = by_n.get(("gateway", 7)), by_n.get(("bare proxy", 7))
    if g and b:
        out.append(
            target(
                "fan-out p99 ms, N=7 (reference: bare proxy p99)",
                g["p99_ms"],
                b["p99_ms"],
                1.0,
                higher_is_better=False,
            )
        )
    lat = r["latency"]
    out.append(
        target(
            "one query, 7 platforms adding 20 ms each, p50 ms (reference: the slowest of the "
            "7 platforms called at once directly, p50)",
            lat["p50_ms"],
            lat["all_platforms_at_once_direct_p50_ms"],
            1.2,
            higher_is_better=False,
        )
    )
    out.append(
        target(
            "release turnaround p99 ms, 7 platforms (reference: 1 s)",
            r["turnaround"]["p99_ms"],
            1000.0,
            1.0,
            higher_is_better=False,
        )
    )
    for row in r["acceptance"]:
        out.append(
            target(
                f"durable acceptance releases/s on {row['database']} "
                "(reference: bare grpc.aio server, same mTLS, same group commit, one row per call)",
                row["accepted_per_s"],
                row["bare_commit_server_per_s"],
                0.5,
                higher_is_better=True,
            )
        )
    v = r["verification"]
    out.append(
        target(
            "claim verification us/claim (reference: raw Ed25519 verify)",
            v["gateway_us_per_claim"],
            v["raw_ed25519_us"],
            1.15,
            higher_is_better=False,
        )
    )
    out.append(
        target(
            "events acknowledged per second at 7 platforms, end to end (reference: the same "
            "platforms fed the same batches directly)",
            r["events"]["events_per_s"],
            r["events"]["direct_events_per_s"],
            0.5,
            higher_is_better=True,
        )
    )
    modes = {m["mode"]: m for m in r["observability"]["modes"]}
    out.append(
        target(
            "metrics endpoint on and scraped every second: gateway CPU ms/query, 7 platforms "
            "(reference: no endpoint, no tracing)",
            modes["metrics"]["cpu_ms_per_query"],
            modes["off"]["cpu_ms_per_query"],
            1.1,
            higher_is_better=False,
        )
    )
    out.append(
        target(
            "tracing sampled at 10%: gateway CPU ms/query, 7 platforms (reference: no endpoint, "
            "no tracing)",
            modes["sampled"]["cpu_ms_per_query"],
            modes["off"]["cpu_ms_per_query"],
            1.25,
            higher_is_better=False,
        )
    )
    o = r["overload"]
    out.append(
        target(
            "overload: rejection p99 ms at 10x (reference: the 500 ms queue wait)",
            o["rejection_p99_ms"],
            500.0,
            1.0,
            higher_is_better=False,
        )
    )
    w = r["portal"]
    answered = w["served"] + w["shed_503"]
    everything = answered + w["other_5xx"] + w["other_status"] + w["failed_connections"]
    out.append(
        target(
            "holder's page at 10x: answers served or 503 with Retry-After, share of all "
            "(reference: every one)",
            answered / everything if everything else 0.0,
            1.0,
            1.0,
            higher_is_better=True,
        )
    )
    out.append(
        target(
            "holder's page at 10x: queries/s served (reference: its sustainable rate)",
            w["served_rps"],
            w["sustainable_rps"],
            0.8,
            higher_is_better=True,
        )
    )
    out.append(
        target(
            "holder's page at 10x: 503 p99 ms (reference: the 500 ms queue wait)",
            w["shed_p99_ms"],
            portal.QUEUE_WAIT * 1000,
            2.0,
            higher_is_better=False,
        )
    )
    out.extend(launch_day_targets(r["launch_day"]))
    return out


def launch_day_targets(day: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's launch day as ratios: what must hold (``bench.soak``) over the run."""
    refused = day["shed"] + sum(day["errors"].values())
    return [
        target(
            "launch day at 10x: refusals fast (< 1 s) and with their signal (RESOURCE_EXHAUSTED, "
            "503 or 429 with Retry-After), share of the calls not answered (reference: every one)",
            (day["shed"] - day["shed_slow"]) / refused if refused else 1.0,
            1.0,
            1.0,
            higher_is_better=True,
        ),
        target(
            "launch day at 10x: accepted releases done by the end, share (reference: every one)",
            day["releases_watched"].get("done", 0) / day["releases_accepted"]
            if day["releases_accepted"]
            else 1.0,  # none accepted, none undone: as the soak's "every accepted release done"
            1.0,
            1.0,
            higher_is_better=True,
        ),
        target(
            f"launch day at 10x: gateway RSS MB, last {day['memory_window_s']} s (reference: "
            f"first {day['memory_window_s']} s)",
            day["gateway_rss_last_mb"],
            day["gateway_rss_first_mb"],
            1.5,
            higher_is_better=False,
        ),
        target(
            "launch day at 10x: processes still running at the end, share of gateway, carrier "
            "and platforms (reference: all)",
            1.0 - len(day["crashed"]) / 3,
            1.0,
            1.0,
            higher_is_better=True,
        ),
    ]


def plots(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = r["fanout"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for impl, style in (("gateway", "o-"), ("bare proxy", "s--")):
        pts = sorted((x["platforms"], x) for x in rows if x["impl"] == impl)
        ns = [n for n, _ in pts]
        axes[0].plot(ns, [x["cpu_ms_per_query"] for _, x in pts], style, label=impl)
        axes[1].plot(ns, [x["p50_ms"] for _, x in pts], style, label=f"{impl} p50")
        axes[1].plot(ns, [x["p99_ms"] for _, x in pts], style, alpha=0.5, label=f"{impl} p99")
    for ax, title, unit in (
        (axes[0], "CPU per query (serving process)", "ms"),
        (axes[1], "latency, 64 queries in flight", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("platforms N")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale_curve.png", dpi=110)
    plt.close(fig)
    made.append("scale_curve.png")

    rows = r["scale"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for impl, style in (("gateway", "o-"), ("bare proxy", "s--")):
        pts = sorted((x["platforms"], x) for x in rows if x["impl"] == impl)
        ns = [n for n, _ in pts]
        axes[0].plot(ns, [x["cpu_ms_per_query"] for _, x in pts], style, label=impl)
        axes[1].plot(ns, [x["rss_mb"] for _, x in pts], style, label=impl)
        axes[2].plot(ns, [x["qps"] for _, x in pts], style, label=impl)
    for ax, title, unit, log in (
        (axes[0], "CPU per query (serving process)", "ms", True),
        (axes[1], "memory (serving process RSS)", "MB", False),
        (axes[2], "queries/s (one process, 2 shared cores)", "queries/s", True),
    ):
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("platforms N (simulated)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale_1000.png", dpi=110)
    plt.close(fig)
    made.append("scale_1000.png")

    reps = r["replicas"]
    if reps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        xs = [x["replicas"] for x in reps]
        axes[0].plot(xs, [x["qps"] for x in reps], "o-", label="queries/s")
        axes[0].set_title(f"queries/s, N = {reps[0]['platforms']} (simulated)")
        axes[1].plot(xs, [x["qps_per_core"] for x in reps], "o-", label="queries/s per core")
        axes[1].plot(xs, [x["cpu_s_per_s"] for x in reps], "s--", label="cores busy")
        axes[1].set_title("per core of gateway CPU")
        for ax in axes:
            ax.set_xlabel("gateway replicas (PostgreSQL)")
            ax.set_xticks(xs)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "replicas.png", dpi=110)
        plt.close(fig)
        made.append("replicas.png")

    tl = r["overload"]["timeline"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    secs = [x["second"] for x in tl]
    axes[0].plot(secs, [x["rss_mb"] for x in tl], "o-")
    axes[0].set_ylabel("gateway RSS (MB)")
    axes[1].plot(secs, [x["admitted_p99_ms"] for x in tl], "o-", label="admitted p99")
    axes[1].plot(secs, [x["rejection_p99_ms"] for x in tl], "s-", label="rejection p99")
    axes[1].set_ylabel("ms")
    axes[1].legend()
    axes[2].plot(secs, [x["admitted"] for x in tl], "o-", label="admitted / s")
    axes[2].plot(secs, [x["rejected"] for x in tl], "s-", label="RESOURCE_EXHAUSTED / s")
    axes[2].set_ylabel("calls")
    axes[2].set_xlabel("second of the surge")
    axes[2].legend()
    fig.suptitle("QueryBindings at 10x the sustainable rate")
    fig.tight_layout()
    fig.savefig(out / "overload.png", dpi=110)
    plt.close(fig)
    made.append("overload.png")

    from bench import soak

    soak.plot(r["launch_day"], out, "launch_day.png")
    made.append("launch_day.png")
    return made


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import cryptography

    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform_mod.python_version(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sa.__version__,
        "cryptography": cryptography.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def document(r: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    m = r["machine"]
    parts = [
        MARK_START,
        "",
        f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"grpcio {m['grpcio']}, SQLAlchemy {m['sqlalchemy']}, cryptography "
        f"{m['cryptography']}; command: `make bench` (`python -m bench.suite`), "
        f"{r['seconds']:.0f} s in all.",
        "",
        "### Targets",
        "",
        table(
            ["target", "value", "reference", "ratio", "target", "met"],
            [
                [
                    s["name"],
                    s["value"],
                    s["reference"],
                    s["ratio"],
                    s["target"],
                    "yes" if s["met"] else "**no**",
                ]
                for s in summary
            ],
        ),
        "",
        "### Fan-out (64 queries in flight)",
        "",
        table(
            ["N", "impl", "queries/s", "p50 ms", "p99 ms", "CPU ms/query", "CPU vs proxy"],
            [
                [
                    x["platforms"],
                    x["impl"],
                    x["qps"],
                    x["p50_ms"],
                    x["p99_ms"],
                    x["cpu_ms_per_query"],
                    x.get("cpu_ratio_to_proxy", ""),
                ]
                for x in r["fanout"]
            ],
        ),
        "",
        "![scale curve](../bench/results/scale_curve.png)",
        "",
        "### Scale curve to N = 1,000 (simulated platforms; the same client for both)",
        "",
        table(
            ["N", "impl", "queries/s", "p50 ms", "CPU ms/query", "CPU vs proxy", "RSS MB"],
            [
                [
                    x["platforms"],
                    x["impl"],
                    x["qps"],
                    x["p50_ms"],
                    x["cpu_ms_per_query"],
                    x.get("cpu_ratio_to_proxy", ""),
                    x["rss_mb"],
                ]
                for x in r["scale"]
            ],
        ),
        "",
        "![scale curve to 1,000](../bench/results/scale_1000.png)",
        "",
        "### Replicas on PostgreSQL",
        "",
        table(
            [
                "replicas",
                "N",
                "queries/s",
                "p50 ms",
                "CPU ms/query (all replicas)",
                "cores busy",
                "queries/s per core",
            ],
            [
                [
                    x["replicas"],
                    x["platforms"],
                    x["qps"],
                    x["p50_ms"],
                    x["cpu_ms_per_query"],
                    x["cpu_s_per_s"],
                    x["qps_per_core"],
                ]
                for x in r["replicas"]
            ],
        ),
        "",
        "![replicas](../bench/results/replicas.png)",
        "",
        "### Durable acceptance",
        "",
        table(
            [
                "database",
                "releases accepted/s",
                "bare gRPC commit server/s",
                "ratio",
                "accepted/s with 16 queries in flight",
                "queries/s meanwhile",
                "raw Core commits/s (no RPC)",
            ],
            [
                [
                    x["database"],
                    x["accepted_per_s"],
                    x["bare_commit_server_per_s"],
                    x["ratio"],
                    x["accepted_per_s_with_queries"],
                    x["queries_per_s_meanwhile"],
                    x["raw_core_commits_per_s"],
                ]
                for x in r["acceptance"]
            ],
        ),
        "",
        "### Overload",
        "",
        f"Offered {r['overload']['offered_qps']} queries/s against a sustainable "
        f"{r['overload']['sustainable_qps']:.0f}/s: {r['overload']['admitted']} admitted "
        f"(p99 {r['overload']['admitted_p99_ms']} ms), {r['overload']['rejected']} turned away "
        f"with RESOURCE_EXHAUSTED (p99 {r['overload']['rejection_p99_ms']} ms), "
        f"{r['overload']['other_errors']} other errors, gateway RSS at most "
        f"{r['overload']['rss_max_mb']} MB.",
        "",
        "![overload](../bench/results/overload.png)",
        "",
        *launch_day_document(r["launch_day"]),
        *facades.document(r["facades"]),
        MARK_END,
    ]
    return "\n".join(parts)


def launch_day_document(day: dict[str, Any]) -> list[str]:
    """The launch-day run's figures (the 5-minute run of ``make soak`` has its own section)."""
    errors = sum(day["errors"].values())
    return [
        f"### Launch day ({day['seconds']:.0f} s; `make soak` runs it for 5 minutes)",
        "",
        f"The mix sustains {day['sustainable_per_s']} calls/s; {day['offered_per_s']} calls/s "
        f"offered from {day['load_processes']} load processes (each call sent within "
        f"{day['client_lag_p99_ms']} ms of its time, p99): {day['ok']} answered (p99 "
        f"{day['ok_p99_ms']} ms), {day['shed']} refused with their signal (p99 "
        f"{day['shed_p99_ms']} ms, {day['shed_slow']} slower than 1 s), {errors} otherwise "
        f"{day['errors'] or ''}; releases accepted / done "
        f"{day['releases_accepted']} / {day['releases_watched'].get('done', 0)}; gateway RSS "
        f"{day['gateway_rss_first_mb']} -> {day['gateway_rss_last_mb']} MB; the gateway's "
        f"event-loop lag mean {day['gateway_loop_lag_mean_ms']} ms, p99 "
        f"{day['gateway_loop_lag_p99_ms']} ms; processes that exited: "
        f"{', '.join(day['crashed']) or 'none'}.",
        "",
        "![launch day](../bench/results/launch_day.png)",
        "",
    ]


def write_doc(text: str) -> None:
    old = DOC.read_text() if DOC.exists() else ""
    if MARK_START in old and MARK_END in old:
        head, rest = old.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        DOC.write_text(head + text + tail)
    else:
        DOC.write_text(old.rstrip() + "\n\n## Results\n\n" + text + "\n")


async def run_all(size: Size, workdir: Path) -> dict[str, Any]:
    r: dict[str, Any] = {"machine": machine()}
    print("fan-out and scale curve", flush=True)
    r["fanout"] = await bench_fanout(size, workdir)
    print("scale curve to N = 1,000 (simulated platforms)", flush=True)
    r["scale"] = await bench_scale(size, workdir)
    print("replicas on PostgreSQL", flush=True)
    r["replicas"] = await bench_replicas(size, workdir)
    print("latency under concurrency", flush=True)
    r["latency"] = await bench_latency(size, workdir)
    print("release turnaround", flush=True)
    r["turnaround"] = await bench_turnaround(size, workdir)
    print("durable acceptance", flush=True)
    r["acceptance"] = await bench_acceptance(size, workdir)
    print("claim verification", flush=True)
    r["verification"] = bench_verification(size, workdir)
    print("events", flush=True)
    r["events"] = await bench_events(size, workdir)
    print("overload", flush=True)
    r["overload"] = await bench_overload(size, workdir)
    print("metrics and tracing: on, off, sampled", flush=True)
    r["observability"] = await bench_observability(
        size.fanout_seconds * 2, min(size.in_flight, 16), workdir
    )
    print("standards facades beside the gRPC path", flush=True)
    r["facades"] = await facades.bench_facades(size.facade_calls, size.facade_events, workdir)
    print("the holder's page at 10x its sustainable rate", flush=True)
    r["portal"] = await portal.bench_portal(portal.QUICK if size is QUICK else portal.FULL, workdir)
    print(f"launch day: 10x the mix's sustainable rate for {size.launch_seconds:g} s", flush=True)
    from bench import soak  # it imports this module

    r["launch_day"] = await soak.run(size.launch_seconds, size.launch_warmup, workdir)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    _configure(parser)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="numfed-bench-") as tmp:
        r = asyncio.run(run_all(QUICK if args.quick else FULL, Path(tmp)))
    r["seconds"] = time.monotonic() - t0
    summary = summarize(r)
    for name in (
        "fanout",
        "scale",
        "replicas",
        "latency",
        "turnaround",
        "acceptance",
        "verification",
        "events",
        "overload",
        "observability",
        "facades",
        "portal",
        "launch_day",
    ):
        (out / f"{name}.json").write_text(json.dumps(r[name], indent=2) + "\n")
    (out / "machine.json").write_text(json.dumps(r["machine"], indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    made = plots(r, out)
    if not args.no_doc:
        write_doc(document(r, summary))
        write_observability_doc(document_section(r["observability"]), DOC)
        portal.write_doc(portal.document(r["portal"], r["machine"]["date"]))
    print(f"\n{'target':<95} {'value':>10} {'ref':>10} {'ratio':>7}  met")
    for s in summary:
        print(f"{s['name']:<95} {s['value']:>10} {s['reference']:>10} {s['ratio']:>7}  {s['met']}")
    print(f"\nwrote {out}/*.json, summary.json, {', '.join(made)} in {r['seconds']:.0f} s")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")


def _run(args: argparse.Namespace) -> int:
    argv = ["--out", str(args.out)]
    argv += ["--quick"] if args.quick else []
    argv += ["--no-doc"] if args.no_doc else []
    return main(argv)


BENCH = Command(
    "bench", "run every benchmark beside its reference (from a source checkout)", _configure, _run
)
"""``numfed bench``: the same as ``make bench`` once the bench extra is installed."""


if __name__ == "__main__":
    sys.exit(main())
