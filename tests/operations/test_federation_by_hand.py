"""A federation set up by hand, as processes: ``numfed federation init``, each process started
on its own, a holder's journey; then ``numfed federation add-member`` for a platform and a
carrier (its key in the next trust bundle), both taken in by the running gateway without a
restart, and ``numfed status`` on it all."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from numfed.federation import NUMBER_RANGES
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing.federation import wait_serving
from numfed.trustfiles import read_bundle
from numfed.v1 import trust_pb2
from tests.integration.holder import PRIOR, HolderApp, counts, response
from tests.integration.members import eventually

WORLD = demo_scenario()


def numfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "numfed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Processes:
    """Processes started by hand, one ``numfed <role> serve`` each, logs beside the configs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, config: str) -> None:
        role = config.split("-", 1)[0].removesuffix(".toml")
        log = (self.root / f"{config}.log").open("ab")
        self.running[config] = subprocess.Popen(
            [sys.executable, "-m", "numfed", role, "serve", "--config", str(self.root / config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, config: str) -> int:
        proc = self.running.pop(config)
        proc.terminate()
        return proc.wait(20)

    def stop_all(self) -> None:
        for config in list(self.running):
            try:
                self.stop(config)
            except subprocess.TimeoutExpired:
                self.running.get(config, subprocess.Popen(["true"])).kill()


def setting(root: Path, config: str, section: str, key: str) -> str:
    value = tomllib.loads((root / config).read_text())[section][key]
    assert isinstance(value, str)
    return value


def served_by(carrier: str) -> Iterator[tuple[str, str]]:
    now = datetime.now(UTC)
    for number, history in sorted(WORLD.histories.items()):
        tenure = history.current_tenure(now)
        if (
            number.startswith(NUMBER_RANGES[carrier])
            and history.carrier_at(now) == carrier
            and tenure is not None
        ):
            yield number, tenure.holder_id


def expected_prior(number: str, platforms: set[str]) -> dict[str, int]:
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    out: dict[str, int] = {}
    for b in WORLD.bindings:
        if b.number == number and b.bound_at < x and b.platform_id in platforms:
            out[b.platform_id] = out.get(b.platform_id, 0) + 1
    return out


USED: set[str] = set()


async def journey(root: Path, carrier: str, platforms: set[str]) -> None:
    """Verify a holder of ``carrier`` (a number not released yet), query, release, query
    again: every platform answers."""
    number, holder_id = next(
        (n, h) for n, h in served_by(carrier) if n not in USED and expected_prior(n, platforms)
    )
    USED.add(number)
    holder_at = setting(root, f"carrier-{carrier}.toml", "carrier", "holder_listen")
    async with grpc.aio.insecure_channel(holder_at) as channel:
        app = await HolderApp.verified(
            channel, root / "state" / f"carrier-{carrier}", number, WORLD.holders[holder_id]
        )
        found = await app.query(PRIOR)
        assert {r.platform_id for r in found} == platforms
        assert counts(found) == expected_prior(number, platforms), found
        op = await app.release(PRIOR)
        done = (await app.watch(op.name))[-1]
        assert done.done
        assert {r.platform_id for r in response(done).results} == platforms
        assert counts(await app.query(PRIOR)) == {}


async def gateway_sees_serving(root: Path, platform_id: str) -> bool:
    """Whether the gateway's ``/status`` says it has heard ``platform_id`` report SERVING (it
    sends a platform queries only then; a platform added live is linked within a second, and
    its link may first meet it not yet up)."""
    url = f"http://{setting(root, 'gateway.toml', 'telemetry', 'metrics_listen')}/status"

    def read() -> object:
        with urllib.request.urlopen(url, timeout=5) as answer:
            platforms = json.loads(answer.read())["platforms"]
        return next((p["health_seen"] for p in platforms if p["id"] == platform_id), None)

    return await asyncio.to_thread(read) == "SERVING"


async def gateway_holds_bundle(root: Path, version: int) -> bool:
    """Whether the gateway's ``/status`` says it holds trust bundle ``version``."""
    url = f"http://{setting(root, 'gateway.toml', 'telemetry', 'metrics_listen')}/status"

    def read() -> object:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())["trust"]["bundle_version"]

    return await asyncio.to_thread(read) == version


async def serving(root: Path, config: str) -> None:
    role, _, member = config.removesuffix(".toml").partition("-")
    listen = setting(root, config, role, "listen")
    if role == "gateway":
        peer, service = PeerId(Role.GATEWAY, "main"), "numfed.v1.GatewayService"
    elif role == "carrier":
        peer, service = PeerId(Role.CARRIER, member), "numfed.v1.CarrierService"
    else:
        peer, service = PeerId(Role.PLATFORM, member), "numfed.v1.PlatformService"
    await wait_serving(listen, root / "pki", peer, service, timeout=60)


@pytest.mark.timeout(420)
async def test_a_federation_set_up_by_hand_serves_a_holder_and_takes_new_members(
    tmp_path: Path,
) -> None:
    root = tmp_path / "federation"
    made = numfed(
        "federation",
        "init",
        str(root),
        "--carrier",
        "cmcc",
        "--platform",
        "weibo",
        "--base-port",
        "0",
        "--demo-data",
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert {p.name for p in root.iterdir()} == {
        "pki",
        "trust",
        "gateway.toml",
        "carrier-cmcc.toml",
        "platform-weibo.toml",
    }
    procs = Processes(root)
    try:
        for config in ("platform-weibo.toml", "carrier-cmcc.toml", "gateway.toml"):
            procs.start(config)
        for config in ("gateway.toml", "platform-weibo.toml"):
            await serving(root, config)
        await journey(root, "cmcc", {"weibo"})

        # One more platform, while everything runs: the gateway takes it in within a second.
        added = numfed("federation", "add-member", str(root), "--platform", "taobao", "--demo-data")
        assert added.returncode == 0, added.stdout + added.stderr
        procs.start("platform-taobao.toml")
        await serving(root, "platform-taobao.toml")
        await eventually(lambda: gateway_sees_serving(root, "taobao"), within=30)
        await journey(root, "cmcc", {"weibo", "taobao"})

        # One more carrier: a certificate, a signing key, and trust bundle v2 with its key
        # and its number blocks, published as `numfed trust publish` does. Nothing restarts:
        # the gateway serves v2 within a second, the platforms take it from the gateway.
        added = numfed(
            "federation",
            "add-member",
            str(root),
            "--carrier",
            "cucc",
            "--demo-data",
            *(arg for prefix in NUMBER_RANGES["cucc"] for arg in ("--range", prefix)),
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "no restart" in " ".join(added.stdout.split())
        bundle = trust_pb2.TrustBundle.FromString(read_bundle(root / "trust").payload)
        assert bundle.version == 2 and {k.carrier_id for k in bundle.carrier_keys} == {
            "cmcc",
            "cucc",
        }
        assert {r.prefix for r in bundle.number_ranges if r.carrier_id == "cucc"} == set(
            NUMBER_RANGES["cucc"]
        )
        procs.start("carrier-cucc.toml")
        await serving(root, "carrier-cucc.toml")
        await eventually(lambda: gateway_holds_bundle(root, 2), within=30)
        await journey(root, "cucc", {"weibo", "taobao"})

        shown = await asyncio.to_thread(
            numfed, "status", "--config", str(root / "gateway.toml"), "--json"
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        status = json.loads(shown.stdout)
        assert status["gateway"]["health"] == "SERVING"
        assert status["source"].endswith("/status")
        assert {c["id"]: c["health"] for c in status["carriers"]} == {
            "cmcc": "SERVING",
            "cucc": "SERVING",
        }
        assert {
            p["id"]: (p["health"], p["health_seen"], p["breaker"]) for p in status["platforms"]
        } == {
            "weibo": ("SERVING", "SERVING", "closed"),
            "taobao": ("SERVING", "SERVING", "closed"),
        }
        assert status["trust"]["bundle_version"] == 2
        assert status["release_jobs"]["open"] == 0
        table = await asyncio.to_thread(numfed, "status", "--config", str(root / "gateway.toml"))
        assert table.returncode == 0 and "platform taobao" in table.stdout
    finally:
        procs.stop_all()
    # Stopped, the gateway anchored its last audit entries in a checkpoint: status read from
    # its database shows the chain and the checkpoint that covers all of it.
    shown = await asyncio.to_thread(
        numfed, "status", "--config", str(root / "gateway.toml"), "--json"
    )
    status = json.loads(shown.stdout)
    assert "status endpoint not reachable" in status["source"]
    audit = status["audit"]
    assert audit["length"] > 0 and audit["last_checkpoint_size"] == audit["length"], audit
    table = await asyncio.to_thread(numfed, "status", "--config", str(root / "gateway.toml"))
    assert f"audit chain: {audit['length']} entries, last checkpoint at {audit['length']} (" in (
        " ".join(table.stdout.split())
    ), table.stdout
    for log in root.glob("*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()
    # The gateway's log tells the operator each step of its life, one line each.
    gateway_log = (root / "gateway.toml.log").read_text()
    for line in (
        f"trust files in {root / 'trust'} in force: root v1, bundle v1 (expires",
        f"trust files in {root / 'trust'} applied (files changed): root v1, bundle v1 -> v2",
        f"listening on {setting(root, 'gateway.toml', 'gateway', 'listen')}",
        "metrics listening on http://127.0.0.1:",
        "numfed.v1.GatewayService is SERVING",
        "accepted from carrier cmcc for 1 platforms",
        "accepted from carrier cmcc for 2 platforms",
        "accepted from carrier cucc for 2 platforms",
        "config " + str(root / "gateway.toml") + " reloaded (file changed): +platform taobao",
        "config " + str(root / "gateway.toml") + " reloaded (file changed): +carrier cucc",
        "stopping (SIGTERM)",
        "numfed.v1.GatewayService NOT_SERVING: stopping",
        "stopped",
    ):
        assert line in gateway_log, (line, gateway_log)
    assert gateway_log.count("carrier cmcc synced") == 1  # once, not every minute
    platform_log = (root / "platform-taobao.toml.log").read_text()
    assert "trust updated: root v1, bundle v1 -> v2" in platform_log


@pytest.mark.timeout(120)
async def test_status_reads_the_database_when_the_gateway_is_down(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    made = numfed(
        "federation",
        "init",
        str(root),
        "--carrier",
        "cmcc",
        "--platform",
        "weibo",
        "--base-port",
        "0",
        "--no-metrics",
    )
    assert made.returncode == 0, made.stdout + made.stderr
    procs = Processes(root)
    try:
        procs.start("gateway.toml")  # alone: it listens, but is NOT_SERVING (no carrier synced)
        log = root / "gateway.toml.log"
        for _ in range(600):
            if "listening on" in (log.read_text() if log.exists() else ""):
                break
            await asyncio.sleep(0.1)  # the log file is the only sign a process gives here
        shown = await asyncio.to_thread(
            numfed, "status", "--config", str(root / "gateway.toml"), "--json"
        )
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["gateway"]["health"] == "NOT_SERVING"
    finally:
        procs.stop_all()
    shown = await asyncio.to_thread(
        numfed, "status", "--config", str(root / "gateway.toml"), "--json"
    )
    assert shown.returncode == 1, shown.stdout + shown.stderr
    status = json.loads(shown.stdout)
    assert status["gateway"]["health"].startswith("UNREACHABLE")
    assert "not configured" in status["source"]
    assert status["trust"]["bundle_version"] == 1
    assert {p["id"]: p["health"].split()[0] for p in status["platforms"]} == {
        "weibo": "UNREACHABLE"
    }
