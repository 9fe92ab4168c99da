"""The trust soak (issue 12): trust changes while a federation of processes carries traffic.

A gateway, carriers and platforms run each as its own ``numfed <role> serve`` process (one
platform, or more, taking events by poll), the gateway on the SQLite file or PostgreSQL database
given. A load runs without pause: each carrier's holder channel verifies a holder (name, ID
number, the SMS code from the carrier's outbox) and asks for prior-holder releases, so the
carrier process signs each RELEASE_PRIOR claim and submits it; and, as each carrier's operator,
the load publishes signed batches of lifecycle events (DEACTIVATED for numbers nobody holds,
REASSIGNED(X) for held ones). It records every release operation and every event the gateway
accepted. Meanwhile the operator's commands run, in turn, each as its own process:

a. ``numfed trust publish --rotate CARRIER``: the carrier's new claim-signing key in the next
   bundle. The carrier's event batches are signed with it at once, before the gateway or any
   platform may hold it (the gateway refuses them ``UNKNOWN_KEY`` until it reloads, and the
   load, as a sender must, tries again; a platform behind refreshes before it judges). Once
   the gateway and every platform hold that bundle, the carrier's adapter is restarted: it
   reads ``signing.key.pem`` only at start (docs/trust-operations.md), so its releases are
   signed with the new key from then on. The carrier is the one process the soak restarts,
   and its load is held while it restarts; the gateway and the platforms never restart.
b. ``numfed trust rotate-root`` twice: root v2 with a short expiry, root v3 at once after it;
   every platform must reach root v3 and the newest bundle, then the soak waits until root v2
   has expired, and traffic must go on (an expired root with a successor still vouches for it).
c. ``numfed trust publish --revoke OLD_KEY``: the carrier's old key, once everything it signed
   has reached every platform (revocation refuses what it signed, by design). The soak then asks
   the gateway and each platform directly, without a version hint, to judge a claim signed with
   that key, and measures until each refuses it ``KEY_REVOKED``; each must within one platform
   refresh interval (``trust_refresh``, set short here) of the bundle's writing.
d. The gateway takes each change from its trust directory while running; its PID never changes.

Then the load stops and the soak drains and checks, from the gateway's operations and the
platforms' own stores: every accepted release done on every platform and applied there exactly
once, every accepted event applied exactly once and in its carrier's order on every platform
(no dead letters), every platform and carrier keeping the gateway's audit checkpoints (one
issued after the last change, verified with the newest bundle's audit keys), the same process
ids as at the start (but the carrier restarted in a), and the revoked key refused.

``make soak-trust`` runs a long one (``python -m numfed.testing.soak --duration 600``); the
normal suite runs a short one (tests/integration/test_trust_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.longrunning import operations_pb2

from numfed import pki
from numfed.checkpoint import CHECKPOINT_FILE, CheckpointKeeper, audit_origin
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.demo_processes import read_sms_code
from numfed.envelope import Envelope, SigningKey
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout
from numfed.identity import PeerId, Role
from numfed.rpc import error_info, rpc_error_info
from numfed.scenario import CARRIERS, PLATFORMS, Scenario, demo_scenario
from numfed.staleness import STALE_VERIFIER_REASONS
from numfed.testing.federation import FederationProcesses, spawn_federation, wait_serving
from numfed.trust import parse_versions
from numfed.trustfiles import read_bundle, read_roots
from numfed.v1 import (
    claim_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    holder_pb2,
    holder_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
    trust_pb2,
)

__all__ = ["SoakReport", "SoakSettings", "main", "run_soak"]

Outcome = gateway_pb2.PlatformOutcome
ANSWERED = (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
"""Outcomes of a platform that applied a release (it found bindings to release, or none)."""
MAYBE_COMMITTED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""A call that failed so may have been carried out: sent again with the same request."""
NEW_SESSION = frozenset({"NO_SESSION", "TOO_MANY_RELEASES"})
"""Holder-channel refusals that only mean: verify the holder again."""
START_TIMEOUT = 120.0
"""Seconds each process has to answer health checks: a dozen Python processes starting at once
on a busy 2-core machine have taken more than 20."""
AUDIT_CHECKPOINT_INTERVAL = 2.0
"""Seconds between the gateway's audit checkpoints (and the carriers' fetches of them)."""
SHED = frozenset({"TOO_MANY_CODES", "TOO_MANY_VERIFICATIONS", "TOO_MANY_SESSIONS"})
"""Holder-channel refusals that ask to wait (the carrier's own limits), never a fault."""


