"""The holder's page on launch day: ten times the rate it can serve, from a plain asyncio client.

The public service's unbind page crashed on launch day ("too many people queried and brought the
server down"). Here the page's heaviest step, a verified holder's query (the carrier signs a
claim, the gateway asks every platform, each platform takes 200 ms), is measured first at the
rate the page sustains (as many holders at once as it admits, each waiting for its answer), then
offered at ten times that rate for a while. What must hold: the admitted queries keep their
usual latency, everyone else is told at once "busy, try again in N s" (HTTP 503 with
Retry-After), the carrier's process keeps a bounded memory, and no answer is any other 5xx or a
dropped connection.

The carrier adapter (with its page) runs as a real ``numfed carrier serve`` process, the gateway
as ``numfed gateway serve``, the platforms in one more process. Holders verify through the page
with httpx; the load itself comes from a bare HTTP/1.1 client on asyncio streams
(:class:`RawHttp`), cheap enough to offer ten times the rate on the same two cores.

    python -m bench.portal            # the full run, writes bench/results/portal.json and the
                                      # page's section of docs/benchmarks.md
    python -m bench.portal --quick    # a few seconds (the smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.fanout import spawn, wait_serving
from numfed.federation import FederationLayout, create_federation
from numfed.scenario import APP_PLATFORMS, demo_scenario

__all__ = ["PortalSize", "bench_portal", "document", "write_doc"]

RESULTS = Path("bench/results")
DOC = Path("docs/benchmarks.md")
MARK_START = "<!-- portal:start (written by python -m bench.portal and bench.suite) -->"
MARK_END = "<!-- portal:end -->"
WORLD = demo_scenario()
CONCURRENCY = 16
"""Requests the page serves at once (limits.holder_web_concurrency)."""
QUEUE = 16
QUEUE_WAIT = 0.5
PLATFORM_LATENCY = 0.2
RETRY_AFTER = 5


@dataclass(frozen=True)
class PortalSize:
    sustain_seconds: float
    surge_seconds: float


FULL = PortalSize(8.0, 20.0)
QUICK = PortalSize(1.5, 2.0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(int(len(s) * q), len(s) - 1)], 1) if s else 0.0


def held_numbers() -> list[tuple[str, str, str]]:
    """(number, name, ID number) of cmcc's holders in cmcc's own ranges (the only carrier of
    this federation, so no ported-in numbers)."""
    now = datetime.now(UTC)
    out = []
    for n, h in sorted(WORLD.histories.items()):
        tenure = h.current_tenure(now)
        if tenure and h.carrier_at(now) == "cmcc" and h.events[0].carrier_id == "cmcc":
            holder = WORLD.holders[tenure.holder_id]
            out.append((n, holder.name, holder.id_number))
    return out


class Page:
    """One verified holder's page: a browser's cookie jar and its page token."""

    def __init__(self, base: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base,
            timeout=30,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        self.token = ""

    async def post(self, path: str, data: dict[str, str] | None = None) -> httpx.Response:
        body = {"page_token": self.token, **(data or {})}
        return await self.client.post(path, data=body, headers={"x-fragment": "1"})

    async def verify(self, layout: FederationLayout, who: tuple[str, str, str]) -> None:
        number, name, id_number = who
        page = await self.client.get("/")
        marker = 'name="page-token" content="'
        assert marker in page.text
        self.token = page.text.split(marker, 1)[1].split('"', 1)[0]
        await self.post("/number", {"number": number})
        answer = await self.post("/code", {"name": name, "id_number": id_number})
        assert answer.status_code == 200, answer.text[-500:]
        outbox = layout.root / "state" / "carrier-cmcc" / "sms-outbox.jsonl"
        sent = [json.loads(x) for x in outbox.read_text(encoding="utf-8").splitlines()]
        code = [x["code"] for x in sent if x["number"] == number][-1]
        answer = await self.post("/confirm", {"code": code})
        assert answer.status_code == 200 and 'class="claim"' in answer.text


class RawHttp:
    """A bare HTTP/1.1 client on asyncio streams with a pool of kept-alive connections: cheap
    enough on a shared 2-core machine that the load it offers is the load the page gets (httpx
    costs several times more CPU per request than the page's own refusal)."""

    IDLE = 2.0
    """Seconds a connection is reused after its last answer (the page keeps one open 5 s)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            since, reader, writer = self.idle.pop()
            if now - since < self.IDLE and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """(status, whether a Retry-After came with it)."""
        reader, writer = await self._connection()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length, retry, keep = 0, False, True
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "retry-after":
                    retry = True
                elif name == "connection" and value.strip().lower() == "close":
                    keep = False
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((time.monotonic(), reader, writer))
        else:
            writer.close()
        return status, retry

    async def close(self) -> None:
        for _, _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Outcomes:
    ok: list[float]
    shed: list[float]
    other_5xx: int = 0
    other: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


async def surge(
    call: Callable[[int], Awaitable[tuple[int, bool]]], rate: float, seconds: float, pid: int
) -> tuple[dict[int, Outcomes], dict[int, float], float, list[float]]:
    """Offer ``rate`` calls a second for ``seconds``, open loop; per-second outcomes, RSS, the
    rate offered and how late each call left (the client's own lag, in ms)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    buckets: dict[int, Outcomes] = {}
    rss: dict[int, float] = {}
    lag: list[float] = []

    async def one(i: int) -> None:
        t0 = loop.time()
        lag.append((t0 - (start + i / rate)) * 1000)
        b = buckets.setdefault(int(t0 - start), Outcomes([], []))
        try:
            status, retry = await call(i)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            b.failed += 1
            b.failures.append(type(exc).__name__)
            return
        ms = (loop.time() - t0) * 1000
        if status == 200:
            b.ok.append(ms)
        elif status == 503 and retry:
            b.shed.append(ms)
        elif status >= 500:
            b.other_5xx += 1
        else:
            b.other += 1

    calls: list[asyncio.Task[None]] = []
    sent = 0
    while (now := loop.time()) - start < seconds:
        while sent < int((now - start) * rate):
            calls.append(asyncio.create_task(one(sent)))
            sent += 1
        rss.setdefault(int(now - start), rss_mb(pid))
        await asyncio.sleep(0.002)
    offered = sent / (loop.time() - start)
    await asyncio.gather(*calls)
    return buckets, rss, offered, lag


async def bench_portal(size: PortalSize, workdir: Path) -> dict[str, Any]:
    knobs = {p: {"latency_ms": PLATFORM_LATENCY * 1000} for p in APP_PLATFORMS}
    limits: dict[str, object] = {
        "holder_web_concurrency": CONCURRENCY,
        "holder_web_queue": QUEUE,
        "admission_queue_wait": QUEUE_WAIT,
        "holder_web_retry_after": RETRY_AFTER,
    }
    layout = create_federation(
        workdir / "portal",
        carriers=("cmcc",),
        platforms=APP_PLATFORMS,
        platform_knobs=knobs,
        limits=limits,
        holder_web=True,
    )
    platforms = spawn("bench.members_host", str(layout.root), *APP_PLATFORMS)
    carrier = spawn("numfed", "carrier", "serve", "--config", str(layout.carrier_configs["cmcc"]))
    gateway = None
    pages: list[Page] = []
    try:
        assert platforms.stdout is not None and platforms.stdout.readline().strip() == "ready"
        gateway = spawn("numfed", "gateway", "serve", "--config", str(layout.gateway_config))
        wait_serving(layout.gateway_endpoint, layout.pki_dir, "numfed.v1.GatewayService")
        for endpoint in layout.platform_endpoints.values():
            wait_serving(endpoint, layout.pki_dir, "numfed.v1.PlatformService")
        base = f"http://{layout.holder_web_endpoints['cmcc']}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as probe:
            for _ in range(200):
                try:
                    if (await probe.get("/")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        for who in held_numbers():
            for _ in range(4):  # a number may start 5 verifications per 10 minutes
                page = Page(base)
                await page.verify(layout, who)
                pages.append(page)

        async def query(i: int) -> httpx.Response:
            return await pages[i % len(pages)].post("/query")

        host, _, port = layout.holder_web_endpoints["cmcc"].rpartition(":")
        raw = [RawHttp(host, int(port)) for _ in pages]
        forms = [
            (
                f"page_token={page.token}".encode(),
                {
                    "content-type": "application/x-www-form-urlencoded",
                    "cookie": "; ".join(f"{k}={v}" for k, v in page.client.cookies.items()),
                    "x-fragment": "1",
                },
            )
            for page in pages
        ]

        async def raw_query(i: int) -> tuple[int, bool]:
            body, headers = forms[i % len(forms)]
            return await raw[i % len(raw)].post("/query", body, headers)

        # The rate the page sustains: as many holders at once as it admits, each waiting.
        latencies: list[float] = []
        end = time.monotonic() + size.sustain_seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                answer = await query(next(counter))
                assert answer.status_code == 200, answer.status_code
                latencies.append((time.monotonic() - t0) * 1000)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        sustainable = len(latencies) / (time.monotonic() - t0)
        rss_before = rss_mb(carrier.pid)

        buckets, rss, offered, lag = await surge(
            raw_query, 10 * sustainable, size.surge_seconds, carrier.pid
        )
        for client in raw:
            await client.close()
    finally:
        for page in pages:
            await page.client.aclose()
        for proc in (gateway, carrier, platforms):
            if proc is not None:
                proc.terminate()
                proc.wait(15)
    ok = [x for b in buckets.values() for x in b.ok]
    shed = [x for b in buckets.values() for x in b.shed]
    timeline = [
        {
            "second": sec,
            "served": len(b.ok),
            "shed_503": len(b.shed),
            "other_5xx": b.other_5xx,
            "failed": b.failed,
            "served_p99_ms": pct(b.ok, 0.99),
            "shed_p99_ms": pct(b.shed, 0.99),
            "rss_mb": round(rss.get(sec, 0.0), 1),
        }
        for sec, b in sorted(buckets.items())
    ]
    row = {
        "step": "a verified holder's query (7 platforms at 200 ms each)",
        "concurrency": CONCURRENCY,
        "queue": QUEUE,
        "queue_wait_s": QUEUE_WAIT,
        "sustainable_rps": round(sustainable, 1),
        "sustained_p99_ms": pct(latencies, 0.99),
        "offered_rps": round(offered, 1),
        "surge_seconds": size.surge_seconds,
        "served": len(ok),
        "served_rps": round(len(ok) / size.surge_seconds, 1),
        "served_p99_ms": pct(ok, 0.99),
        "shed_503": len(shed),
        "shed_p99_ms": pct(shed, 0.99),
        "other_5xx": sum(b.other_5xx for b in buckets.values()),
        "other_status": sum(b.other for b in buckets.values()),
        "failed_connections": sum(b.failed for b in buckets.values()),
        "failed_kinds": dict(Counter(k for b in buckets.values() for k in b.failures)),
        "client_lag_p99_ms": pct(lag, 0.99),
        "rss_before_mb": round(rss_before, 1),
        "rss_max_mb": round(max(rss.values(), default=0.0), 1),
        "timeline": timeline,
    }
    print(
        f"  holder's page: sustains {row['sustainable_rps']} queries/s (p99 "
        f"{row['sustained_p99_ms']} ms); at {row['offered_rps']}/s served {row['served_rps']}/s "
        f"(p99 {row['served_p99_ms']} ms), shed {row['shed_503']} with 503 + Retry-After (p99 "
        f"{row['shed_p99_ms']} ms), other 5xx {row['other_5xx']}, failed "
        f"{row['failed_connections']}, carrier RSS {row['rss_before_mb']} -> "
        f"{row['rss_max_mb']} MB",
        flush=True,
    )
    return row


def document(row: dict[str, Any], date: str) -> str:
    return "\n".join(
        [
            MARK_START,
            "",
            f"Measured {date} (`python -m bench.portal`, also part of `make bench`): the page "
            f"admits {row['concurrency']} requests at once with a queue of {row['queue']} "
            f"(at most {row['queue_wait_s']} s), the step is {row['step']}.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| sustainable rate (closed loop, {row['concurrency']} holders at once) | "
            f"{row['sustainable_rps']} queries/s, p99 {row['sustained_p99_ms']} ms |",
            f"| offered for {row['surge_seconds']:g} s (10x) | {row['offered_rps']} queries/s "
            f"(the client sent each within {row['client_lag_p99_ms']} ms of its time, p99) |",
            f"| served during the surge | {row['served_rps']} queries/s, p99 "
            f"{row['served_p99_ms']} ms |",
            f"| turned away: 503 with Retry-After | {row['shed_503']}, p99 "
            f"{row['shed_p99_ms']} ms |",
            f"| any other 5xx | {row['other_5xx']} |",
            f"| dropped connections | {row['failed_connections']} |",
            f"| carrier process RSS (adapter + page) | {row['rss_before_mb']} MB before, "
            f"{row['rss_max_mb']} MB at most |",
            "",
            MARK_END,
        ]
    )


def write_doc(text: str, doc: Path = DOC) -> None:
    old = doc.read_text(encoding="utf-8")
    head, rest = old.split(MARK_START, 1)
    tail = rest.split(MARK_END, 1)[1]
    doc.write_text(head + text + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.portal", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="numfed-portal-") as tmp:
        row = asyncio.run(bench_portal(QUICK if args.quick else FULL, Path(tmp)))
    (args.out / "portal.json").write_text(json.dumps(row, indent=2) + "\n")
    if not args.no_doc:
        write_doc(document(row, datetime.now(UTC).strftime("%Y-%m-%d")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
