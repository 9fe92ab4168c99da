"""Truncation and rewrites of the audit log are detected by the checkpoints members keep.

A real gateway process (SQLite, or PostgreSQL) signs checkpoints of its audit chain; a carrier
and two platforms, in this process, fetch them with the trust bundle and keep them in their
state dirs. The gateway is stopped, someone with write access to its database edits the log,
and ``numfed audit verify`` runs as a process with the members' exported checkpoints: it exits
0 only for the untouched log, and names what was done otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from carrier_adapters.base import CarrierHandle, start_carrier
from gateway.audit import GENESIS, AuditRecord, entry_hash
from gateway.schema import audit_checkpoints, audit_log
from numfed import pki
from numfed.checkpoint import (
    AuditEquivocation,
    Checkpoint,
    CheckpointKeeper,
    audit_origin,
    sign_checkpoint,
)
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_carrier_config, load_gateway_config, load_platform_config
from numfed.envelope import Envelope, SigningKey
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import NUMBER_RANGES, FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.trustfiles import load_trusted_state, read_roots
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc
from platform_stubs.reference import PlatformHandle, start_platform
from tests.helpers.processes import spawn_gateway
from tests.integration.members import eventually
from tests.integration.test_faults import _wait_serving

WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")
WEIBO = "spiffe://numfed/platform/weibo"

pytestmark = pytest.mark.timeout(240)


@dataclasses.dataclass
class Stopped:
    """A federation whose gateway ran, signed checkpoints, and stopped."""

    layout: FederationLayout
    url: str
    tmp: Path
    rows: list[dict[str, Any]]
    checkpoint_rows: list[dict[str, Any]]
    held: int
    """The size of the checkpoint weibo holds (the others hold it or a larger one)."""

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url)

    def restore(self) -> None:
        """Put the log and the gateway's checkpoints back as the gateway left them."""
        engine = self.engine()
        try:
            with engine.begin() as c:
                c.execute(sa.delete(audit_log))
                c.execute(sa.delete(audit_checkpoints))
                c.execute(sa.insert(audit_log), self.rows)
                c.execute(sa.insert(audit_checkpoints), self.checkpoint_rows)
        finally:
            engine.dispose()

    def edit(self, *statements: Any) -> None:
        engine = self.engine()
        try:
            with engine.begin() as c:
                for s in statements:
                    c.execute(s)
        finally:
            engine.dispose()

    def export(self, config: Path, name: str) -> Path:
        out = self.tmp / name
        done = numfed("audit", "checkpoint", "export", "--config", str(config), "--out", str(out))
        assert done.returncode == 0, done.stderr
        return out

    def verify(self, *checkpoints: Path) -> subprocess.CompletedProcess[str]:
        args = ["audit", "verify", "--config", str(self.layout.gateway_config)]
        if checkpoints:
            args += ["--checkpoints", *map(str, checkpoints)]
        return numfed(*args)


def numfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "numfed", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def traffic(layout: FederationLayout) -> None:
    """Audited calls: accepted queries, and an event batch."""
    now = datetime.now(UTC)
    signer = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    plan = NUMBER_RANGES["cmcc"]  # a number of cmcc's own blocks that never ported
    served = [
        h
        for h in WORLD.histories_served_by("cmcc", now)
        if h.current_tenure(now) and h.number.startswith(plan) and not list(h.ports())
    ]
    assert served
    async with pki.secure_channel(layout.gateway_endpoint, layout.pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for i in range(12):
            h = served[i % len(served)]
            claim = TenureClaim.new(
                number=h.number,
                carrier_id="cmcc",
                tenure_start=h.tenure_start(now),
                purpose=Purpose.QUERY_PRIOR,
                now=now,
            )
            await stub.QueryBindings(
                gateway_pb2.QueryBindingsRequest(claim=sign_claim(claim, signer).to_proto()),
                timeout=10,
            )
        events = [LifecycleEvent.new(served[0].number, EventKind.DEACTIVATED, now)]
        batch = sign_event_batch("cmcc", events, signer, now=now)
        await stub.PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=batch.to_proto()), timeout=10
        )


