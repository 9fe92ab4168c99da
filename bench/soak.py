"""Launch day: a separate load process offers 10x the sustainable rate of a realistic mix.

``make soak`` (``python -m bench.soak``; ``make bench`` runs the same for 90 s) starts a gateway
(gRPC and the CAMARA facade over HTTPS), a carrier with the holder's page and seven platforms
each answering in 200 ms, all as real processes, then drives them from this process:

1. **Sustainable rate**: the mix below from 32 workers at once, each sending its next call when
   the last is answered, for ``--warmup`` seconds: the calls answered per second.
2. **Launch day**: ten times that, open loop (calls sent on schedule whatever the answers), for
   ``--seconds`` (5 minutes by default), the gateway's and the carrier's RSS sampled every
   second.

The mix, by share of calls: carriers' queries (``QueryBindings``) 50 %, the holder's page
(a verified holder's query over HTTP) 20 %, platforms' recycled checks through the CAMARA
facade (HTTPS) 15 %, releases 15 % (``ReleaseBindings``, each then watched with
``WatchOperation`` until it is done). What must hold, and is written to
``bench/results/soak.json`` and plotted in ``bench/results/soak.png``: no process exits; memory
stays bounded (RSS in the last minute within 1.5x the first; a third of a shorter run); every
refusal is a fast RESOURCE_EXHAUSTED (gRPC: admission's, with ErrorInfo and RetryInfo, or
gRPC's own at the gateway's cap, with neither, as gateway.proto documents;
:func:`signalled_refusal`) or an HTTP 503 (the page) or 429 (CAMARA's TOO_MANY_REQUESTS) with
Retry-After; nothing else fails; and every release accepted is done by the end. The gateway's
event-loop lag (``numfed_event_loop_lag_seconds``, read every 5 s) is plotted beside the
latencies: how long a new call waits for each turn of the loop before admission answers it.

    python -m bench.soak --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import random
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from bench.facades import CHECK, WEIBO
from bench.fanout import carrier_channel, spawn, stop_processes, wait_serving
from bench.portal import Page, RawHttp, held_numbers, pct, rss_mb
from bench.suite import claim_for, served_now
from numfed import pki
from numfed.claims import Purpose
from numfed.errors import ERROR_DOMAIN
from numfed.federation import FederationLayout, create_federation
from numfed.rpc import ADMISSION_REASONS, error_info, retry_delay, server_cap_refusal
from numfed.scenario import APP_PLATFORMS
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

RESULTS = Path("bench/results")
MIX = (("query", 0.50), ("page", 0.20), ("camara", 0.15), ("release", 0.15))
LIMITS: dict[str, object] = {
    "max_concurrent_queries": 16,
    "max_queued_queries": 16,
    "max_concurrent_releases": 16,
    "max_queued_releases": 16,
    "max_concurrent_reads": 16,
    "max_queued_reads": 16,
    "admission_queue_wait": 0.5,
    "server_pending_seconds": 1,  # near the queue wait: a crowd is expected (operations.md)
    "holder_web_concurrency": 16,
    "holder_web_queue": 16,
    "holder_web_retry_after": 5,
    "recycled_rate": 1e6,
    "recycled_burst": 1e6,
}
FAST_MS = 1000.0
"""A refusal slower than this is not fast (the queue wait is 500 ms)."""

Outcome = tuple[str, float]
"""("ok" | "shed" | "error:<what>", milliseconds)."""


COME_BACK = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
"""A watch refused with one of these is opened again after a pause (gateway.proto)."""


def signalled_refusal(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed gRPC call is a refusal as the contract (gateway.proto) documents it:
    admission's RESOURCE_EXHAUSTED with one numfed ErrorInfo (OVERLOADED,
    OVERLOADED_QUEUE_TIMEOUT, CALLER_OVERLOADED) and a RetryInfo, or gRPC's own refusal at the
    gateway's cap (``numfed.rpc.server_cap_refusal``), which carries neither."""
    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    if server_cap_refusal(exc):
        return True
    status = rpc_status.from_call(cast(grpc.Call, exc))
    if status is None:
        return False
    info = error_info(status)
    return (
        info is not None
        and info.domain == ERROR_DOMAIN
        and info.reason in ADMISSION_REASONS
        and retry_delay(status) is not None
    )


