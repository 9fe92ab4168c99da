"""What the operator's view costs per query: metrics and tracing on, off, and sampled.

The same fan-out as ``bench.fanout`` (one carrier's queries to 7 platforms, a closed loop of
``in_flight`` queries) against a gateway process in four settings:

* ``off`` — no ``[telemetry]``: no endpoint, no tracing. The metric updates on the hot path
  (one histogram observation per RPC, one per platform call) happen anyway: there is no switch
  for them, and their cost is measured on its own (``observe_ns``);
* ``metrics`` — the loopback endpoint on, scraped every second as Prometheus would;
* ``traced`` — metrics, and every query traced (a server span, a span per platform call) and
  exported over OTLP to a receiver in the benchmark's process;
* ``sampled`` — the same at ``trace_sample_ratio = 0.1`` (unsampled calls still carry the
  trace context).

Reported per setting: queries/s, p50/p99 latency and the gateway process's own CPU per query,
and its ratio to ``off``.

    python -m bench.observability --seconds 8          # writes bench/results/observability.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fanout import (
    carrier_channel,
    closed_loop,
    cpu_seconds,
    spawn,
    summary,
    wait_serving,
)
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.federation import create_federation
from numfed.scenario import APP_PLATFORMS, demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["MODES", "bench_observability", "document_section"]

MODES = ("off", "metrics", "traced", "sampled")
MARK_START = "<!-- observability:start (written by python -m bench.observability) -->"
MARK_END = "<!-- observability:end -->"


def observe_ns(rounds: int = 200_000) -> dict[str, float]:
    """Nanoseconds per metric update of the kinds the hot path makes."""
    from numfed.observability import metrics

    rpc = metrics.Children(metrics.RPC_SERVER_DURATION, "bench.Service", "Call")
    calls = metrics.Children(metrics.PLATFORM_CALL_DURATION, "bench")
    sizes = metrics.Children(metrics.PLATFORM_BATCH_ITEMS, "bench")
    per = {
        "rpc_observation_ns": timeit.timeit(lambda: rpc.observe(0.003, "OK"), number=rounds),
        "platform_call_observation_ns": timeit.timeit(
            lambda: calls.observe(0.002, "BatchQueryBindings", "OK"), number=rounds
        ),
        "batch_size_observation_ns": timeit.timeit(
            lambda: sizes.observe(3, "BatchQueryBindings"), number=rounds
        ),
    }
    return {k: round(v / rounds * 1e9, 1) for k, v in per.items()}


@contextlib.asynccontextmanager
async def _scraping(endpoint: str) -> AsyncIterator[list[int]]:
    """GET /metrics every second for as long as the block runs; yields the sizes read."""
    sizes: list[int] = []

    async def scrape() -> None:
        host, port = endpoint.rsplit(":", 1)
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                await writer.drain()
                sizes.append(len(await reader.read()))
                writer.close()
            await asyncio.sleep(1.0)

    task = asyncio.create_task(scrape())
    try:
        yield sizes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _run_mode(
    mode: str, seconds: float, in_flight: int, workdir: Path, otlp: str
) -> dict[str, Any]:
    layout = create_federation(
        workdir / f"obs-{mode}",
        carriers=("cmcc",),
        platforms=APP_PLATFORMS,
        metrics=mode != "off",
        otlp_endpoint=otlp if mode in ("traced", "sampled") else None,
    )
    if mode == "sampled":
        text = layout.gateway_config.read_text()
        layout.gateway_config.write_text(
            text.replace("[telemetry]\n", "[telemetry]\ntrace_sample_ratio = 0.1\n", 1)
        )
    members = spawn("bench.members_host", str(layout.root))
    gateway = None
    try:
        assert members.stdout is not None and members.stdout.readline().strip() == "ready"
        gateway = spawn("numfed", "gateway", "serve", "--config", str(layout.gateway_config))
        wait_serving(layout.gateway_endpoint, layout.pki_dir, "numfed.v1.GatewayService")
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
        request = gateway_pb2.QueryBindingsRequest(claim=envelope)
        endpoint = layout.metrics_endpoints.get("gateway")
        async with carrier_channel(layout) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)

            async def one() -> None:
                answer = await stub.QueryBindings(request, timeout=10)
                assert len(answer.results) == len(APP_PLATFORMS)

            await closed_loop(one, in_flight, 1.0)  # warm up
            scraping: contextlib.AbstractAsyncContextManager[list[int]] = (
                _scraping(endpoint) if endpoint else contextlib.nullcontext([])
            )
            async with scraping as scraped:
                cpu0 = cpu_seconds(gateway.pid)
                latencies = await closed_loop(one, in_flight, seconds)
                cpu = cpu_seconds(gateway.pid) - cpu0
        row = summary(mode, len(APP_PLATFORMS), latencies, cpu, seconds)
        row["mode"] = row.pop("impl")
        row["scrapes"] = len(scraped)
        row["exposition_bytes"] = max(scraped, default=0)
        return row
    finally:
        # Waited for off the event loop: the gateway exports its last spans as it stops, to the
        # receiver served by this loop.
        for p in (gateway, members):
            if p is not None:
                p.terminate()
                await asyncio.to_thread(p.wait, 15)


async def bench_observability(seconds: float, in_flight: int, workdir: Path) -> dict[str, Any]:
    from numfed.testing.otlp import start_otlp_receiver

    receiver = await start_otlp_receiver()
    rows = []
    try:
        for mode in MODES:
            before = len(receiver.spans)
            row = await _run_mode(mode, seconds, in_flight, workdir, receiver.endpoint)
            row["spans_received"] = len(receiver.spans) - before
            rows.append(row)
    finally:
        await receiver.stop()
    off = rows[0]["cpu_ms_per_query"]
    for row in rows:
        row["cpu_vs_off"] = round(row["cpu_ms_per_query"] / off, 3) if off else None
        print(
            f"  {row['mode']:>8}: {row['qps']} q/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms "
            f"{row['cpu_ms_per_query']} ms CPU/q (x{row['cpu_vs_off']} of off), "
            f"{row['spans_received']} spans",
            flush=True,
        )
    return {"platforms": len(APP_PLATFORMS), "in_flight": in_flight, "modes": rows, **observe_ns()}


def document_section(r: dict[str, Any]) -> str:
    from bench.suite import table

    per_platform = r["platform_call_observation_ns"] + r["batch_size_observation_ns"]
    worst = (r["rpc_observation_ns"] + r["platforms"] * per_platform) / 1000
    off = r["modes"][0]["cpu_ms_per_query"]
    share = worst / (off * 1000) * 100 if off else 0.0

    return "\n".join(
        [
            MARK_START,
            "",
            f"Queries to {r['platforms']} platforms, {r['in_flight']} in flight; CPU is the "
            "gateway process's own.",
            "",
            table(
                ["setting", "queries/s", "p50 ms", "p99 ms", "CPU ms/query", "vs off", "spans"],
                [
                    [
                        m["mode"],
                        m["qps"],
                        m["p50_ms"],
                        m["p99_ms"],
                        m["cpu_ms_per_query"],
                        m["cpu_vs_off"],
                        m["spans_received"],
                    ]
                    for m in r["modes"]
                ],
            ),
            "",
            f"The updates made whatever the setting cost {r['rpc_observation_ns']} ns per RPC "
            f"observation, {r['platform_call_observation_ns']} ns per platform call and "
            f"{r['batch_size_observation_ns']} ns per batch size: at most {worst:.1f} µs for a "
            f"query to {r['platforms']} platforms that shares no batch ({share:.1f} % of the "
            "gateway's CPU per query with everything off), less when queries share batches.",
            "",
            MARK_END,
        ]
    )


def write_doc(section: str, doc: Path) -> None:
    old = doc.read_text()
    if MARK_START in old and MARK_END in old:
        head, rest = old.split(MARK_START, 1)
        doc.write_text(head + section + rest.split(MARK_END, 1)[1])
    else:
        doc.write_text(old.rstrip() + "\n\n" + section + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="numfed-bench-") as tmp:
        r = asyncio.run(bench_observability(args.seconds, args.in_flight, Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "observability.json").write_text(json.dumps(r, indent=2) + "\n")
    if not args.no_doc:
        write_doc(document_section(r), Path("docs/benchmarks.md"))
    print(f"wrote {args.out}/observability.json in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
