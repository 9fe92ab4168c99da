"""``numfed status --config gateway.toml [--json]``: a running gateway at a glance.

Members with their health, circuit breaker, calls in flight and last error; open release jobs
and the age of the oldest; event lag per platform; the audit chain and its newest signed
checkpoint; the trust versions held and when they expire (dead letters are each platform's:
``numfed platform dead-letters``). Breakers, calls in flight and last errors live in the
gateway process: they come from its loopback status endpoint (``/status`` on ``[telemetry]
metrics_listen``). Without that endpoint the work in hand is read from the gateway's database
and the trust from its trust directory. Health comes from each process's own gRPC health
service, asked with the gateway's certificate. Exit status 0: the gateway is SERVING; 1: it is
not (or not reachable); 2: the config cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from numfed.cli import Command

__all__ = ["STATUS", "gather_status"]

EXIT_NOT_SERVING = 1
HEALTH_TIMEOUT = 2.0


async def _health(endpoint: str, pki_dir: Path, server: Any, service: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from numfed import pki
    from numfed.observability.logs import failure_reason

    try:
        channel = pki.secure_channel(endpoint, pki_dir, pki.GATEWAY, server=server)
    except Exception as exc:
        return f"UNKNOWN ({failure_reason(exc)})"
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=HEALTH_TIMEOUT
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({failure_reason(exc)})"
    finally:
        await channel.close()


def _from_endpoint(listen: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{listen}/status", timeout=3) as answer:
            document: dict[str, Any] = json.loads(answer.read())
            return document
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _from_database(config: Any) -> dict[str, Any]:
    from gateway.results import now_us
    from gateway.status import read_snapshot
    from numfed.db import sqlite_engine
    from numfed.observability.trust import trust_figures
    from numfed.trustfiles import load_trusted_state

    url: str = config.database_url
    if url.startswith("sqlite"):
        engine = sqlite_engine(url)
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(url, pool_size=1)
    try:
        platforms = [m.id for m in config.platforms]
        snapshot = read_snapshot(engine, platforms, now_us())
    finally:
        engine.dispose()
    try:
        trust = trust_figures(load_trusted_state(config.trust_dir, now=datetime.now(UTC)))
    except Exception as exc:
        trust = {"error": str(exc)}
    return {
        "gateway": {"listen": config.listen},
        "carriers": [{"id": m.id, "endpoint": m.endpoint} for m in config.carriers],
        "platforms": [
            {"id": m.id, "endpoint": m.endpoint, "events": m.events} for m in config.platforms
        ],
        **snapshot.to_json(platforms),
        "trust": trust,
    }


async def gather_status(config_path: Path) -> dict[str, Any]:
    """The status document ``numfed status --json`` prints."""
    from numfed import pki
    from numfed.config import load_gateway_config
    from numfed.identity import PeerId, Role

    config = load_gateway_config(config_path)
    listen = config.telemetry.metrics_listen
    document = _from_endpoint(listen) if listen is not None else None
    if document is not None:
        document["source"] = f"http://{listen}/status"
    else:
        document = await asyncio.to_thread(_from_database, config)
        document["source"] = (
            f"the database and {config.trust_dir} (status endpoint "
            + ("not reachable" if listen is not None else "not configured")
            + ")"
        )
    checks = [
        _health(config.listen, config.pki_dir, pki.GATEWAY, "numfed.v1.GatewayService"),
        *(
            _health(
                m.endpoint, config.pki_dir, PeerId(Role.CARRIER, m.id), "numfed.v1.CarrierService"
            )
            for m in config.carriers
        ),
        *(
            _health(
                m.endpoint, config.pki_dir, PeerId(Role.PLATFORM, m.id), "numfed.v1.PlatformService"
            )
            for m in config.platforms
        ),
    ]
    health = await asyncio.gather(*checks)
    document["gateway"]["health"] = health[0]
    carriers = {c["id"]: c for c in document.get("carriers", [])}
    platforms = {p["id"]: p for p in document.get("platforms", [])}
    n = len(config.carriers)
    for m, h in zip(config.carriers, health[1 : 1 + n], strict=True):
        carriers.setdefault(m.id, {"id": m.id, "endpoint": m.endpoint})["health"] = h
    for m, h in zip(config.platforms, health[1 + n :], strict=True):
        platforms.setdefault(m.id, {"id": m.id, "endpoint": m.endpoint})["health"] = h
    document["carriers"] = list(carriers.values())
    document["platforms"] = list(platforms.values())
    return document


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _error(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    at = value["at"][11:19]
    return f"{value['reason']} at {at} UTC"


def render(document: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    gw = document["gateway"]
    console.print(
        f"gateway {gw.get('listen', '?')}: [bold]{gw['health']}[/]"
        + (f", replica {gw['replica']}" if "replica" in gw else "")
        + (f", up since {gw['started_at'][:19]} UTC" if "started_at" in gw else "")
    )
    events = document.get("events", {})
    jobs = document.get("release_jobs", {})
    members = Table(title="members", title_justify="left")
    for column in ("member", "health", "breaker", "in flight", "last error", "event lag", "tasks"):
        members.add_column(column, no_wrap=True)
    for c in document.get("carriers", []):
        synced = "synced" if c.get("synced") else ("not synced" if "synced" in c else "?")
        members.add_row(
            f"carrier {c['id']}",
            c.get("health", "?"),
            synced,
            "-",
            _error(c.get("last_error")),
            "-",
            "-",
        )
    lag = events.get("lag_batches", {})
    lag_s = events.get("lag_seconds", {})
    tasks = jobs.get("tasks_open", {})
    for p in document.get("platforms", []):
        flying = p.get("calls_in_flight")
        in_flight = "?" if flying is None else str(sum(flying.values()))
        behind = lag.get(p["id"], 0)
        health, seen = p.get("health", "?"), p.get("health_seen")
        members.add_row(
            f"platform {p['id']}",
            health if seen in (None, health) else f"{health} (gateway heard {seen})",
            p.get("breaker") or "?",
            in_flight,
            _error(p.get("last_error")),
            f"{behind} ({_age(lag_s.get(p['id'], 0.0))})" if behind else "0",
            str(tasks.get(p["id"], 0)),
        )
    console.print(members)
    oldest = jobs.get("oldest_open_age_seconds", 0.0)
    console.print(
        f"release jobs open: {jobs.get('open', 0)}"
        + (f" (oldest {_age(oldest)})" if jobs.get("open") else "")
        + f"; event log head: {events.get('head', 0)}"
        + f"; audit chain: {_audit(document.get('audit', {}))}"
    )
    trust = document.get("trust", {})
    if trust.get("bundle_version") is not None:
        console.print(
            f"trust: bundle v{trust['bundle_version']} expires {trust['bundle_expires_at'][:19]}"
            f" UTC (in {_age(trust['bundle_expires_in_seconds'])}); root "
            f"v{trust['root_version']} expires {trust['root_expires_at'][:19]} UTC (in "
            f"{_age(trust['root_expires_in_seconds'])})"
        )
    else:
        console.print(f"trust: {trust.get('error', 'no bundle held')}")
    console.print(f"[dim]from {document['source']}[/]")


def _audit(audit: dict[str, Any]) -> str:
    text = f"{audit.get('length', 0)} entries"
    size, issued_us = audit.get("last_checkpoint_size"), audit.get("last_checkpoint_issued_us")
    if size is None or issued_us is None:
        return text + ", no checkpoint signed yet"
    age = max(datetime.now(UTC).timestamp() - issued_us / 1e6, 0.0)
    return text + f", last checkpoint at {size} ({_age(age)} ago)"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the gateway's TOML config")
    parser.add_argument("--json", action="store_true", help="one JSON document, for scripts")


def _run(args: argparse.Namespace) -> int:
    document = asyncio.run(gather_status(args.config))
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        render(document)
    return 0 if document["gateway"]["health"] == "SERVING" else EXIT_NOT_SERVING


STATUS = Command(
    "status", "show a running gateway, its members and the work in hand", _configure, _run
)