class Load:
    """One load process's calls: the mix, against the federation laid out in ``layout``."""

    def __init__(
        self,
        layout: FederationLayout,
        forms: list[tuple[bytes, dict[str, str]]],
    ) -> None:
        self.layout = layout
        host, _, port = layout.holder_web_endpoints["cmcc"].rpartition(":")
        self.raw = [RawHttp(host, int(port)) for _ in forms]
        self.forms = forms
        self.channel = carrier_channel(layout)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.query_request = gateway_pb2.QueryBindingsRequest(
            claim=claim_for(layout, Purpose.QUERY_PRIOR), compact_none=True
        )
        self.number = served_now()[0][0]
        host, _, port = layout.facade_endpoints[0].rpartition(":")
        self.https = RawHttps(host, int(port), platform_tls(layout))
        self.camara_body = json.dumps(
            {"phoneNumber": self.number, "specifiedDate": date(2023, 1, 1).isoformat()}
        ).encode()
        self.camara_headers = {"content-type": "application/json"}
        self.watches: list[asyncio.Task[str]] = []
        self.releases = 0

    async def close(self) -> None:
        await self.channel.close()
        for r in (*self.raw, self.https):
            await r.close()

    async def grpc_call(self, call: Callable[[], Awaitable[Any]]) -> Outcome:
        t0 = time.monotonic()
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            ms = (time.monotonic() - t0) * 1000
            if signalled_refusal(exc):
                return "shed", ms
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "error:RESOURCE_EXHAUSTED without its signal", ms
            return f"error:{exc.code().name}", ms
        return "ok", (time.monotonic() - t0) * 1000

    async def query(self, i: int) -> Outcome:
        return await self.grpc_call(lambda: self.stub.QueryBindings(self.query_request, timeout=10))

    async def release(self, i: int) -> Outcome:
        request = gateway_pb2.ReleaseBindingsRequest(
            request_id=uuid.uuid4().hex, claim=claim_for(self.layout, Purpose.RELEASE_PRIOR, i)
        )
        names: list[str] = []

        async def call() -> None:
            op = await self.stub.ReleaseBindings(request, timeout=10)
            names.append(op.name)

        outcome = await self.grpc_call(call)
        if outcome[0] == "ok":
            self.releases += 1
            self.watches.append(asyncio.create_task(self.watch(names[0])))
        return outcome

    async def watch(self, name: str) -> str:
        """Watch an accepted release until it is done (retrying a watch that was refused)."""
        for _ in range(600):
            try:
                call = self.stub.WatchOperation(
                    gateway_pb2.WatchOperationRequest(name=name), timeout=120
                )
                async for update in call:
                    if update.done:
                        return "done"
            except grpc.aio.AioRpcError as exc:
                # Refused (admission, the cap) or turned away by gRPC's backlog bound
                # (CANCELLED): both mean come back later (gateway.proto).
                if exc.code() not in COME_BACK:
                    return f"watch failed: {exc.code().name}"
            await asyncio.sleep(0.5 + random.random())
        return "not done"

    async def page(self, i: int) -> Outcome:
        body, headers = self.forms[i % len(self.forms)]
        t0 = time.monotonic()
        try:
            status, retry = await self.raw[i % len(self.raw)].post("/query", body, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            return f"error:{type(exc).__name__}", (time.monotonic() - t0) * 1000
        ms = (time.monotonic() - t0) * 1000
        if status == 200:
            return "ok", ms
        if status == 503 and retry:
            return "shed", ms
        return f"error:HTTP {status}", ms

    async def camara_check(self, i: int) -> Outcome:
        t0 = time.monotonic()
        try:
            status, retry = await self.https.post(CHECK, self.camara_body, self.camara_headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            return f"error:{type(exc).__name__}", (time.monotonic() - t0) * 1000
        ms = (time.monotonic() - t0) * 1000
        if status == 200:
            return "ok", ms
        if status == 429 and retry:  # CAMARA's TOO_MANY_REQUESTS
            return "shed", ms
        return f"error:HTTP {status}", ms

    def pick(self, i: int) -> Callable[[int], Awaitable[Outcome]]:
        x = (i * 0.6180339887) % 1.0  # spread evenly, the same mix every run
        for kind, share in MIX:
            if x < share:
                return {
                    "query": self.query,
                    "page": self.page,
                    "camara": self.camara_check,
                    "release": self.release,
                }[kind]
            x -= share
        return self.query


WORKERS = 2
"""Load processes of the surge (one client process cannot offer 10x on these cores)."""


class RawHttps(RawHttp):
    """:class:`bench.portal.RawHttp` over TLS with a platform's client certificate: httpx's
    connection pool costs more CPU per queued request the more there are, so that a load
    process holding thousands of calls spends its time in the pool, not offering load."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        super().__init__(host, port)
        self.tls = tls

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            since, reader, writer = self.idle.pop()
            if now - since < self.IDLE and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port, ssl=self.tls)


def platform_tls(layout: FederationLayout) -> ssl.SSLContext:
    """A platform's (weibo's) client TLS for the CAMARA facade (mTLS)."""
    paths = pki.PkiLayout(layout.pki_dir)
    ctx = ssl.create_default_context(cafile=str(paths.ca_path))
    ctx.load_cert_chain(str(paths.cert_path(WEIBO)), str(paths.key_path(WEIBO)))
    return ctx


async def run(seconds: float, warmup: float, workdir: Path) -> dict[str, Any]:
    knobs = {p: {"latency_ms": 200.0} for p in APP_PLATFORMS}
    layout = create_federation(
        workdir / "soak",
        carriers=("cmcc",),
        platforms=APP_PLATFORMS,
        platform_knobs=knobs,
        limits=LIMITS,
        holder_web=True,
        facades=True,
        metrics=True,
    )
    platforms = spawn("bench.members_host", str(layout.root), *APP_PLATFORMS)
    carrier = spawn("numfed", "carrier", "serve", "--config", str(layout.carrier_configs["cmcc"]))
    gateway = None
    procs: dict[str, subprocess.Popen[str]] = {"platforms": platforms, "carrier": carrier}
    try:
        assert platforms.stdout is not None and platforms.stdout.readline().strip() == "ready"
        gateway = spawn("numfed", "gateway", "serve", "--config", str(layout.gateway_config))
        procs["gateway"] = gateway
        wait_serving(layout.gateway_endpoint, layout.pki_dir, "numfed.v1.GatewayService")
        base = f"http://{layout.holder_web_endpoints['cmcc']}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as probe:
            for _ in range(200):
                try:
                    if (await probe.get("/")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        forms: list[tuple[bytes, dict[str, str]]] = []
        for who in held_numbers():
            page = Page(base)
            await page.verify(layout, who)
            cookie = "; ".join(f"{k}={v}" for k, v in page.client.cookies.items())
            forms.append(
                (
                    f"page_token={page.token}".encode(),
                    {
                        "content-type": "application/x-www-form-urlencoded",
                        "cookie": cookie,
                        "x-fragment": "1",
                    },
                )
            )
            await page.client.aclose()
        plan = workdir / "plan.pickle"
        plan.write_bytes(pickle.dumps((layout, forms)))
        # 1. The sustainable rate of the mix: closed loop, from here.
        load = Load(layout, forms)
        try:
            sustainable = await closed_loop(load, warmup)
        finally:
            await load.close()
        print(f"  sustainable: {sustainable:.1f} calls/s of the mix", flush=True)
        # 2. Ten times that, open loop, from the load processes.
        rate = 10 * sustainable
        start = time.time() + 2.0
        workers = spawn_workers(plan, rate, seconds, start)
        metrics = f"http://{layout.metrics_endpoints['gateway']}/metrics"
        seen = await watch_processes(procs, gateway.pid, carrier.pid, start, seconds, metrics)
        outputs = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
        crashed = seen.crashed + [name for name, p in procs.items() if p.poll() is not None]
        return summarize(outputs, seen, sustainable, seconds, sorted(set(crashed)))
    finally:
        stop_processes((gateway, carrier, platforms), timeout=15)


def spawn_workers(
    plan: Path, rate: float, seconds: float, start: float
) -> list[subprocess.Popen[str]]:
    """The load processes, each offering its share of ``rate`` from wall time ``start``."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.soak",
                "--worker",
                str(plan),
                "--rate",
                str(rate / WORKERS),
                "--seconds",
                str(seconds),
                "--start",
                str(start),
                "--index",
                str(k),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(WORKERS)
    ]


