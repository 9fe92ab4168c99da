"""The platform kit's machinery: play the gateway and the carriers against one platform.

The kit presents the gateway's mTLS identity, serves the platform its trust through a
:class:`~numfed.conformance.gateway.TrustSimulator`, signs claims and event batches with carrier
keys it made for this run, and puts test accounts into the platform through its test-only
``PlatformConformanceService``. Every check seeds its own fresh numbers, so checks do not depend
on each other's data; a check that changes the platform's trust starts from its pin and leaves it
back at the kit's base bundle (:meth:`PlatformKit.fresh_trust`), so no check sees another's trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE, Purpose, TenureClaim, sign_claim
from numfed.conformance.gateway import (
    TEST_CARRIER,
    TestKeys,
    TrustSimulator,
    start_trust_simulator,
)
from numfed.conformance.report import Check, CheckFailed, Suite
from numfed.envelope import Envelope, SigningKey, sign
from numfed.events import LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES, error_info, rpc_error_info
from numfed.timeutil import to_timestamp
from numfed.trust import VERSION_METADATA_KEY, TrustBundle, format_versions
from numfed.v1 import (
    binding_pb2,
    claim_pb2,
    conformance_pb2,
    conformance_pb2_grpc,
    events_pb2,
    platform_pb2,
    platform_pb2_grpc,
)

__all__ = [
    "CALL_TIMEOUT",
    "OK",
    "PLATFORM_SERVICE",
    "PLATFORM_SUITE",
    "PlatformKit",
    "PlatformTarget",
    "Seeded",
    "bad_signature",
    "count",
    "expect",
    "now",
    "reason",
    "status_code",
    "tampered",
]

PLATFORM_SUITE: Suite[PlatformKit] = Suite("numfed conformance platform", "platform")
PLATFORM_SERVICE = "numfed.v1.PlatformService"
CALL_TIMEOUT = 10.0
SETUP_PATIENCE = 15.0
"""How long the kit waits for the platform to reach the kit's gateway at the start."""
STATE_PATIENCE = 5.0
"""How long the kit waits for a platform to show a change it makes on its own (a refresh a
version hint started, its health following its trust)."""
OK = "OK"


@dataclass(frozen=True)
class PlatformTarget:
    """Where the platform listens, who it is, the PKI that issued its certificate, and where
    the kit serves GatewayService (the platform's configured ``gateway``)."""

    target: str
    platform_id: str
    pki_dir: Path
    listen: str = "127.0.0.1:7000"
    dump_dir: Path | None = None
    """Where the kit writes every trust answer it serves (None: nowhere)."""


@dataclass
class Seeded:
    """Accounts bound to one number: before X, at exactly X, after X."""

    number: str
    x: datetime
    accounts: dict[str, str] = field(default_factory=dict)
    """Role ("before", "at", "after") -> account id."""
    nicknames: list[str] = field(default_factory=list)


def now() -> datetime:
    return datetime.now(UTC)


def status_code(status: object) -> str:
    code = int(getattr(status, "code", 0))
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), f"CODE_{code}")


def reason(status: object) -> str:
    info = error_info(status)
    return info.reason if info is not None else "no ErrorInfo"


def tampered(envelope: claim_pb2.Envelope) -> claim_pb2.Envelope:
    """The same signature over a payload that says something else (X moved one day back)."""
    pb = claim_pb2.TenureClaim.FromString(envelope.payload)
    pb.tenure_start.seconds -= 86400
    out = claim_pb2.Envelope()
    out.CopyFrom(envelope)
    out.payload = pb.SerializeToString(deterministic=True)
    return out


def bad_signature(envelope: claim_pb2.Envelope) -> claim_pb2.Envelope:
    out = claim_pb2.Envelope()
    out.CopyFrom(envelope)
    sig = bytearray(out.signatures[0].sig)
    sig[0] ^= 0x01
    out.signatures[0].sig = bytes(sig)
    return out