@pytest.fixture(name="s")
async def stopped(tmp_path: Path, db_url: str) -> AsyncIterator[Stopped]:
    layout = create_federation(
        tmp_path / "fed",
        database_url=db_url,
        carriers=("cmcc",),
        platforms=("weibo", "taobao"),
        limits={"audit_checkpoint_interval": 0.2},
    )
    platforms: dict[str, PlatformHandle] = {}
    carriers: dict[str, CarrierHandle] = {}
    gateway: subprocess.Popen[bytes] | None = None
    url = load_gateway_config(layout.gateway_config).database_url
    engine = sa.create_engine(url)
    try:
        for p, cfg in layout.platform_configs.items():
            platforms[p] = await start_platform(load_platform_config(cfg))
        carrier_config = load_carrier_config(layout.carrier_configs["cmcc"])
        carriers["cmcc"] = await start_carrier(carrier_config)
        gateway = spawn_gateway(layout.gateway_config, tmp_path / "gateway.log")
        await asyncio.to_thread(_wait_serving, layout.gateway_endpoint, layout.pki_dir, gateway)
        await traffic(layout)

        def head() -> int:
            with engine.connect() as c:
                return int(c.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar_one() or 0)

        def signed() -> int:
            with engine.connect() as c:
                got = c.execute(sa.select(sa.func.max(audit_checkpoints.c.size))).scalar_one()
                return int(got or 0)

        # Once the gateway has anchored its log, every member takes the checkpoint: the
        # platforms with their trust bundle, the carrier on its own round (called here too).
        # A late acknowledgement may still add an entry, and a checkpoint, meanwhile.
        await eventually(lambda: head() > 12 and signed() == head(), within=30)
        size = signed()
        for handle in platforms.values():
            await handle.trust.refresh(wait_for_ready=True)
        await carriers["cmcc"].adapter.keep_checkpoint()
        keepers = [h.trust.checkpoints for h in platforms.values()]
        keepers.append(carriers["cmcc"].adapter.checkpoints)
        held = [k.latest.size if k is not None and k.latest else 0 for k in keepers]
        assert min(held) >= size, held
        weibo = platforms["weibo"].trust.checkpoints
        assert weibo is not None and weibo.latest is not None
        gateway.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.wait, 20) == 0
        with engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(sa.select(audit_log))]
            cps = [dict(r._mapping) for r in c.execute(sa.select(audit_checkpoints))]
        assert len(rows) - weibo.latest.size < 10  # the newest 10 entries reach below it
        yield Stopped(layout, url, tmp_path, rows, cps, weibo.latest.size)
    finally:
        engine.dispose()
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for h in platforms.values():
            await h.stop(0)
        for k in carriers.values():
            await k.stop(0)


async def test_a_tail_cut_below_a_checkpoint_a_member_holds_is_detected(s: Stopped) -> None:
    weibo = s.export(s.layout.platform_configs["weibo"], "weibo.json")
    cmcc = s.export(s.layout.carrier_configs["cmcc"], "cmcc.json")
    intact = s.verify(weibo, cmcc)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "audit log intact" in intact.stdout
    entries = len(s.rows)
    # The newest 10 entries go, and with them the gateway's own checkpoints.
    s.edit(sa.delete(audit_log).where(audit_log.c.seq > entries - 10), sa.delete(audit_checkpoints))
    chain_only = s.verify()
    assert chain_only.returncode == 0  # the chain alone cannot see its tail cut off ...
    assert f"{entries - 10:,} entries after it are unanchored" in chain_only.stdout
    cut = s.verify(weibo, cmcc)  # ... the members' checkpoints do
    assert cut.returncode == 1, cut.stdout
    assert (
        f"AUDIT_TRUNCATED: entries {entries - 9:,}-{s.held:,} missing; checkpoint of size "
        f"{s.held:,} held by {WEIBO} (weibo.json)"
    ) in cut.stdout
    assert "spiffe://numfed/carrier/cmcc" in cut.stdout
    s.edit(sa.delete(audit_log))  # every entry
    emptied = s.verify(weibo)
    assert emptied.returncode == 1 and f"entries 1-{s.held:,} missing" in emptied.stdout


