"""What each standards facade costs per call, beside the gRPC call it stands in for.

A gateway process (SQLite) with its members in another process, both platforms polling:

* the recycled check: ``GatewayService.CheckRecycled`` against CAMARA's ``POST
  /number-recycling/v0.2/check`` (HTTPS, mTLS, JSON, the response checked against the OpenAPI
  document, the carrier's claim in a header), one call at a time, the same number and day (so
  the probe budget is not what is measured);
* lifecycle events: ``PullEvents`` (gRPC, a signed batch per item) against SSF poll delivery
  (RFC 8936: one signed SET per event, each carrying its batch), for the same batches, until
  each platform acknowledged them all.

The gateway's CPU time (utime + stime of its process) per call or per event is the figure that
carries over to other machines; wall time per call is shown too.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.fanout import cpu_seconds
from numfed import pki
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.timeutil import to_date
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["bench_facades", "document"]

WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")
CHECK = "/number-recycling/v0.2/check"
PER_BATCH = 50


def _client(pki_dir: Path, peer: PeerId) -> httpx.AsyncClient:
    layout = pki.PkiLayout(pki_dir)
    ctx = ssl.create_default_context(cafile=str(layout.ca_path))
    ctx.load_cert_chain(str(layout.cert_path(peer)), str(layout.key_path(peer)))
    # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # server's delayed acknowledgement (40 ms on Linux).
    nodelay = httpx.AsyncHTTPTransport(
        verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    return httpx.AsyncClient(transport=nodelay, timeout=30)


def _row(path: str, unit: str, times: list[float], cpu: float, count: int) -> dict[str, Any]:
    return {
        "path": path,
        "unit": unit,
        "count": count,
        "wall_ms_per_unit": round(sum(times) / count * 1000, 3),
        "p50_ms": round(statistics.median(times) * 1000, 3) if times else 0.0,
        "cpu_ms_per_unit": round(cpu / count * 1000, 3),
    }


async def bench_facades(calls: int, events: int, workdir: Path) -> dict[str, Any]:
    from bench.suite import federation, served_now  # the suite imports this module

    limits = {"recycled_rate": 1e6, "recycled_burst": 1e6}
    # Both take events by SSF for the gateway, so neither reference platform polls or is
    # pushed to: the benchmark's own clients are the only ones taking the log (PullEvents
    # serves any platform).
    knobs = {"weibo": {"events": "ssf-poll"}, "taobao": {"events": "ssf-poll"}}
    rows: list[dict[str, Any]] = []
    async with federation(
        workdir,
        "facades",
        platforms=("weibo", "taobao"),
        knobs=knobs,
        limits=limits,
        facades=True,
    ) as fed:
        layout, pid = fed.layout, fed.gateway_pid
        base = "https://" + layout.facade_endpoints[0]
        number = served_now()[0][0]
        day = date(2023, 1, 1)

        # -- the recycled check ----------------------------------------------------------------
        request = gateway_pb2.CheckRecycledRequest(number=number, specified_date=to_date(day))
        async with pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, WEIBO, server=pki.GATEWAY
        ) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            for _ in range(10):
                await stub.CheckRecycled(request, timeout=10)
            times, cpu0 = [], cpu_seconds(pid)
            for _ in range(calls):
                t0 = time.monotonic()
                await stub.CheckRecycled(request, timeout=10)
                times.append(time.monotonic() - t0)
            rows.append(_row("gRPC CheckRecycled", "call", times, cpu_seconds(pid) - cpu0, calls))
        body = {"phoneNumber": number, "specifiedDate": day.isoformat()}
        async with _client(layout.pki_dir, WEIBO) as client:
            for _ in range(10):
                (await client.post(base + CHECK, json=body)).raise_for_status()
            times, cpu0 = [], cpu_seconds(pid)
            for _ in range(calls):
                t0 = time.monotonic()
                (await client.post(base + CHECK, json=body)).raise_for_status()
                times.append(time.monotonic() - t0)
            rows.append(
                _row("CAMARA POST /check (HTTPS)", "call", times, cpu_seconds(pid) - cpu0, calls)
            )

        # -- lifecycle events ------------------------------------------------------------------
        signer = pki.load_carrier_signer(layout.pki_dir, "cmcc")
        numbers = [n for n, _ in served_now()]
        at = datetime.now(UTC) - timedelta(days=1)
        async with pki.secure_channel(
            layout.gateway_endpoint,
            layout.pki_dir,
            PeerId(Role.CARRIER, "cmcc"),
            server=pki.GATEWAY,
        ) as ch:
            carrier = gateway_pb2_grpc.GatewayServiceStub(ch)
            for b in range(max(events // PER_BATCH, 1)):
                batch = [
                    LifecycleEvent.new(
                        numbers[(b * PER_BATCH + k) % len(numbers)], EventKind.DEACTIVATED, at
                    )
                    for k in range(PER_BATCH)
                ]
                env = sign_event_batch("cmcc", batch, signer, now=datetime.now(UTC))
                await carrier.PublishEvents(
                    gateway_pb2.PublishEventsRequest(batch=env.to_proto()), timeout=10
                )
        total = max(events // PER_BATCH, 1) * PER_BATCH
        async with pki.secure_channel(
            layout.gateway_endpoint, layout.pki_dir, TAOBAO, server=pki.GATEWAY
        ) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            got, through, times, cpu0 = 0, 0, [], cpu_seconds(pid)
            while got < total:
                t0 = time.monotonic()
                pulled = await stub.PullEvents(
                    gateway_pb2.PullEventsRequest(ack_through_seq=through, max_batches=20),
                    timeout=10,
                )
                times.append(time.monotonic() - t0)
                for item in pulled.batches:
                    through = item.seq
                    got += PER_BATCH
                if not pulled.batches:
                    raise RuntimeError("PullEvents stopped short of the log's head")
            await stub.PullEvents(
                gateway_pb2.PullEventsRequest(ack_through_seq=through), timeout=10
            )
            rows.append(_row("gRPC PullEvents", "event", times, cpu_seconds(pid) - cpu0, total))
        async with _client(layout.pki_dir, WEIBO) as client:
            seen: set[str] = set()
            acks: list[str] = []
            times, cpu0 = [], cpu_seconds(pid)
            while True:
                t0 = time.monotonic()
                answer = await client.post(
                    base + "/ssf/poll",
                    json={"ack": acks, "maxEvents": 100, "returnImmediately": True},
                )
                answer.raise_for_status()
                times.append(time.monotonic() - t0)
                sets = answer.json()["sets"]
                seen.update(sets)
                acks = list(sets)
                if not sets:
                    break
            rows.append(
                _row("SSF poll (RFC 8936)", "event", times, cpu_seconds(pid) - cpu0, len(seen))
            )
    for row in rows:
        print(
            f"  {row['path']:<28} {row['cpu_ms_per_unit']:>8} ms gateway CPU per {row['unit']}, "
            f"{row['wall_ms_per_unit']:>8} ms wall"
        )
    return {"calls": calls, "events": total, "events_per_batch": PER_BATCH, "rows": rows}


def document(r: dict[str, Any]) -> list[str]:
    """The facades' section of docs/benchmarks.md's results."""
    rows = r["rows"]
    check = {x["path"]: x for x in rows if x["unit"] == "call"}
    grpc_check = check.get("gRPC CheckRecycled")
    lines = [
        "### Standards facades",
        "",
        f"{r['calls']} recycled checks one at a time; {r['events']} events in batches of "
        f"{r['events_per_batch']}, taken by one platform over gRPC and by another over SSF poll "
        "(docs/standards.md).",
        "",
        "| path | per | gateway CPU ms | wall ms | vs gRPC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for x in rows:
        ref = (
            grpc_check
            if x["unit"] == "call"
            else next((y for y in rows if y["path"] == "gRPC PullEvents"), None)
        )
        ratio = (
            f"{x['cpu_ms_per_unit'] / ref['cpu_ms_per_unit']:.1f}x"
            if ref and ref["cpu_ms_per_unit"]
            else ""
        )
        lines.append(
            f"| {x['path']} | {x['unit']} | {x['cpu_ms_per_unit']} | {x['wall_ms_per_unit']} "
            f"| {ratio} |"
        )
    lines.append("")
    return lines