@dataclass(frozen=True)
class SoakSettings:
    """What the soak runs, and how fast."""

    duration: float = 30.0
    """Seconds of load; the operator's steps are spread over it (each takes what it takes)."""
    database_url: str = ""
    """The gateway's database; empty: SQLite in the gateway's state directory."""
    carriers: tuple[str, ...] = CARRIERS
    platforms: tuple[str, ...] = PLATFORMS
    poll_platforms: tuple[str, ...] = ("xiaomi",)
    """Platforms that take events by PullEvents (the others by push)."""
    rotated_carrier: str = "cmcc"
    refresh_interval: float = 5.0
    """Every platform's ``trust_refresh``: the bound on revocation propagation."""
    middle_root_lifetime: float = 15.0
    """Seconds root v2 is valid for; root v3 follows at once, and the soak waits past it."""
    release_pause: float = 0.5
    """Seconds each carrier's release load waits between two releases."""
    event_pause: float = 0.5
    """Seconds each carrier's event load waits between two batches."""
    drain_timeout: float = 90.0


@dataclass
class SoakReport:
    """What the soak saw. ``problems`` lists every expectation that failed (empty: it passed)."""

    releases_accepted: int = 0
    releases_applied: dict[str, int] = field(default_factory=dict)
    events_accepted: int = 0
    events_applied: dict[str, int] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    """Load calls refused, by ErrorInfo reason (or status code): never accepted, so not lost."""
    waits: Counter[str] = field(default_factory=Counter)
    """Refusals the load waited out and tried again (never a fault): the carriers' holder limits,
    a gateway that did not hold a new key yet."""
    revocation_seconds: dict[str, float] = field(default_factory=dict)
    """Member -> seconds from the revoking bundle's writing until it refused the key."""
    steps: list[tuple[float, str]] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        applied_r = min(self.releases_applied.values(), default=0)
        applied_e = min(self.events_applied.values(), default=0)
        worst = max(self.revocation_seconds.values(), default=float("nan"))
        out = [f"{t:7.1f} s  {what}" for t, what in self.steps]
        out += [
            f"releases accepted {self.releases_accepted}, applied on each platform "
            f"{applied_r} (of {len(self.releases_applied)} platforms)",
            f"events accepted {self.events_accepted}, applied on each platform {applied_e}",
            f"revoked key refused by every member within {worst:.2f} s "
            + "("
            + ", ".join(f"{m} {s:.2f}" for m, s in sorted(self.revocation_seconds.items()))
            + ")",
            "load refusals: "
            + (", ".join(f"{r} {n}" for r, n in self.refusals.most_common()) or "none")
            + "; waited out: "
            + (", ".join(f"{r} {n}" for r, n in self.waits.most_common()) or "none"),
            f"restarted: {', '.join(self.restarted) or 'none'}; took {self.elapsed:.0f} s",
        ]
        out += [f"PROBLEM: {p}" for p in self.problems] or ["every expectation held"]
        return out


def _reason(err: grpc.aio.AioRpcError) -> str:
    info = rpc_error_info(err)
    return info.reason if info is not None else err.code().name