def expect(status: object, code: str, what: str, *, reason_: str | None = None) -> None:
    """The per-item status must have ``code`` (and, when refused, one ErrorInfo of domain
    numfed.dev, whose reason is ``reason_`` if given)."""
    got = status_code(status)
    if got != code:
        detail = f" ({reason(status)})" if got != OK else ""
        raise CheckFailed(f"{what}: expected {code}, got {got}{detail}")
    if code == OK:
        return
    info = error_info(status)
    if info is None:
        raise CheckFailed(f"{what}: refused with {code} but without a google.rpc.ErrorInfo")
    if info.domain != "numfed.dev":
        raise CheckFailed(f"{what}: ErrorInfo domain {info.domain!r}, not 'numfed.dev'")
    if reason_ is not None and info.reason != reason_:
        raise CheckFailed(f"{what}: refused with {code} {info.reason}, not {reason_}")


def count(result: platform_pb2.QueryItemResult | platform_pb2.ReleaseItemResult) -> int:
    """How many bindings an answer counts: its summaries' counts (a summary with no count stands
    for one) and those it left out (``omitted_bindings``)."""
    found = result.bindings if isinstance(result, platform_pb2.QueryItemResult) else result.released
    return sum(max(b.count, 1) for b in found) + result.omitted_bindings


def _same_items(sent: list[str], got: list[str]) -> None:
    if sent != got:
        raise CheckFailed(f"results do not answer the items one by one in order: {got} for {sent}")