async def closed_loop(load: Load, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    answered = 0
    end = loop.time() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal answered
        while loop.time() < end:
            i = next(counter)
            kind, _ms = await load.pick(i)(i)
            answered += kind == "ok"

    await asyncio.gather(*(worker() for _ in range(32)))
    await asyncio.gather(*load.watches)
    return answered / seconds


LAG_EVERY = 5
"""Seconds between two reads of the gateway's ``numfed_event_loop_lag_seconds``."""


@dataclass
class Watched:
    """What :func:`watch_processes` saw during the surge."""

    rss: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Second -> (gateway, carrier) RSS in MB."""
    lag: list[tuple[int, LagReading]] = field(default_factory=list)
    """(second, the gateway's loop-lag histogram then), every :data:`LAG_EVERY` seconds."""
    crashed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LagReading:
    """``numfed_event_loop_lag_seconds`` as read from an exposition: sum, count, buckets."""

    total: float
    count: float
    buckets: tuple[tuple[float, float], ...]
    """(upper bound in seconds, cumulative count), in order."""

    @classmethod
    def parse(cls, exposition: str) -> LagReading | None:
        for family in text_string_to_metric_families(exposition):
            if family.name != "numfed_event_loop_lag_seconds":
                continue
            values = {s.name: s.value for s in family.samples if not s.labels}
            buckets = sorted(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket")
            )
            return cls(
                values["numfed_event_loop_lag_seconds_sum"],
                values["numfed_event_loop_lag_seconds_count"],
                tuple(buckets),
            )
        return None

    def since(self, before: LagReading) -> tuple[float, float]:
        """(mean, p99) lag in ms of the samples between ``before`` and this reading; the p99
        is the upper bound of its histogram bucket (the last finite bound when above it)."""
        n = self.count - before.count
        if n <= 0:
            return 0.0, 0.0
        mean = (self.total - before.total) / n * 1000
        finite = [b for b in self.buckets if b[0] != float("inf")]
        p99 = finite[-1][0] if finite else 0.0
        for (bound, c), (_, c0) in zip(self.buckets, before.buckets, strict=True):
            if c - c0 >= 0.99 * n:
                p99 = bound if bound != float("inf") else p99
                break
        return mean, p99 * 1000


async def watch_processes(
    procs: dict[str, subprocess.Popen[str]],
    gw_pid: int,
    carrier_pid: int,
    start: float,
    seconds: float,
    metrics_url: str,
) -> Watched:
    """RSS of the gateway and the carrier every second of the surge, the gateway's event-loop
    lag every :data:`LAG_EVERY` seconds (and just before and after); who exited."""
    seen = Watched()

    async def read_lag(sec: int) -> None:
        try:
            reading = LagReading.parse((await http.get(metrics_url)).text)
        except (httpx.HTTPError, ValueError, KeyError):
            return  # too busy to answer in time, or cut short: no reading this time
        if reading is not None:
            seen.lag.append((sec, reading))

    async with httpx.AsyncClient(timeout=LAG_EVERY) as http:
        await read_lag(-1)
        reads = []  # in the background: a slow answer must not hold up the RSS samples
        while (now := time.time()) < start + seconds + 1:
            sec = int(now - start)
            if sec >= 0 and sec not in seen.rss:
                seen.crashed = [name for name, p in procs.items() if p.poll() is not None]
                if seen.crashed:
                    break
                seen.rss[sec] = (rss_mb(gw_pid), rss_mb(carrier_pid))
                if sec % LAG_EVERY == 0:
                    reads.append(asyncio.create_task(read_lag(sec)))
                if sec % 30 == 0:
                    print(f"  {sec:>4} s: gateway RSS {seen.rss[sec][0]:.0f} MB", flush=True)
            await asyncio.sleep(0.2)
        await asyncio.gather(*reads)
        await read_lag(int(time.time() - start))
    seen.lag.sort(key=lambda x: x[0])
    return seen


async def worker(
    layout: FederationLayout,
    forms: list[tuple[bytes, dict[str, str]]],
    rate: float,
    seconds: float,
    start: float,
    index: int,
) -> None:
    """One load process: ``rate`` calls a second of the mix from wall time ``start``."""
    load = Load(layout, forms)
    try:
        out = await surge(load, rate, seconds, start, index)
    finally:
        await load.close()
    print(json.dumps(out), flush=True)


async def surge(
    load: Load, rate: float, seconds: float, start_wall: float, index: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(start_wall - time.time(), 0.0))
    start = loop.time()
    per_second: dict[int, Counter[str]] = {}
    shed_ms: dict[int, list[float]] = {}
    ok_ms: dict[int, list[float]] = {}
    kinds: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lag: list[float] = []
    shed_by_kind: dict[str, list[float]] = {}

    async def one(n: int, i: int) -> None:
        t0 = loop.time()
        lag.append((t0 - (start + n / rate)) * 1000)
        fn = load.pick(i)
        outcome, ms = await fn(i)
        sec = int(t0 - start)
        what = outcome.split(":")[0]
        per_second.setdefault(sec, Counter())[what] += 1
        kinds[f"{fn.__name__} {what}"] += 1
        if outcome == "shed":
            shed_ms.setdefault(sec, []).append(ms)
            shed_by_kind.setdefault(fn.__name__, []).append(ms)
        elif outcome == "ok":
            ok_ms.setdefault(sec, []).append(ms)
        else:
            errors[f"{fn.__name__} {outcome}"] += 1

    calls: list[asyncio.Task[None]] = []
    sent = 0
    while (now := loop.time()) - start < seconds:
        while sent < int((now - start) * rate):
            # Interleave the load processes' calls: process k sends calls k, k + K, ...
            calls.append(asyncio.create_task(one(sent, sent * WORKERS + index)))
            sent += 1
        if len(calls) > 1000:
            calls = [t for t in calls if not t.done()]
        await asyncio.sleep(0.002)
    offered = sent / (loop.time() - start)
    await asyncio.gather(*calls)
    watched = Counter(await asyncio.gather(*load.watches))
    return {
        "offered_per_s": offered,
        "per_second": {s: dict(c) for s, c in per_second.items()},
        "shed_ms": {s: v for s, v in shed_ms.items()},
        "ok_ms": {s: v for s, v in ok_ms.items()},
        "kinds": dict(kinds),
        "shed_by_kind": shed_by_kind,
        "errors": dict(errors),
        "lag_p99_ms": pct(lag, 0.99),
        "releases": load.releases,
        "watched": dict(watched),
    }


def memory_window(seconds: float) -> int:
    """Seconds at each end of the surge whose RSS are compared: a minute, or a third of a
    shorter run."""
    return int(max(1, min(60, seconds // 3)))


def summarize(
    outputs: list[dict[str, Any]],
    seen: Watched,
    sustainable: float,
    seconds: float,
    crashed: list[str],
) -> dict[str, Any]:
    rss = seen.rss
    # (from, to, mean lag in ms) between each two readings: a second shows the one it is in,
    # however many reads failed around it.
    windows = [
        (start, end, after.since(before)[0])
        for (start, before), (end, after) in zip(seen.lag, seen.lag[1:], strict=False)
    ]
    lag_all = seen.lag[-1][1].since(seen.lag[0][1]) if len(seen.lag) > 1 else (0.0, 0.0)
    per_second: dict[int, Counter[str]] = {}
    shed_ms: dict[int, list[float]] = {}
    ok_ms: dict[int, list[float]] = {}
    kinds: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    watched: Counter[str] = Counter()
    shed_by_kind: dict[str, list[float]] = {}
    for o in outputs:
        for k, v in o["shed_by_kind"].items():
            shed_by_kind.setdefault(k, []).extend(v)
        for s, c in o["per_second"].items():
            per_second.setdefault(int(s), Counter()).update(c)
        for s, v in o["shed_ms"].items():
            shed_ms.setdefault(int(s), []).extend(v)
        for s, v in o["ok_ms"].items():
            ok_ms.setdefault(int(s), []).extend(v)
        kinds.update(o["kinds"])
        errors.update(o["errors"])
        watched.update(o["watched"])
    releases = sum(o["releases"] for o in outputs)
    timeline = []
    for sec in sorted(per_second):
        c = per_second[sec]
        gw, car = rss.get(sec, (0.0, 0.0))
        lag_ms = next((mean for start, end, mean in windows if start <= sec < end), 0.0)
        timeline.append(
            {
                "second": sec,
                "ok": c["ok"],
                "shed": c["shed"],
                "errors": c["error"],
                "ok_p99_ms": round(pct(ok_ms.get(sec, []), 0.99), 1),
                "shed_p99_ms": round(pct(shed_ms.get(sec, []), 0.99), 1),
                "gateway_rss_mb": round(gw, 1),
                "carrier_rss_mb": round(car, 1),
                "gateway_loop_lag_ms": round(lag_ms, 1),
            }
        )
    all_shed = [x for v in shed_ms.values() for x in v]
    all_ok = [x for v in ok_ms.values() for x in v]
    gw_rss = [rss[s][0] for s in sorted(rss)]
    window = memory_window(seconds)
    first, last = gw_rss[:window], gw_rss[-window:]
    row: dict[str, Any] = {
        "seconds": seconds,
        "mix": dict(MIX),
        "load_processes": len(outputs),
        "sustainable_per_s": round(sustainable, 1),
        "offered_per_s": round(sum(o["offered_per_s"] for o in outputs), 1),
        "client_lag_p99_ms": round(max(o["lag_p99_ms"] for o in outputs), 1),
        "answered": dict(sorted(kinds.items())),
        "ok": len(all_ok),
        "ok_p99_ms": round(pct(all_ok, 0.99), 1),
        "shed": len(all_shed),
        "shed_p99_ms": round(pct(all_shed, 0.99), 1),
        "shed_slow": sum(1 for x in all_shed if x > FAST_MS),
        "shed_p99_ms_by_kind": {k: round(pct(v, 0.99), 1) for k, v in sorted(shed_by_kind.items())},
        "errors": dict(errors),
        "releases_accepted": releases,
        "releases_watched": dict(watched),
        "crashed": crashed,
        "memory_window_s": window,
        "gateway_rss_first_mb": round(max(first, default=0.0), 1),
        "gateway_rss_last_mb": round(max(last, default=0.0), 1),
        "gateway_loop_lag_mean_ms": round(lag_all[0], 1),
        "gateway_loop_lag_p99_ms": round(lag_all[1], 1),
        "gateway_loop_lag_readings": len(seen.lag),
        "carrier_rss_max_mb": round(max((r[1] for r in rss.values()), default=0.0), 1),
        "timeline": timeline,
    }
    row["held"] = {
        "nothing crashed": not crashed,
        "memory bounded (RSS at the end <= 1.5x at the start)": bool(
            first and last and max(last) <= 1.5 * max(first)
        ),
        "every refusal fast (< 1 s) and with its signal": row["shed_slow"] == 0,
        "nothing else failed": not errors,
        "every accepted release done": watched.get("done", 0) == releases,
    }
    return row


def plot(row: dict[str, Any], out: Path, name: str = "soak.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = row["timeline"]
    secs = [x["second"] for x in tl]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    axes[0].plot(secs, [x["gateway_rss_mb"] for x in tl], label="gateway")
    axes[0].plot(secs, [x["carrier_rss_mb"] for x in tl], label="carrier (with the page)")
    axes[0].set_ylabel("RSS (MB)")
    axes[0].legend()
    axes[1].plot(secs, [x["ok_p99_ms"] for x in tl], label="admitted p99")
    axes[1].plot(secs, [x["shed_p99_ms"] for x in tl], label="refused p99")
    axes[1].plot(
        secs, [x["gateway_loop_lag_ms"] for x in tl], label="gateway's event-loop lag (mean)"
    )
    axes[1].axhline(FAST_MS, color="grey", linestyle=":", label="1 s (a fast refusal)")
    axes[1].set_yscale("log", nonpositive="mask")  # the loop's ms beside the calls' seconds
    axes[1].set_ylabel("ms (log)")
    axes[1].legend(fontsize="small", framealpha=0.8)
    axes[2].plot(secs, [x["ok"] for x in tl], label="answered / s")
    axes[2].plot(secs, [x["shed"] for x in tl], label="refused (RESOURCE_EXHAUSTED, 503, 429) / s")
    axes[2].plot(
        secs, [x["errors"] for x in tl], label="anything else / s (gRPC's CANCELLED among them)"
    )
    axes[2].set_ylabel("calls")
    axes[2].set_xlabel("second of launch day")
    axes[2].legend(fontsize="small", framealpha=0.8)
    fig.suptitle(
        f"Launch day: {row['offered_per_s']:.0f} calls/s offered "
        f"(10x the sustainable {row['sustainable_per_s']:.0f}/s of the mix)"
    )
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)


DOC = Path("docs/benchmarks.md")
MARK_START = "<!-- soak:start (written by python -m bench.soak) -->"
MARK_END = "<!-- soak:end -->"


def document(row: dict[str, Any], day: str) -> str:
    held = "; ".join(f"{what}: {'yes' if ok else '**no**'}" for what, ok in row["held"].items())
    shed_by_kind = ", ".join(f"{k} {v} ms" for k, v in row["shed_p99_ms_by_kind"].items())
    answered = ", ".join(f"{k} {v}" for k, v in row["answered"].items())
    return "\n".join(
        [
            MARK_START,
            "",
            f"Measured {day} (`make soak`, {row['seconds']:.0f} s, {row['load_processes']} load "
            f"processes, on the shared machine): the mix sustains {row['sustainable_per_s']} "
            f"calls/s; offered {row['offered_per_s']} calls/s (the load processes sent each call "
            f"within {row['client_lag_p99_ms']} ms of its time, p99).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| answered | {row['ok']} (p99 {row['ok_p99_ms']} ms) |",
            f"| refused with RESOURCE_EXHAUSTED / 503 / 429 + Retry-After | {row['shed']} "
            f"(p99 {row['shed_p99_ms']} ms; by kind: {shed_by_kind}) |",
            f"| refusals slower than 1 s | {row['shed_slow']} |",
            f"| anything else | {sum(row['errors'].values())} {row['errors'] or ''} |",
            f"| releases accepted / done by the end | {row['releases_accepted']} / "
            f"{row['releases_watched'].get('done', 0)} |",
            f"| gateway RSS, first / last {row['memory_window_s']} s | "
            f"{row['gateway_rss_first_mb']} / {row['gateway_rss_last_mb']} MB |",
            f"| gateway's event-loop lag, mean / p99 | {row['gateway_loop_lag_mean_ms']} / "
            f"{row['gateway_loop_lag_p99_ms']} ms |",
            f"| carrier (with the page) RSS at most | {row['carrier_rss_max_mb']} MB |",
            f"| processes that exited | {', '.join(row['crashed']) or 'none'} |",
            "",
            f"By call and outcome: {answered}.",
            "",
            f"What must hold: {held}.",
            "",
            "![launch day](../bench/results/soak.png)",
            "",
            MARK_END,
        ]
    )


def write_doc(text: str, doc: Path = DOC) -> None:
    old = doc.read_text()
    head, rest = old.split(MARK_START.split(" (")[0], 1)
    tail = rest.split(MARK_END, 1)[1]
    doc.write_text(head + text + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:  # one of the load processes
        layout, forms = pickle.loads(args.worker.read_bytes())
        asyncio.run(worker(layout, forms, args.rate, args.seconds, args.start, args.index))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="numfed-soak-") as tmp:
        row = asyncio.run(run(args.seconds, args.warmup, Path(tmp)))
    (args.out / "soak.json").write_text(json.dumps(row, indent=2) + "\n")
    plot(row, args.out)
    if not args.no_doc:
        write_doc(document(row, time.strftime("%Y-%m-%d", time.gmtime())))
    print(json.dumps({k: v for k, v in row.items() if k != "timeline"}, indent=2))
    return 0 if all(row["held"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