class Load:
    """Releases through each carrier's holder channel and event batches as each carrier's
    operator, without pause, recording what the gateway accepted."""

    def __init__(self, layout: FederationLayout, world: Scenario, settings: SoakSettings) -> None:
        self.layout = layout
        self.world = world
        self.settings = settings
        self.operations: dict[str, str] = {}
        """Accepted release operation name -> carrier."""
        self.ambiguous_releases = 0
        """Releases whose fate the load never learnt (a call that failed so, again and again)."""
        self.events: dict[bytes, str] = {}
        """Accepted event id -> carrier."""
        self.ambiguous_events: set[bytes] = set()
        self.refusals: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        """Refusals the load waited out and tried again: the carriers' own holder limits
        (:data:`SHED`), and a gateway not yet holding a new key."""
        self.signers = {c: pki.load_carrier_signer(layout.pki_dir, c) for c in settings.carriers}
        self.held = {c: asyncio.Lock() for c in settings.carriers}
        """Held by a carrier's loads around each call; the soak takes it to stop them a while."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for c in self.settings.carriers:
            self._tasks.append(asyncio.create_task(self._releases(c), name=f"releases-{c}"))
            self._tasks.append(asyncio.create_task(self._events(c), name=f"events-{c}"))

    async def stop(self) -> None:
        """Let each load finish the call it is making, then end."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @contextlib.asynccontextmanager
    async def holding(self, carrier: str) -> AsyncIterator[None]:
        """No load of ``carrier`` runs inside (its call in flight ends first)."""
        async with self.held[carrier]:
            yield

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _numbers(self, carrier: str) -> tuple[list[str], list[str]]:
        """(numbers the carrier serves with a holder, numbers it serves without one)."""
        now = datetime.now(UTC)
        served = self.world.histories_served_by(carrier, now)
        held = sorted(h.number for h in served if h.current_tenure(now) is not None)
        free = sorted(h.number for h in served if h.current_tenure(now) is None)
        return held, free

    async def _verify(self, stub: holder_pb2_grpc.HolderServiceAsyncStub, number: str) -> str:
        now = datetime.now(UTC)
        history = self.world.histories[number]
        tenure = history.current_tenure(now)
        carrier = history.carrier_at(now)
        assert tenure is not None and carrier is not None
        holder = self.world.holders[tenure.holder_id]
        start = await stub.StartVerification(
            holder_pb2.StartVerificationRequest(
                number=number, name=holder.name, id_number=holder.id_number
            ),
            timeout=10,
        )
        code = await asyncio.to_thread(read_sms_code, self.layout, carrier, number)
        session = await stub.ConfirmVerification(
            holder_pb2.ConfirmVerificationRequest(verification_id=start.verification_id, code=code),
            timeout=10,
        )
        return str(session.session_token)

    async def _releases(self, carrier: str) -> None:
        held, _ = self._numbers(carrier)
        turn = 0
        token: str | None = None
        endpoint = self.layout.holder_endpoints[carrier]
        while not self._stop.is_set():
            async with self.held[carrier], grpc.aio.insecure_channel(endpoint) as channel:
                stub = holder_pb2_grpc.HolderServiceStub(channel)
                try:
                    if token is None:
                        token = await self._verify(stub, held[turn % len(held)])
                        turn += 1
                    token = await self._release(stub, token, carrier)
                except grpc.aio.AioRpcError as err:
                    token = None
                    if _reason(err) in SHED:
                        self.waits[_reason(err)] += 1
                    elif err.code() not in MAYBE_COMMITTED:  # a verification commits nothing
                        self.refusals[f"holder {_reason(err)}"] += 1
            await self._pause(self.settings.release_pause)

    async def _release(
        self, stub: holder_pb2_grpc.HolderServiceAsyncStub, token: str, carrier: str
    ) -> str | None:
        """One prior-holder release, sent again with the same request_id while its fate is
        unknown; returns the session token to go on with (None: verify again)."""
        request = holder_pb2.ReleaseHolderBindingsRequest(
            session_token=token,
            scope=holder_pb2.BINDING_SCOPE_PRIOR,
            request_id=uuid.uuid4().hex,
        )
        for _ in range(5):
            try:
                op = await stub.ReleaseHolderBindings(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                if err.code() in MAYBE_COMMITTED:
                    await asyncio.sleep(0.5)
                    continue
                if _reason(err) in NEW_SESSION:
                    return None
                self.refusals[f"release {_reason(err)}"] += 1
                return token
            self.operations[op.name] = carrier
            return token
        self.ambiguous_releases += 1
        return token

    async def _events(self, carrier: str) -> None:
        held, free = self._numbers(carrier)
        turn = 0
        peer = PeerId(Role.CARRIER, carrier)
        async with pki.secure_channel(self.layout.gateway_target, self.layout.pki_dir, peer) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            while not self._stop.is_set():
                async with self.held[carrier]:
                    now = datetime.now(UTC)
                    batch = [
                        LifecycleEvent.new(free[(turn + i) % len(free)], EventKind.DEACTIVATED, now)
                        for i in range(2)
                    ]
                    number = held[turn % len(held)]
                    x = self.world.histories[number].tenure_start(now)
                    batch.append(
                        LifecycleEvent.new(number, EventKind.REASSIGNED, x, tenure_start=x)
                    )
                    turn += 1
                    await self._publish(stub, carrier, batch)
                await self._pause(self.settings.event_pause)

    async def _publish(
        self,
        stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
        carrier: str,
        batch: list[LifecycleEvent],
    ) -> None:
        envelope = sign_event_batch(carrier, batch, self.signers[carrier], now=datetime.now(UTC))
        request = gateway_pb2.PublishEventsRequest(batch=envelope.to_proto())
        unknown = 0
        stale_until = time.monotonic() + 30.0
        while unknown < 5:
            try:
                await stub.PublishEvents(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                if err.code() in MAYBE_COMMITTED:
                    unknown += 1
                    await asyncio.sleep(0.5)
                    continue
                if _reason(err) in STALE_VERIFIER_REASONS and time.monotonic() < stale_until:
                    # The gateway may not hold the bundle with the new key yet: a sender
                    # retries meanwhile (DESIGN.md, flow 6).
                    self.waits[f"publish {_reason(err)}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                self.refusals[f"publish {_reason(err)}"] += 1
                return
            self.events.update((e.event_id, carrier) for e in batch)
            return
        self.ambiguous_events.update(e.event_id for e in batch)


def _root_version(envelope: claim_pb2.Envelope | Envelope) -> int:
    return int(trust_pb2.RootMetadata.FromString(envelope.payload).version)


def _bundle_version(envelope: claim_pb2.Envelope | Envelope) -> int:
    return int(trust_pb2.TrustBundle.FromString(envelope.payload).version)


def _root_expiry(envelope: claim_pb2.Envelope) -> datetime:
    return trust_pb2.RootMetadata.FromString(envelope.payload).expires_at.ToDatetime(tzinfo=UTC)


def trust_dir_versions(trust_dir: Path) -> tuple[int, int]:
    """(newest root version, bundle version) in the operator's trust directory."""
    return _root_version(read_roots(trust_dir)[-1]), _bundle_version(read_bundle(trust_dir))


@dataclass(frozen=True)
class PlatformRecord:
    """What one platform's own store says it applied."""

    releases: int
    events: list[bytes]
    """Ids of the events it applied, but port halves (the carriers' own, synced at start)."""
    dead_letters: int


def read_platform(db: Path) -> PlatformRecord:
    """Read a running platform's SQLite store (WAL: readers never block its writer)."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as c:
        releases = c.execute("SELECT count(*) FROM applied_releases").fetchone()[0]
        events = [
            bytes(r[0])
            for r in c.execute(
                "SELECT event_id FROM applied_events WHERE kind != 'PORTED' ORDER BY \"order\""
            )
        ]
        dead = c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return PlatformRecord(int(releases), events, int(dead))


async def numfed_command(*args: str) -> tuple[int, str]:
    """Run ``numfed ARGS`` as its own process, as an operator would: (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Soak:
    def __init__(
        self, fed: FederationProcesses, settings: SoakSettings, say: Callable[[str], None]
    ) -> None:
        self.fed = fed
        self.layout = fed.layout
        self.settings = settings
        self.say = say
        self.world = demo_scenario()
        self.load = Load(self.layout, self.world, settings)
        self.report = SoakReport()
        self.started = time.monotonic()
        self.pids = {name: p.pid for name, p in fed.processes.items()}
        self.trust_args = (str(self.layout.trust_dir), "--pki", str(self.layout.pki_dir))
        self.old_key: SigningKey | None = None
        self.last_change = datetime.now(UTC)
        """When the last trust file was written."""

    def step(self, what: str) -> None:
        self.report.steps.append((time.monotonic() - self.started, what))
        self.say(f"{time.monotonic() - self.started:7.1f} s  {what}")

    def problem(self, what: str) -> None:
        self.report.problems.append(what)
        self.say(f"PROBLEM: {what}")

    async def at(self, fraction: float) -> None:
        """Wait until ``fraction`` of the load's duration has passed."""
        left = self.started + fraction * self.settings.duration - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    async def operator(self, *args: str) -> None:
        code, out = await numfed_command(*args)
        if code != 0:
            raise AssertionError(f"numfed {' '.join(args)} exited {code}: {out}")

    async def until(self, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ``check`` (state in other processes: nothing to await) until it holds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g} s: {what}")
            await asyncio.sleep(0.1)

    # What each member holds -------------------------------------------------------------

    async def gateway_versions(self) -> tuple[int, int] | None:
        """The versions the gateway says it serves (its hint, on every answer to a call that
        states no versions of its own, as this one)."""
        carrier = PeerId(Role.CARRIER, self.settings.carriers[-1])
        async with pki.secure_channel(
            self.layout.gateway_target, self.layout.pki_dir, carrier
        ) as ch:
            call = gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(), timeout=10
            )
            await call
            for key, value in await call.initial_metadata() or ():
                if key == "numfed-trust-version":
                    return parse_versions(value)
        return None

    def platform_versions(self, platform: str) -> tuple[int, int] | None:
        """The versions the platform persisted (state_dir/trust/): what it holds. It keeps no
        root.pb while it holds only the pinned root v1."""
        trust = self.layout.root / "state" / f"platform-{platform}" / "trust"
        try:
            bundle = claim_pb2.Envelope.FromString((trust / "bundle.pb").read_bytes())
        except FileNotFoundError:
            return None
        try:
            root = _root_version(claim_pb2.Envelope.FromString((trust / "root.pb").read_bytes()))
        except FileNotFoundError:
            root = 1
        return root, _bundle_version(bundle)

    def platform_db(self, platform: str) -> Path:
        return self.layout.root / "state" / f"platform-{platform}" / "platform.db"

    async def everyone_holds(self, versions: tuple[int, int], timeout: float = 30.0) -> None:
        """The gateway serves ``versions`` (it reloaded its trust files) and every platform
        holds them (it refreshed from a hint on the load's traffic)."""
        deadline = time.monotonic() + timeout
        while await self.gateway_versions() != versions:
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not take trust {versions}")
            await asyncio.sleep(0.1)
        for p in self.settings.platforms:
            await self.until(
                f"platform {p} holds trust {versions}",
                lambda p=p: self.platform_versions(p) == versions,  # type: ignore[misc]
                max(deadline - time.monotonic(), 1.0),
            )

    # The operator's steps ---------------------------------------------------------------

    async def rotate_carrier_key(self) -> None:
        carrier = self.settings.rotated_carrier
        self.old_key = pki.load_carrier_signer(self.layout.pki_dir, carrier)
        self.step(f"a. numfed trust publish --rotate {carrier}")
        await self.operator("trust", "publish", *self.trust_args, "--rotate", carrier)
        async with self.load.holding(carrier):
            # The carrier's operator signs event batches with the new key at once, before the
            # gateway or any platform may hold it: they refresh; the sender retries meanwhile.
            self.load.signers[carrier] = pki.load_carrier_signer(self.layout.pki_dir, carrier)
        versions = trust_dir_versions(self.layout.trust_dir)
        await self.everyone_holds(versions)
        self.step(f"   gateway and every platform hold trust {versions[0]}/{versions[1]}")
        name = f"carrier-{carrier}"
        async with self.load.holding(carrier):
            await asyncio.to_thread(self.fed.restart, name)
            await wait_serving(
                self.layout.carrier_endpoints[carrier],
                self.layout.pki_dir,
                PeerId(Role.CARRIER, carrier),
                "numfed.v1.CarrierService",
                timeout=START_TIMEOUT,
            )
        self.report.restarted.append(name)
        self.step(f"   {name} restarted (reads its signing key at start): signs with the new key")

    async def rotate_root_twice(self) -> None:
        lifetime = f"{max(int(self.settings.middle_root_lifetime), 1)}s"
        self.step(f"b. numfed trust rotate-root --expires {lifetime} (root v2), then again (v3)")
        await self.operator("trust", "rotate-root", *self.trust_args, "--expires", lifetime)
        await self.operator("trust", "rotate-root", *self.trust_args)
        versions = trust_dir_versions(self.layout.trust_dir)
        if versions[0] != 3:
            self.problem(f"the trust directory holds root v{versions[0]}, not v3")
        await self.everyone_holds(versions)
        self.step(f"   gateway and every platform hold trust {versions[0]}/{versions[1]}")
        expiry = _root_expiry(read_roots(self.layout.trust_dir)[1])
        wait = (expiry - datetime.now(UTC)).total_seconds() + 1.0
        if wait > 0:
            await asyncio.sleep(wait)  # a moment on the clock, not an event in any process
        self.step("   root v2 has expired")

    async def revoke_old_key(self) -> None:
        carrier = self.settings.rotated_carrier
        old = self.old_key
        assert old is not None, "the key rotation comes first"
        # Everything the old key signed reaches every platform first: revocation refuses it.
        await self.settled(list(self.load.operations), set(self.load.events))
        probe = self.probe_claim(carrier, old)
        for p in self.settings.platforms:
            if (reason := await self.platform_judges(p, probe)) != "OK":
                self.problem(f"before revocation platform {p} refused the old key: {reason}")
        if (reason := await self.gateway_judges(probe)) != "OK":
            self.problem(f"before revocation the gateway refused the old key: {reason}")
        self.step(f"c. numfed trust publish --revoke {old.key_id[:16]}")
        await self.operator("trust", "publish", *self.trust_args, "--revoke", old.key_id)
        written = (self.layout.trust_dir / "bundle.pb").stat().st_mtime
        self.last_change = datetime.fromtimestamp(written, UTC)
        versions = trust_dir_versions(self.layout.trust_dir)
        seconds = self.report.revocation_seconds
        pending = set(self.settings.platforms) | {"gateway"}
        deadline = time.monotonic() + 4 * self.settings.refresh_interval + 30
        while pending and time.monotonic() < deadline:
            for member in sorted(pending):
                if member == "gateway":
                    refused = await self.gateway_versions() == versions
                else:
                    refused = await self.platform_judges(member, probe) == "KEY_REVOKED"
                if refused:
                    seconds[member] = time.time() - written
                    pending.discard(member)
            await asyncio.sleep(0.05)
        for member in sorted(pending):
            self.problem(f"{member} did not refuse the revoked key")
        late = {m: s for m, s in seconds.items() if s > self.settings.refresh_interval}
        if late:
            self.problem(
                f"revocation took longer than the refresh interval "
                f"({self.settings.refresh_interval:g} s): {late}"
            )
        if (reason := await self.gateway_judges(probe)) != "KEY_REVOKED":
            self.problem(f"the gateway judged a claim of the revoked key: {reason}")
        worst = max(seconds.values(), default=float("nan"))
        self.step(f"   the revoked key is refused everywhere, within {worst:.2f} s")

    # Claims signed with a given key, judged by one member --------------------------------

    def probe_claim(self, carrier: str, key: SigningKey) -> Envelope:
        now = datetime.now(UTC)
        number = self.load._numbers(carrier)[0][0]
        claim = TenureClaim.new(
            number=number,
            carrier_id=carrier,
            tenure_start=self.world.histories[number].tenure_start(now),
            purpose=Purpose.QUERY_PRIOR,
            now=now,
            lifetime=timedelta(minutes=30),
        )
        return sign_claim(claim, key)

    async def platform_judges(self, platform: str, claim: Envelope) -> str:
        """ "OK", or the reason the platform refuses ``claim``: asked as the gateway would,
        but with no version hint, so the platform judges with what it holds."""
        item = platform_pb2.QueryItem(item_id="probe", claim=claim.to_proto())
        async with pki.secure_channel(
            self.layout.platform_endpoints[platform],
            self.layout.pki_dir,
            pki.GATEWAY,
            server=PeerId(Role.PLATFORM, platform),
        ) as ch:
            reply = await platform_pb2_grpc.PlatformServiceStub(ch).BatchQueryBindings(
                platform_pb2.BatchQueryBindingsRequest(items=[item]), timeout=10
            )
        status = reply.results[0].status
        if status.code == 0:
            return "OK"
        info = error_info(status)
        return info.reason if info is not None else f"code {status.code}"

    async def gateway_judges(self, claim: Envelope) -> str:
        carrier = PeerId(Role.CARRIER, self.settings.rotated_carrier)
        async with pki.secure_channel(
            self.layout.gateway_target, self.layout.pki_dir, carrier
        ) as ch:
            try:
                await gateway_pb2_grpc.GatewayServiceStub(ch).QueryBindings(
                    gateway_pb2.QueryBindingsRequest(claim=claim.to_proto()), timeout=10
                )
            except grpc.aio.AioRpcError as err:
                return _reason(err)
        return "OK"

    # Drain and check ---------------------------------------------------------------------

    async def operations(self, names: Sequence[str]) -> dict[str, operations_pb2.Operation]:
        """Each operation as the gateway has it, asked by the carrier that started it."""
        out: dict[str, operations_pb2.Operation] = {}
        by_carrier: dict[str, list[str]] = {}
        for name in names:
            by_carrier.setdefault(self.load.operations[name], []).append(name)
        for carrier, mine in by_carrier.items():
            peer = PeerId(Role.CARRIER, carrier)
            async with pki.secure_channel(
                self.layout.gateway_target, self.layout.pki_dir, peer
            ) as ch:
                stub = gateway_pb2_grpc.GatewayServiceStub(ch)
                for name in mine:
                    out[name] = await stub.GetOperation(
                        gateway_pb2.GetOperationRequest(name=name), timeout=10
                    )
        return out

    async def settled(
        self, names: Sequence[str], events: set[bytes], timeout: float | None = None
    ) -> dict[str, operations_pb2.Operation]:
        """Wait until the operations ``names`` are done and every platform applied ``events``;
        returns the operations."""
        deadline = time.monotonic() + (timeout or self.settings.drain_timeout)
        done: dict[str, operations_pb2.Operation] = {}
        while True:
            left = [n for n in names if n not in done]
            done |= {n: op for n, op in (await self.operations(left)).items() if op.done}
            behind = [
                p
                for p in self.settings.platforms
                if not events <= set(read_platform(self.platform_db(p)).events)
            ]
            if len(done) == len(names) and not behind:
                return done
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not drained: {len(names) - len(done)} operations not done; "
                    f"platforms missing events: {behind}"
                )
            await asyncio.sleep(0.2)

    def checkpoint_issued(self, member: str) -> datetime | None:
        """When the newest audit checkpoint ``member`` ("platform-<id>", "carrier-<id>") keeps
        was issued: it fetched it with the trust bundle and verified it with the bundle's audit
        keys."""
        pinned = Envelope.from_proto(read_roots(self.layout.trust_dir)[0])
        role, _, member_id = member.partition("-")
        keeper = CheckpointKeeper(
            self.layout.root / "state" / member / CHECKPOINT_FILE,
            origin=audit_origin(pinned),
            holder=PeerId(Role(role), member_id).uri,
        )
        latest = keeper.latest
        return latest.issued_at if latest is not None else None

    async def checkpoints_kept(self) -> None:
        """Every member keeps the gateway's audit checkpoints through the trust changes: each
        holds one issued after the last change (verified with the audit keys of the newest
        bundle)."""
        members = [f"platform-{p}" for p in self.settings.platforms]
        members += [f"carrier-{c}" for c in self.settings.carriers]
        deadline = time.monotonic() + 3 * AUDIT_CHECKPOINT_INTERVAL + self.settings.refresh_interval
        for member in members:
            while (issued := self.checkpoint_issued(member)) is None or (
                issued <= self.last_change
            ):
                if time.monotonic() > deadline:
                    self.problem(
                        f"{member} keeps no audit checkpoint issued after the last trust change "
                        f"(its newest: {issued})"
                    )
                    break
                await asyncio.sleep(0.2)

    async def check(self) -> None:
        load, report = self.load, self.report
        report.releases_accepted = len(load.operations)
        report.events_accepted = len(load.events)
        report.refusals = load.refusals
        report.waits = load.waits
        ops = await self.settled(list(load.operations), set(load.events))
        unanswered = 0
        for op in ops.values():
            response = gateway_pb2.ReleaseResponse()
            op.response.Unpack(response)
            got = {r.platform_id for r in response.results if r.outcome in ANSWERED}
            unanswered += len(set(self.settings.platforms) - got)
        if unanswered:
            self.problem(f"{unanswered} (release, platform) pairs not applied")
        accepted = set(load.events)
        for p in self.settings.platforms:
            record = read_platform(self.platform_db(p))
            report.releases_applied[p] = record.releases
            report.events_applied[p] = len(record.events)
            extra = record.releases - len(load.operations)
            if not 0 <= extra <= load.ambiguous_releases:
                self.problem(
                    f"platform {p} applied {record.releases} releases; "
                    f"{len(load.operations)} were accepted"
                )
            applied = set(record.events)
            if len(applied) != len(record.events):
                self.problem(f"platform {p} applied an event twice")
            for carrier in self.settings.carriers:
                published = [e for e, c in load.events.items() if c == carrier]
                mine = set(published)
                if [e for e in record.events if e in mine] != published:
                    self.problem(f"platform {p} applied {carrier}'s events out of order")
            if accepted - applied:
                self.problem(f"platform {p} lost {len(accepted - applied)} events")
            if applied - accepted - load.ambiguous_events:
                self.problem(f"platform {p} applied {len(applied - accepted)} unknown events")
            if record.dead_letters:
                self.problem(f"platform {p} set {record.dead_letters} event batches aside")
        for name, proc in self.fed.processes.items():
            if proc.poll() is not None:
                self.problem(f"{name} exited ({proc.returncode})")
            elif proc.pid != self.pids[name] and name not in report.restarted:
                self.problem(f"{name} restarted")
        for reason, n in load.refusals.items():
            if "RESOURCE_EXHAUSTED" not in reason:
                self.problem(f"load refused {n} times: {reason}")
        if load.ambiguous_releases or load.ambiguous_events:
            self.problem(
                f"load never learnt the fate of {load.ambiguous_releases} releases and "
                f"{len(load.ambiguous_events)} events"
            )
        await self.checkpoints_kept()
        code, out = await numfed_command("trust", "show", str(self.layout.trust_dir))
        if code != 0 or "verifies" not in out:
            self.problem(f"numfed trust show: {out[-400:]}")

    async def run(self) -> SoakReport:
        initial = trust_dir_versions(self.layout.trust_dir)
        await self.everyone_holds(initial)
        self.step(
            f"federation up: {len(self.fed.processes)} processes, trust {initial[0]}/{initial[1]}"
        )
        self.load.start()
        try:
            await self.at(0.15)
            await self.rotate_carrier_key()
            await self.at(0.35)
            await self.rotate_root_twice()
            await self.at(0.6)
            await self.revoke_old_key()
            await self.at(1.0)
        finally:
            await self.load.stop()
        self.step("load stopped; draining")
        await self.check()
        self.report.elapsed = time.monotonic() - self.started
        self.step("checked")
        return self.report


async def run_soak(
    root: Path, settings: SoakSettings, *, say: Callable[[str], None] = lambda _: None
) -> SoakReport:
    """Lay a federation out in ``root``, start it as processes, soak it, stop it."""
    knobs: dict[str, dict[str, object]] = {
        p: {"trust_refresh": settings.refresh_interval} for p in settings.platforms
    }
    for p in settings.poll_platforms:
        if p in knobs:
            knobs[p]["events"] = "poll"
    fed = await spawn_federation(
        root,
        carriers=settings.carriers,
        platforms=settings.platforms,
        database_url=settings.database_url,
        platform_knobs=knobs,
        limits={"audit_checkpoint_interval": AUDIT_CHECKPOINT_INTERVAL},
        ready_timeout=START_TIMEOUT,
    )
    try:
        for c in settings.carriers:
            await wait_serving(
                fed.layout.carrier_endpoints[c],
                fed.layout.pki_dir,
                PeerId(Role.CARRIER, c),
                "numfed.v1.CarrierService",
                timeout=START_TIMEOUT,
            )
        return await Soak(fed, settings, say).run()
    finally:
        await asyncio.to_thread(fed.stop_all)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m numfed.testing.soak",
        description="The trust soak: a federation of processes under load while a carrier key "
        "rotates, the root rotates twice, a key is revoked; then every release and event is "
        "checked.",
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--database-url", default="", help="the gateway's database (SQLite)")
    parser.add_argument(
        "--postgres", action="store_true", help="the gateway on a throwaway PostgreSQL"
    )
    parser.add_argument("--workdir", type=Path, help="lay the federation out here (kept)")
    parser.add_argument("--refresh-interval", type=float, default=10.0, help="seconds (10)")
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds each carrier's loads wait between calls"
    )
    args = parser.parse_args(argv)

    async def soak(root: Path, url: str) -> SoakReport:
        settings = SoakSettings(
            duration=args.duration,
            database_url=url,
            refresh_interval=args.refresh_interval,
            middle_root_lifetime=30.0,
            release_pause=args.pause,
            event_pause=args.pause,
        )
        return await run_soak(root, settings, say=lambda line: print(line, flush=True))

    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            root = args.workdir
        else:
            import tempfile

            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="numfed-soak-")))
        url = args.database_url
        if args.postgres:
            from numfed.pgtemp import TempPostgres

            pg = stack.enter_context(TempPostgres(root / "postgres"))
            url = pg.create_database("soak")
        report = asyncio.run(soak(root / "fed", url))
    print()
    for line in report.lines():
        print(line)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