async def test_the_gateways_own_checkpoints_catch_a_cut_that_leaves_them(s: Stopped) -> None:
    s.edit(sa.delete(audit_log).where(audit_log.c.seq > len(s.rows) - 10))
    cut = s.verify()
    assert cut.returncode == 1
    assert "AUDIT_TRUNCATED" in cut.stdout and "audit_checkpoints table" in cut.stdout


async def test_the_whole_chain_rewritten_with_every_hash_recomputed_is_detected(
    s: Stopped,
) -> None:
    weibo = s.export(s.layout.platform_configs["weibo"], "weibo.json")
    prev = GENESIS
    rewritten = []
    for row in sorted(s.rows, key=lambda r: int(r["seq"])):
        outcome = "ACCEPTED" if row["seq"] != 3 else "REFUSED"  # the one entry someone wanted
        rec = AuditRecord(row["at_us"], row["event"], row["actor"], row["number_key"], outcome, {})
        h = entry_hash(int(row["seq"]), rec, prev)
        rewritten.append({**row, "outcome": outcome, "detail": "{}", "prev_hash": prev, "hash": h})
        prev = h
    s.edit(
        sa.delete(audit_log), sa.delete(audit_checkpoints), sa.insert(audit_log).values(rewritten)
    )
    chain_only = s.verify()
    assert chain_only.returncode == 0 and "hash chain intact" in chain_only.stdout
    caught = s.verify(weibo)
    assert caught.returncode == 1
    assert f"AUDIT_REWRITTEN: entry {s.held:,} has hash" in caught.stdout
    assert WEIBO in caught.stdout


async def test_an_equivocating_pair_and_a_foreign_checkpoint_are_reported(s: Stopped) -> None:
    weibo = s.export(s.layout.platform_configs["weibo"], "weibo.json")
    # A gateway that signs a second head for the size weibo holds (its audit key, a forked
    # log): a member that is offered both keeps them as evidence.
    trust = load_trusted_state(s.layout.trust_dir, now=datetime.now(UTC))
    assert trust.bundle is not None
    origin = audit_origin(Envelope.from_proto(read_roots(s.layout.trust_dir)[0]))
    audit_key = pki.load_audit_signer(s.layout.pki_dir)
    held = CheckpointKeeper(
        s.tmp / "witness.json", origin=origin, holder="spiffe://numfed/platform/taobao"
    )
    newest = max(s.checkpoint_rows, key=lambda r: int(r["size"]))
    real = Envelope.from_proto(claim_pb2.Envelope.FromString(bytes(newest["envelope"])))
    size = Checkpoint.from_payload(real.payload).size
    forged = sign_checkpoint(
        dataclasses.replace(Checkpoint.from_payload(real.payload), head=b"\x01" * 32), audit_key
    )
    held.offer(real, trust.bundle, now=datetime.now(UTC))
    with pytest.raises(AuditEquivocation):
        held.offer(forged, trust.bundle, now=datetime.now(UTC))
    forked = s.verify(weibo, s.tmp / "witness.json")
    assert forked.returncode == 1
    assert f"AUDIT_EQUIVOCATION: 2 different heads signed for size {size:,}" in forked.stdout
    printed = base64.b64encode(forged.to_proto().SerializeToString(deterministic=True)).decode()
    assert printed in forked.stdout.replace("\n", "").replace(" ", "")
    # A checkpoint signed by a key the bundle does not list proves nothing.
    unknown = sign_checkpoint(Checkpoint.from_payload(real.payload), SigningKey.generate())
    (s.tmp / "stranger.json").write_text(
        json.dumps(
            {
                "format": "numfed-audit-checkpoints-v1",
                "holder": "someone",
                "origin": origin,
                "latest": base64.b64encode(unknown.to_proto().SerializeToString()).decode(),
            }
        )
    )
    refused = s.verify(weibo, s.tmp / "stranger.json")
    assert refused.returncode == 1 and "CHECKPOINT_REFUSED" in refused.stdout
    assert "UNKNOWN_KEY" in refused.stdout
