"""The demo federation's processes: start each member as its own ``numfed <role> serve``,
wait until every one answers health checks, stop them all; and what a person needs to try it
by hand (the made-up subscribers, where each carrier's holder channel, page and SMS outbox are).

The story the demo tells is :mod:`numfed.demo`; this is only the wiring under it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from numfed import pki
from numfed.federation import FederationLayout
from numfed.identity import PeerId, Role
from numfed.scenario import Scenario

__all__ = [
    "ExpectationFailed",
    "Proc",
    "read_sms_code",
    "running_federation",
    "sms_outbox",
    "wait_ready",
    "write_subscribers",
]


class ExpectationFailed(Exception):
    pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@contextmanager
def running_federation(layout: FederationLayout, console: Console) -> Iterator[list[Proc]]:
    """Start every process of ``layout``; stop them all (SIGTERM, then SIGKILL) on exit."""
    procs: list[Proc] = []
    logs = layout.root / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, role: str, config: Path) -> None:
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "numfed", role, "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.append(Proc(name, popen, log))

    try:
        for p, cfg in layout.platform_configs.items():
            spawn(f"platform-{p}", "platform", cfg)
        for c, cfg in layout.carrier_configs.items():
            spawn(f"carrier-{c}", "carrier", cfg)
        spawn("gateway", "gateway", layout.gateway_config)
        yield procs
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


def wait_ready(layout: FederationLayout, procs: list[Proc], timeout: float = 20.0) -> None:
    """Wait until every server answers health checks as SERVING."""
    deadline = time.monotonic() + timeout
    checks: list[tuple[str, PeerId, str]] = [
        (
            layout.gateway_endpoint,
            PeerId(Role.CARRIER, next(iter(layout.carrier_endpoints))),
            "numfed.v1.GatewayService",
        ),
    ]
    checks += [
        (e, PeerId(Role.GATEWAY, "main"), "numfed.v1.PlatformService")
        for e in layout.platform_endpoints.values()
    ]
    checks += [
        (e, PeerId(Role.GATEWAY, "main"), "numfed.v1.CarrierService")
        for e in layout.carrier_endpoints.values()
    ]
    pki_layout = pki.PkiLayout(layout.pki_dir)
    for endpoint, peer, service in checks:
        creds = pki.channel_credentials(pki_layout, peer)
        with grpc.secure_channel(endpoint, creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                for proc in procs:
                    if proc.popen.poll() is not None:
                        raise ExpectationFailed(
                            f"{proc.name} exited early:\n{proc.log.read_text()[-2000:]}"
                        )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise ExpectationFailed(f"{service} at {endpoint} did not become ready")
                time.sleep(0.1)


def read_sms_code(layout: FederationLayout, carrier: str, number: str) -> str:
    outbox = layout.root / "state" / f"carrier-{carrier}" / "sms-outbox.jsonl"
    for _ in range(50):
        if outbox.exists():
            lines = [json.loads(x) for x in outbox.read_text().splitlines() if x.strip()]
            mine = [x for x in lines if x["number"] == number]
            if mine:
                return str(mine[-1]["code"])
        time.sleep(0.05)
    raise ExpectationFailed(f"no SMS code for {number} in {outbox}")


def sms_outbox(layout: FederationLayout, carrier: str) -> Path:
    """Where the demo carrier's SMS centre puts each code (a JSON line per SMS)."""
    return layout.root / "state" / f"carrier-{carrier}" / "sms-outbox.jsonl"


def write_subscribers(layout: FederationLayout, world: Scenario, path: Path) -> Path:
    """Write the demo's made-up subscribers (number, name, ID number, since when they hold it)
    and each carrier's holder channel, page and SMS outbox, for trying the federation by hand."""
    now = datetime.now(UTC)
    showcase = {n: label for label, n in world.showcase.items()}
    subscribers = []
    for number, history in sorted(world.histories.items()):
        tenure = history.current_tenure(now)
        carrier = history.carrier_at(now)
        if tenure is None or carrier not in layout.carrier_endpoints:
            continue
        h = world.holders[tenure.holder_id]
        prior = sum(1 for b in world.bindings if b.number == number and b.bound_at < tenure.start)
        subscribers.append(
            {
                "number": number,
                "carrier": carrier,
                "name": h.name,
                "id_number": h.id_number,
                "holder_since": tenure.start.isoformat(),
                "prior_bindings": prior,
                "showcase": showcase.get(number),
            }
        )
    carriers = {
        c: {
            "holder_listen": layout.holder_endpoints[c],
            "holder_page": (
                f"http://{layout.holder_web_endpoints[c]}/"
                if c in layout.holder_web_endpoints
                else None
            ),
            "sms_outbox": str(sms_outbox(layout, c).relative_to(layout.root)),
        }
        for c in layout.carrier_endpoints
    }
    note = (
        "Made-up subscribers of the demo federation (numfed/scenario.py): no real person. "
        "prior_bindings counts what previous holders left in the demo world; `numfed demo` "
        "releases those of the showcase numbers as it runs."
    )
    body = {"note": note, "carriers": carriers, "subscribers": subscribers}
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