class PlatformKit:
    """One run against one platform: its channels, the kit's gateway, keys and test numbers."""

    def __init__(self, target: PlatformTarget) -> None:
        self.t = target
        self.keys = TestKeys.generate()
        self.setup_detail = ""
        self.setup_done = False
        self.setup_ok = False
        self.base: Envelope | None = None
        """The bundle every check starts from (version 1 under the pin, the doomed key
        trusted)."""
        self._sim: TrustSimulator | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._seq = int(datetime.now(UTC).timestamp() * 1000)
        self._release: tuple[Seeded, list[platform_pb2.ReleaseItemResult]] | None = None
        self.server = PeerId(Role.PLATFORM, target.platform_id)
        channel = self.channel(pki.GATEWAY, self.server)
        self.platform = platform_pb2_grpc.PlatformServiceStub(channel)
        self.conformance = conformance_pb2_grpc.PlatformConformanceServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def channel(self, peer: PeerId, server: PeerId | None) -> grpc.aio.Channel:
        """An mTLS channel to the platform as ``peer`` (closed with the kit)."""
        channel = pki.secure_channel(
            self.t.target,
            self.t.pki_dir,
            peer,
            server=server,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        self._channels.append(channel)
        return channel

    async def __aenter__(self) -> PlatformKit:
        try:
            self._sim = await start_trust_simulator(
                self.t.pki_dir, self.t.listen, dump_dir=self.t.dump_dir
            )
        except BaseException:
            await self.close()  # no __aexit__ follows a failed __aenter__
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the kit's channels and stop its trust simulator."""
        try:
            for channel in self._channels:
                await channel.close()
        finally:
            if self._sim is not None:
                await self._sim.stop()

    @property
    def sim(self) -> TrustSimulator:
        assert self._sim is not None, "use the kit as an async context manager"
        return self._sim

    async def prepare(self, check: Check) -> None:
        """Before each check: name it in the simulator's log and, past the gate, make sure the
        platform took the kit's base bundle (once per run)."""
        self.sim.check = check.name
        if check.gate:
            return
        if not self.setup_done:
            self.setup_done = True
            await self._setup()
        if not self.setup_ok:
            raise CheckFailed(self.setup_detail)

    # --- trust ----------------------------------------------------------------------------

    async def refresh(self, *, patience: float = 0.0) -> conformance_pb2.RefreshTrustBundleResponse:
        """Have the platform fetch its trust now; while it answers that it cannot reach the
        kit's gateway (UNAVAILABLE with an ErrorInfo, not a transport failure), ask again for
        up to ``patience`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                return await self.conformance.RefreshTrustBundle(
                    conformance_pb2.RefreshTrustBundleRequest(), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                if (
                    exc.code() is not grpc.StatusCode.UNAVAILABLE
                    or rpc_error_info(exc) is None
                    or loop.time() > deadline
                ):
                    raise
                await asyncio.sleep(0.2)

    async def trust_state(self) -> conformance_pb2.TrustState:
        answer = await self.conformance.GetTrustState(
            conformance_pb2.GetTrustStateRequest(), timeout=CALL_TIMEOUT
        )
        return answer.state

    def bundle(self, version: int, **kw: object) -> TrustBundle:
        """The kit's bundle at ``version`` (its keys and plan; ``kw`` go to
        :meth:`TestKeys.bundle`)."""
        return self.keys.bundle(version, now=now(), **kw)  # type: ignore[arg-type]

    async def take(self, envelope: Envelope | None = None, *, what: str) -> int:
        """Serve ``envelope`` (if given), have the platform refresh, and require that it
        accepted what is served; returns the bundle version it holds then."""
        if envelope is not None:
            self.sim.serve_envelope(envelope)
        answer = await self.refresh()
        if answer.status.code != 0:
            raise CheckFailed(
                f"{what} was refused: {status_code(answer.status)} {reason(answer.status)}"
            )
        return int(answer.bundle_version)

    async def _base_trust(self, *, patience: float = 0.0) -> None:
        """The platform back at its pin, holding the kit's base bundle v1."""
        await self.conformance.ResetTrust(conformance_pb2.ResetTrustRequest(), timeout=CALL_TIMEOUT)
        self.sim.reset()
        self.base = self.sim.publish_bundle(self.bundle(1))
        answer = await self.refresh(patience=patience)
        if answer.status.code != 0 or answer.bundle_version != 1:
            raise CheckFailed(
                f"after ResetTrust the platform refused the kit's bundle v1: "
                f"{status_code(answer.status)} {reason(answer.status)}"
            )

    async def _setup(self) -> None:
        """Empty the platform and have it take the kit's base bundle."""
        try:
            await self.conformance.ResetPlatformData(
                conformance_pb2.ResetPlatformDataRequest(), timeout=CALL_TIMEOUT
            )
            await self._base_trust(patience=SETUP_PATIENCE)
            self.setup_ok = True
            self.setup_detail = "accepted the kit's bundle v1 after ResetTrust"
        except CheckFailed as exc:
            self.setup_detail = str(exc)
        except grpc.aio.AioRpcError as exc:
            self.setup_detail = f"conformance service failed: {exc.code().name}: {exc.details()}"

    @contextlib.asynccontextmanager
    async def fresh_trust(self) -> AsyncIterator[None]:
        """Run a trust check from the platform's pin and the kit's base bundle, and leave the
        platform there again afterwards (isolation, as tuf-conformance's ``init`` per test)."""
        await self._base_trust()
        try:
            yield
        finally:
            served = self.sim.snapshot()
            try:
                await self._base_trust()
            except (grpc.aio.AioRpcError, CheckFailed):
                self.sim.restore(served)
                raise

    async def serving_status(self, service: str = PLATFORM_SERVICE) -> str:
        """The platform's health status for ``service`` now (its name)."""
        try:
            answer = await self.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} ({exc.details()})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def wait_serving(self, expected: str, *, what: str) -> None:
        """Watch the platform's health until it reports ``expected`` (at most STATE_PATIENCE)."""
        call = self.health.Watch(
            health_pb2.HealthCheckRequest(service=PLATFORM_SERVICE), timeout=STATE_PATIENCE
        )
        last = "no answer"
        try:
            async for answer in call:
                last = str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
                if last == expected:
                    return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                last = f"{exc.code().name} ({exc.details()})"
        finally:
            call.cancel()
        raise CheckFailed(f"{what}: health reports {last} for {PLATFORM_SERVICE}, not {expected}")

    # --- test data ------------------------------------------------------------------------

    def number(self, prefix: str = "+86139") -> str:
        """A fresh number nobody else uses in this run (TEST_CARRIER's range by default)."""
        return f"{prefix}{secrets.randbelow(10**8):08d}"

    async def seed(
        self,
        *,
        before: int = 1,
        at: bool = True,
        after: bool = True,
        kinds: Sequence[int] = (),
    ) -> Seeded:
        """Bind fresh accounts to a fresh number: ``before`` of them before X (of ``kinds``, in
        turn, if given), one at X, one after X."""
        x = (now() - timedelta(days=30)).replace(microsecond=0)
        s = Seeded(self.number(), x)
        times: list[tuple[str, datetime, int]] = [
            (
                f"before{i}" if i else "before",
                x - timedelta(days=400 + 30 * i),
                kinds[i % len(kinds)] if kinds else binding_pb2.BINDING_KIND_ACCOUNT_LOGIN,
            )
            for i in range(before)
        ]
        if at:
            times.append(("at", x, binding_pb2.BINDING_KIND_ACCOUNT_LOGIN))
        if after:
            times.append(("after", x + timedelta(days=1), binding_pb2.BINDING_KIND_ACCOUNT_LOGIN))
        accounts, bindings = [], []
        for role, bound_at, kind in times:
            account_id = f"acct-{role}-{secrets.token_hex(6)}"
            nickname = f"nick-{secrets.token_hex(5)}"
            s.accounts[role] = account_id
            s.nicknames.append(nickname)
            accounts.append(
                conformance_pb2.SeedAccount(
                    account_id=account_id,
                    nickname=nickname,
                    created_at=to_timestamp(bound_at - timedelta(days=1)),
                )
            )
            bindings.append(
                conformance_pb2.SeedBinding(
                    account_id=account_id,
                    number=s.number,
                    bound_at=to_timestamp(bound_at),
                    kind=kind,  # type: ignore[arg-type]
                )
            )
        await self.conformance.SeedAccounts(
            conformance_pb2.SeedAccountsRequest(accounts=accounts, bindings=bindings),
            timeout=CALL_TIMEOUT,
        )
        return s

    async def bind(self, number: str, bound_at: datetime) -> str:
        """One more account bound to ``number`` at ``bound_at``; returns its id."""
        account_id = f"acct-late-{secrets.token_hex(6)}"
        await self.conformance.SeedAccounts(
            conformance_pb2.SeedAccountsRequest(
                accounts=[
                    conformance_pb2.SeedAccount(
                        account_id=account_id,
                        nickname=f"nick-{secrets.token_hex(5)}",
                        created_at=to_timestamp(bound_at),
                    )
                ],
                bindings=[
                    conformance_pb2.SeedBinding(
                        account_id=account_id, number=number, bound_at=to_timestamp(bound_at)
                    )
                ],
            ),
            timeout=CALL_TIMEOUT,
        )
        return account_id

    async def read(self, *account_ids: str) -> dict[str, conformance_pb2.AccountState]:
        answer = await self.conformance.ReadAccounts(
            conformance_pb2.ReadAccountsRequest(account_ids=list(account_ids)),
            timeout=CALL_TIMEOUT,
        )
        return {a.account_id: a for a in answer.accounts}

    async def released(self, account_id: str, number: str) -> bool | None:
        """Whether the account's binding of ``number`` is released; None if the account is gone."""
        state = (await self.read(account_id))[account_id]
        if not state.exists:
            return None
        found = [b for b in state.bindings if b.number == number]
        if not found:
            raise CheckFailed(f"account {account_id} lost its binding record of the number")
        return all(b.released for b in found)

    async def unchanged(self, s: Seeded, what: str) -> None:
        """Every account of ``s`` exists, none of its bindings released or stale."""
        after = await self.read(*s.accounts.values())
        for role, account_id in s.accounts.items():
            state = after[account_id]
            if not state.exists or any(b.released or b.stale for b in state.bindings):
                raise CheckFailed(f"{what} changed the account bound {role} X")

    # --- claims ---------------------------------------------------------------------------

    def claim(
        self,
        number: str,
        purpose: Purpose,
        x: datetime,
        *,
        key: SigningKey | None = None,
        carrier_id: str = TEST_CARRIER,
        issued: datetime | None = None,
        lifetime: timedelta = timedelta(minutes=10),
        refs: Sequence[str] = (),
    ) -> claim_pb2.Envelope:
        """A claim naming ``carrier_id``, signed by ``key`` (the kit's good key of TEST_CARRIER
        unless given)."""
        claim = TenureClaim.new(
            number=number,
            carrier_id=carrier_id,
            tenure_start=x,
            purpose=purpose,
            now=issued or now(),
            lifetime=lifetime,
            binding_refs=tuple(refs),
        )
        return sign_claim(claim, key or self.keys.good).to_proto()

    def signed(
        self,
        pb: claim_pb2.TenureClaim,
        *,
        key: SigningKey | None = None,
        payload_type: str = TENURE_CLAIM_PAYLOAD_TYPE,
    ) -> claim_pb2.Envelope:
        """Any TenureClaim message, however malformed, properly signed (by the good key unless
        given)."""
        payload = pb.SerializeToString(deterministic=True)
        return sign(payload_type, payload, [key or self.keys.good]).to_proto()

    def malformed(self) -> claim_pb2.Envelope:
        """Properly signed bytes that are not a TenureClaim."""
        return sign(
            TENURE_CLAIM_PAYLOAD_TYPE, b"\xff\xff\x00not a claim", [self.keys.good]
        ).to_proto()

    async def query(
        self,
        *claims: claim_pb2.Envelope,
        together: bool = False,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> list[platform_pb2.QueryItemResult]:
        """Query each claim in a call of its own (so that one check's claims never share a batch
        whose handling another check is about), or all in one batch with ``together``."""
        if not together and len(claims) > 1:
            answers = await asyncio.gather(*(self.query(c, metadata=metadata) for c in claims))
            return [a[0] for a in answers]
        items = [
            platform_pb2.QueryItem(item_id=f"q{i}-{secrets.token_hex(3)}", claim=c)
            for i, c in enumerate(claims)
        ]
        answer = await self.platform.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(items=items),
            timeout=CALL_TIMEOUT,
            metadata=tuple(metadata) or None,
        )
        _same_items([i.item_id for i in items], [r.item_id for r in answer.results])
        return list(answer.results)

    async def release(
        self, *claims: claim_pb2.Envelope, together: bool = False
    ) -> list[platform_pb2.ReleaseItemResult]:
        """Release each claim in a call of its own, in order, or all in one batch with
        ``together``."""
        if not together and len(claims) > 1:
            return [(await self.release(c))[0] for c in claims]
        items = [
            platform_pb2.ReleaseItem(item_id=f"r{i}-{secrets.token_hex(3)}", claim=c)
            for i, c in enumerate(claims)
        ]
        answer = await self.platform.BatchReleaseBindings(
            platform_pb2.BatchReleaseBindingsRequest(items=items), timeout=CALL_TIMEOUT
        )
        _same_items([i.item_id for i in items], [r.item_id for r in answer.results])
        return list(answer.results)

    async def ensure_release(self) -> tuple[Seeded, list[platform_pb2.ReleaseItemResult]]:
        """One prior-holder release of a number bound before, at and after X (done once)."""
        if self._release is None:
            s = await self.seed(before=2)
            results = await self.release(self.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
            expect(results[0].status, OK, "a valid RELEASE_PRIOR claim")
            self._release = (s, results)
        return self._release

    def hint(self, root: int, bundle: int) -> tuple[tuple[str, str], ...]:
        """Call metadata saying the gateway holds ``root``/``bundle``, as the gateway's do."""
        return ((VERSION_METADATA_KEY, format_versions(root, bundle)),)

    # --- events ---------------------------------------------------------------------------

    def batch(
        self,
        *events: LifecycleEvent,
        key: SigningKey | None = None,
        carrier_id: str = TEST_CARRIER,
        issued: datetime | None = None,
    ) -> claim_pb2.Envelope:
        return sign_event_batch(
            carrier_id, events, key or self.keys.good, now=issued or now()
        ).to_proto()

    def next_seq(self, *, gap: int = 0) -> int:
        """The next seq, ``gap`` numbers after the last (seqs strictly increase along the log
        but need not be contiguous)."""
        self._seq += 1 + gap
        return self._seq

    async def deliver(
        self, *batches: tuple[int, claim_pb2.Envelope]
    ) -> platform_pb2.DeliverEventsResponse:
        return await self.platform.DeliverEvents(
            platform_pb2.DeliverEventsRequest(
                batches=[events_pb2.SequencedBatch(seq=s, batch=b) for s, b in batches]
            ),
            timeout=CALL_TIMEOUT,
        )

    async def applied_events(self) -> list[bytes]:
        answer = await self.conformance.ListAppliedEvents(
            conformance_pb2.ListAppliedEventsRequest(), timeout=CALL_TIMEOUT
        )
        return list(answer.event_ids)

    async def sms_login(self, number: str, account_id: str) -> bool:
        answer = await self.conformance.CheckSmsLogin(
            conformance_pb2.CheckSmsLoginRequest(number=number, account_id=account_id),
            timeout=CALL_TIMEOUT,
        )
        return answer.opens
