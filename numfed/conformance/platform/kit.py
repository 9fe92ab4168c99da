"""The platform kit: play the gateway and the carriers against a platform, rule by rule.

The kit presents the gateway's mTLS identity, serves the platform its trust bundle, signs claims
and event batches with carrier keys it made for this run, and puts test accounts into the
platform through its test-only ``PlatformConformanceService``. Every check seeds its own fresh
numbers, so checks do not depend on each other's data.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf.message import Message

from numfed import pki
from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE, Purpose, TenureClaim, sign_claim
from numfed.conformance.gateway import (
    OTHER_CARRIER,
    TEST_CARRIER,
    KitGateway,
    TestKeys,
    start_kit_gateway,
)
from numfed.conformance.report import CheckFailed, Report, Suite
from numfed.envelope import Envelope, SigningKey, sign
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES, error_info, rpc_error_info
from numfed.timeutil import to_timestamp
from numfed.v1 import (
    binding_pb2,
    claim_pb2,
    conformance_pb2,
    conformance_pb2_grpc,
    events_pb2,
    platform_pb2,
    platform_pb2_grpc,
)

__all__ = ["PLATFORM_SUITE", "PlatformKit", "PlatformTarget", "run_platform_kit"]

PLATFORM_SUITE: Suite[PlatformKit] = Suite("numfed conformance platform")
CALL_TIMEOUT = 10.0
SETUP_PATIENCE = 15.0
"""How long the kit waits for the platform to reach the kit's gateway at the start."""
OK = "OK"


@dataclass(frozen=True)
class PlatformTarget:
    """Where the platform listens, who it is, the PKI that issued its certificate, and where
    the kit serves GatewayService (the platform's configured ``gateway``)."""

    target: str
    platform_id: str
    pki_dir: Path
    listen: str = "127.0.0.1:7000"


@dataclass
class Seeded:
    """Three accounts bound to one number: before X, at exactly X, after X."""

    number: str
    x: datetime
    accounts: dict[str, str] = field(default_factory=dict)
    """Role ("before", "at", "after") -> account id."""
    nicknames: list[str] = field(default_factory=list)


def _code(status: object) -> str:
    code = int(getattr(status, "code", 0))
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), f"CODE_{code}")


def _reason(status: object) -> str:
    info = error_info(status)
    return info.reason if info is not None else "no ErrorInfo"


def _tampered(envelope: claim_pb2.Envelope) -> claim_pb2.Envelope:
    """The same signature over a payload that says something else (X moved one day back)."""
    pb = claim_pb2.TenureClaim.FromString(envelope.payload)
    pb.tenure_start.seconds -= 86400
    out = claim_pb2.Envelope()
    out.CopyFrom(envelope)
    out.payload = pb.SerializeToString(deterministic=True)
    return out


def _bad_signature(envelope: claim_pb2.Envelope) -> claim_pb2.Envelope:
    out = claim_pb2.Envelope()
    out.CopyFrom(envelope)
    sig = bytearray(out.signatures[0].sig)
    sig[0] ^= 0x01
    out.signatures[0].sig = bytes(sig)
    return out


class PlatformKit:
    """One run against one platform: its channels, the kit's gateway, keys and test numbers."""

    def __init__(self, target: PlatformTarget) -> None:
        self.t = target
        self.keys = TestKeys.generate()
        self.base_version = 0
        self.setup_detail = ""
        self.setup_ok = False
        self._gateway: KitGateway | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._base_envelope: Envelope | None = None
        self._revoked_envelope: Envelope | None = None
        self._seq = int(datetime.now(UTC).timestamp() * 1000)
        self._release: tuple[Seeded, list[platform_pb2.ReleaseItemResult]] | None = None
        server = PeerId(Role.PLATFORM, target.platform_id)
        self.platform = platform_pb2_grpc.PlatformServiceStub(self._channel(pki.GATEWAY, server))
        self.conformance = conformance_pb2_grpc.PlatformConformanceServiceStub(
            self._channel(pki.GATEWAY, server)
        )

    def _channel(self, peer: PeerId, server: PeerId) -> grpc.aio.Channel:
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
        self._gateway = await start_kit_gateway(self.t.pki_dir, self.t.listen)
        await self._setup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for channel in self._channels:
            await channel.close()
        if self._gateway is not None:
            await self._gateway.stop()

    @property
    def gateway(self) -> KitGateway:
        assert self._gateway is not None, "use the kit as an async context manager"
        return self._gateway

    # --- trust ----------------------------------------------------------------------------

    async def refresh(self, *, patience: float = 0.0) -> conformance_pb2.RefreshTrustBundleResponse:
        """Have the platform fetch the bundle now; while it answers that it cannot reach the
        kit's gateway (UNAVAILABLE with an ErrorInfo, not a transport failure), ask again for
        up to ``patience`` seconds."""
        deadline = asyncio.get_running_loop().time() + patience
        while True:
            try:
                return await self.conformance.RefreshTrustBundle(
                    conformance_pb2.RefreshTrustBundleRequest(), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                if (
                    exc.code() is not grpc.StatusCode.UNAVAILABLE
                    or rpc_error_info(exc) is None
                    or asyncio.get_running_loop().time() > deadline
                ):
                    raise
                await asyncio.sleep(0.5)

    async def _setup(self) -> None:
        """Empty the platform, then have it accept the kit's first bundle, one version past the
        one it holds. A bundle v1 tells which that is: a platform that holds none takes it, one
        that holds v1 or later keeps its own (an equal version is not taken again, and the
        version it holds survives restarts), so only the second bundle is surely the kit's."""
        try:
            await self.conformance.ResetPlatformData(
                conformance_pb2.ResetPlatformDataRequest(), timeout=CALL_TIMEOUT
            )
            self.gateway.publish(self.keys.bundle(1, now=_now(), revoke_doomed=False))
            answer = await self.refresh(patience=SETUP_PATIENCE)
            version = answer.bundle_version + 1
            bundle = self.keys.bundle(version, now=_now(), revoke_doomed=False)
            self._base_envelope = self.gateway.publish(bundle)
            answer = await self.refresh(patience=SETUP_PATIENCE)
            if answer.status.code == 0 and answer.bundle_version == version:
                self.base_version = version
                self.setup_ok = True
                self.setup_detail = f"accepted the kit's bundle v{version}"
                return
            self.setup_detail = (
                f"refused the kit's bundle: {_code(answer.status)} {_reason(answer.status)}"
            )
        except grpc.aio.AioRpcError as exc:
            self.setup_detail = f"conformance service failed: {exc.code().name}: {exc.details()}"

    async def ensure_revoked(self) -> None:
        """Publish the second bundle (the doomed key revoked) and have the platform take it."""
        if self._revoked_envelope is not None:
            return
        bundle = self.keys.bundle(self.base_version + 1, now=_now(), revoke_doomed=True)
        self._revoked_envelope = self.gateway.publish(bundle)
        answer = await self.refresh()
        if answer.status.code != 0 or answer.bundle_version != self.base_version + 1:
            raise CheckFailed(
                f"the next bundle (v{self.base_version + 1}) was not accepted: "
                f"{_code(answer.status)} {_reason(answer.status)}"
            )

    # --- test data ------------------------------------------------------------------------

    def number(self) -> str:
        """A fresh China Mobile number nobody else uses in this run."""
        return f"+86139{secrets.randbelow(10**8):08d}"

    async def seed(self, *, before: int = 1, at: bool = True, after: bool = True) -> Seeded:
        """Bind fresh accounts to a fresh number: ``before`` of them before X, one at X, one
        after X."""
        x = (_now() - timedelta(days=30)).replace(microsecond=0)
        s = Seeded(self.number(), x)
        times: list[tuple[str, datetime]] = [
            (f"before{i}" if i else "before", x - timedelta(days=400 + 30 * i))
            for i in range(before)
        ]
        if at:
            times.append(("at", x))
        if after:
            times.append(("after", x + timedelta(days=1)))
        accounts, bindings = [], []
        for role, bound_at in times:
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
                    account_id=account_id, number=s.number, bound_at=to_timestamp(bound_at)
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
    ) -> claim_pb2.Envelope:
        """A claim naming ``carrier_id``, signed by ``key`` (the kit's good key of TEST_CARRIER
        unless given)."""
        claim = TenureClaim.new(
            number=number,
            carrier_id=carrier_id,
            tenure_start=x,
            purpose=purpose,
            now=issued or _now(),
            lifetime=lifetime,
        )
        return sign_claim(claim, key or self.keys.good).to_proto()

    def malformed(self) -> claim_pb2.Envelope:
        """Properly signed bytes that are not a TenureClaim."""
        return sign(
            TENURE_CLAIM_PAYLOAD_TYPE, b"\xff\xff\x00not a claim", [self.keys.good]
        ).to_proto()

    async def query(self, *claims: claim_pb2.Envelope) -> list[platform_pb2.QueryItemResult]:
        items = [
            platform_pb2.QueryItem(item_id=f"q{i}-{secrets.token_hex(3)}", claim=c)
            for i, c in enumerate(claims)
        ]
        answer = await self.platform.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(items=items), timeout=CALL_TIMEOUT
        )
        _same_items([i.item_id for i in items], [r.item_id for r in answer.results])
        return list(answer.results)

    async def release(self, *claims: claim_pb2.Envelope) -> list[platform_pb2.ReleaseItemResult]:
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
            s = await self.seed()
            results = await self.release(self.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
            expect(results[0].status, OK, "a valid RELEASE_PRIOR claim")
            self._release = (s, results)
        return self._release

    # --- events ---------------------------------------------------------------------------

    def batch(
        self,
        *events: LifecycleEvent,
        key: SigningKey | None = None,
        carrier_id: str = TEST_CARRIER,
    ) -> claim_pb2.Envelope:
        return sign_event_batch(carrier_id, events, key or self.keys.good, now=_now()).to_proto()

    def next_seq(self) -> int:
        self._seq += 1
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


def _now() -> datetime:
    return datetime.now(UTC)


def _same_items(sent: list[str], got: list[str]) -> None:
    if sent != got:
        raise CheckFailed(f"results do not answer the items one by one in order: {got} for {sent}")


def expect(status: object, code: str, what: str, *, reason: str | None = None) -> None:
    """The per-item status must have ``code`` (and, when refused, one ErrorInfo, whose reason
    is ``reason`` if given)."""
    got = _code(status)
    if got != code:
        detail = f" ({_reason(status)})" if got != OK else ""
        raise CheckFailed(f"{what}: expected {code}, got {got}{detail}")
    if code != OK and error_info(status) is None:
        raise CheckFailed(f"{what}: refused with {code} but without a google.rpc.ErrorInfo")
    if reason is not None and _reason(status) != reason:
        raise CheckFailed(f"{what}: refused with {code} {_reason(status)}, not {reason}")


def _count(result: platform_pb2.QueryItemResult | platform_pb2.ReleaseItemResult) -> int:
    found = result.bindings if isinstance(result, platform_pb2.QueryItemResult) else result.released
    return sum(max(b.count, 1) for b in found)


# --- the checks -------------------------------------------------------------------------------

check = PLATFORM_SUITE.check


@check(
    "trust_bundle_accepted",
    "The platform fetches the trust bundle from the gateway and accepts one signed by the "
    "federation root it pinned.",
    "Every claim is verified against this bundle; without it the platform can verify nothing.",
)
async def trust_bundle_accepted(kit: PlatformKit) -> str:
    if not kit.setup_ok:
        raise CheckFailed(kit.setup_detail)
    return kit.setup_detail


@check(
    "gateway_only",
    "PlatformService and the conformance service answer only the gateway's mTLS identity; "
    "any other member gets PERMISSION_DENIED.",
    "A carrier or another platform calling a platform directly would bypass the gateway's "
    "authority checks and audit log.",
)
async def gateway_only(kit: PlatformKit) -> str:
    me = PeerId(Role.PLATFORM, kit.t.platform_id)
    server = me
    channel = kit._channel(me, server)
    s = await kit.seed(at=False, after=False)
    try:
        await platform_pb2_grpc.PlatformServiceStub(channel).BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(
                items=[
                    platform_pb2.QueryItem(
                        item_id="i", claim=kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
                    )
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.PERMISSION_DENIED:
            raise CheckFailed(
                f"a platform identity got {exc.code().name}, not PERMISSION_DENIED"
            ) from None
    else:
        raise CheckFailed(f"{me.uri} was answered BatchQueryBindings")
    try:
        await conformance_pb2_grpc.PlatformConformanceServiceStub(channel).ReadAccounts(
            conformance_pb2.ReadAccountsRequest(account_ids=[s.accounts["before"]]),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.PERMISSION_DENIED:
            raise CheckFailed(
                f"conformance service: {exc.code().name}, not PERMISSION_DENIED"
            ) from None
    else:
        raise CheckFailed(f"{me.uri} was answered by the conformance service")
    return f"{me.uri} refused on both services"


@check(
    "forged_claim_refused",
    "A claim whose payload was changed after signing, whose signature was altered, or that "
    "was signed by a key outside the bundle is refused with UNAUTHENTICATED.",
    "The gateway is not trusted: only the carrier's signature makes a claim true.",
)
async def forged_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    good = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
    forged = [
        ("payload changed after signing", _tampered(good)),
        ("signature altered", _bad_signature(good)),
        (
            "signed by a key outside the bundle",
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.stranger),
        ),
    ]
    results = await kit.query(*(c for _, c in forged))
    for (what, _), r in zip(forged, results, strict=True):
        expect(r.status, "UNAUTHENTICATED", what)
        if r.bindings:
            raise CheckFailed(f"{what}: bindings were listed for a forged claim")
    release = await kit.release(_bad_signature(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x)))
    expect(release[0].status, "UNAUTHENTICATED", "release with an altered signature")
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("a forged release claim released a binding")
    return "3 forged queries and 1 forged release refused"


@check(
    "expired_claim_refused",
    "A query claim past its expiry (beyond 60 s of clock skew) is refused with UNAUTHENTICATED.",
    "A claim outlives its holder's tenure only by minutes; an old one may speak for a former "
    "holder.",
)
async def expired_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    old = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, issued=_now() - timedelta(minutes=30))
    r = (await kit.query(old))[0]
    expect(r.status, "UNAUTHENTICATED", "a claim expired 20 minutes ago")
    return f"refused ({_reason(r.status)})"


@check(
    "future_claim_refused",
    "A claim issued in the future (beyond 60 s of clock skew) is refused with UNAUTHENTICATED.",
    "Post-dated claims would let a stolen signing key act long after it was revoked.",
)
async def future_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    later = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, issued=_now() + timedelta(minutes=10))
    r = (await kit.query(later))[0]
    expect(r.status, "UNAUTHENTICATED", "a claim issued 10 minutes from now")
    return f"refused ({_reason(r.status)})"


@check(
    "wrong_purpose_refused",
    "A claim is used only for its purpose: release or proof claims are refused by "
    "BatchQueryBindings and query claims by BatchReleaseBindings, with INVALID_ARGUMENT.",
    "Least privilege: a holder who asked only to look must never cause a release.",
)
async def wrong_purpose_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    results = await kit.query(
        kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x),
        kit.claim(s.number, Purpose.HOLDER_PROOF, s.x),
    )
    expect(results[0].status, "INVALID_ARGUMENT", "RELEASE_PRIOR claim sent to query")
    expect(results[1].status, "INVALID_ARGUMENT", "HOLDER_PROOF claim sent to query")
    r = (await kit.release(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)))[0]
    expect(r.status, "INVALID_ARGUMENT", "QUERY_PRIOR claim sent to release")
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("a query claim released a binding")
    return "3 misused claims refused, nothing released"


@check(
    "out_of_range_key_refused",
    "A claim signed by a key whose number prefixes do not cover the number is refused with "
    "PERMISSION_DENIED.",
    "Each carrier key may attest only its own numbers; one leaked key must not speak for all.",
)
async def out_of_range_key_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    r = (await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.narrow)))[0]
    expect(r.status, "PERMISSION_DENIED", "a +86150 key signing a +86139 number")
    rel = (await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, key=kit.keys.narrow)))[
        0
    ]
    expect(rel.status, "PERMISSION_DENIED", "release signed by an out-of-range key")
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("an out-of-range key released a binding")
    return f"refused ({_reason(r.status)})"


@check(
    "carrier_key_mismatch_refused",
    "PLAT-CLAIM-KEY-CARRIER: a claim or event batch counts only if the key that signed it "
    "belongs to the carrier it names. Signed with another carrier's key (valid, in scope, not "
    "revoked), a claim is refused item by item with PERMISSION_DENIED (CARRIER_KEY_MISMATCH) "
    "and changes nothing; an event batch is never applied.",
    "With number portability every carrier's key covers every number: a platform that checks "
    "only the key's prefixes lets each carrier, or anyone with one leaked key, speak for all.",
)
async def carrier_key_mismatch_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    control = await kit.seed(at=False, after=False)
    mismatched = [
        (f"a claim naming {OTHER_CARRIER} signed by a {TEST_CARRIER} key", OTHER_CARRIER, None),
        (
            f"a claim naming {TEST_CARRIER} signed by a {OTHER_CARRIER} key",
            TEST_CARRIER,
            kit.keys.other,
        ),
    ]
    queries = await kit.query(
        *(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, carrier_id=c, key=k)
            for _, c, k in mismatched
        )
    )
    for (what, _, _), q in zip(mismatched, queries, strict=True):
        expect(q.status, "PERMISSION_DENIED", f"query: {what}", reason="CARRIER_KEY_MISMATCH")
        if q.bindings:
            raise CheckFailed(f"query: {what}: bindings were listed")
    releases = await kit.release(
        *(
            kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, carrier_id=c, key=k)
            for _, c, k in mismatched
        ),
        kit.claim(control.number, Purpose.RELEASE_PRIOR, control.x),
    )
    for (what, _, _), r in zip(mismatched, releases[:-1], strict=True):
        expect(r.status, "PERMISSION_DENIED", f"release: {what}", reason="CARRIER_KEY_MISMATCH")
        if r.released:
            raise CheckFailed(f"release: {what}: bindings are reported released")
    expect(releases[-1].status, OK, "a valid release in the same batch")
    after = await kit.read(*s.accounts.values())
    for role, account_id in s.accounts.items():
        state = after[account_id]
        if not state.exists or any(b.released or b.stale for b in state.bindings):
            raise CheckFailed(f"a mismatched release changed the account bound {role} X")
    if not await kit.released(control.accounts["before"], control.number):
        raise CheckFailed("the valid release in the same batch was not applied")

    e = await kit.seed(at=False, after=False)
    batches = []
    for _, carrier_id, key in mismatched:
        event = LifecycleEvent.new(e.number, EventKind.PENDING_RELEASE, _now(), as_of=e.x)
        batches.append((kit.next_seq(), kit.batch(event, carrier_id=carrier_id, key=key), event))
    ack = await kit.deliver(*((seq, batch) for seq, batch, _ in batches))
    if await kit.released(e.accounts["before"], e.number):
        raise CheckFailed("an event batch signed by another carrier's key was applied")
    applied = set(await kit.applied_events())
    if any(event.event_id in applied for _, _, event in batches):
        raise CheckFailed("an event of a mismatched batch is listed as applied")
    if ack.ack_through_seq != batches[-1][0]:
        raise CheckFailed(
            f"acknowledged {ack.ack_through_seq}, not {batches[-1][0]}: they would come back"
        )
    return "2 queries and 2 releases refused (CARRIER_KEY_MISMATCH), 2 batches not applied"


@check(
    "revoked_key_refused",
    "Once the trust bundle revokes a key, claims it signs are refused with UNAUTHENTICATED.",
    "Revocation is how the federation contains a stolen carrier key.",
)
async def revoked_key_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    if kit._revoked_envelope is None:
        before = (
            await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.doomed))
        )[0]
        expect(before.status, OK, "a claim by the key while the bundle still trusts it")
    await kit.ensure_revoked()
    after = (await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.doomed)))[0]
    expect(after.status, "UNAUTHENTICATED", "a claim by the key after its revocation")
    rel = (await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, key=kit.keys.doomed)))[
        0
    ]
    expect(rel.status, "UNAUTHENTICATED", "a release by the revoked key")
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("a revoked key released a binding")
    return f"accepted while trusted, refused once revoked ({_reason(after.status)})"


@check(
    "query_lists_only_before_x",
    "QUERY_PRIOR lists exactly the bindings made before X; QUERY_OWN lists those made at or "
    "after X, each with a binding_ref.",
    "The previous holder's accounts are the ones to clean up; the current holder's are theirs.",
)
async def query_lists_only_before_x(kit: PlatformKit) -> str:
    s = await kit.seed(before=2)
    prior, own = await kit.query(
        kit.claim(s.number, Purpose.QUERY_PRIOR, s.x), kit.claim(s.number, Purpose.QUERY_OWN, s.x)
    )
    expect(prior.status, OK, "QUERY_PRIOR")
    expect(own.status, OK, "QUERY_OWN")
    if _count(prior) != 2:
        raise CheckFailed(f"QUERY_PRIOR listed {_count(prior)} bindings; 2 were made before X")
    if _count(own) != 2:
        raise CheckFailed(f"QUERY_OWN listed {_count(own)} bindings; 2 were made at or after X")
    if not all(b.binding_ref for b in own.bindings):
        raise CheckFailed("QUERY_OWN summaries carry no binding_ref")
    if any(b.binding_ref for b in prior.bindings):
        raise CheckFailed("QUERY_PRIOR summaries carry binding_refs (own-tenure answers only)")
    return "2 prior and 2 own bindings, as seeded"


@check(
    "release_keeps_binding_at_x",
    "A prior-holder release never touches a binding made at exactly X (bound_at < X, strictly).",
    "At X the number already belonged to the current holder: that account is theirs.",
)
async def release_keeps_binding_at_x(kit: PlatformKit) -> str:
    s, _ = await kit.ensure_release()
    if await kit.released(s.accounts["at"], s.number) is not False:
        raise CheckFailed("the binding made at exactly X was released (or its account is gone)")
    return "binding at X kept"


@check(
    "release_keeps_binding_after_x",
    "A prior-holder release never touches a binding made after X.",
    "The current holder's own accounts must survive a release made on their behalf.",
)
async def release_keeps_binding_after_x(kit: PlatformKit) -> str:
    s, _ = await kit.ensure_release()
    if await kit.released(s.accounts["after"], s.number) is not False:
        raise CheckFailed("the binding made after X was released (or its account is gone)")
    return "binding after X kept"


@check(
    "release_frees_binding_before_x",
    "RELEASE_PRIOR removes the number from every binding made before X and keeps the account.",
    "The new holder must be able to register and receive their own codes; the previous holder "
    "keeps their account and its data.",
)
async def release_frees_binding_before_x(kit: PlatformKit) -> str:
    s, results = await kit.ensure_release()
    state = await kit.released(s.accounts["before"], s.number)
    if state is None:
        raise CheckFailed("the release deleted the previous holder's account")
    if not state:
        raise CheckFailed("the binding made before X is still bound")
    if _count(results[0]) < 1:
        raise CheckFailed("the answer reports nothing released")
    return "binding before X released, account kept"


@check(
    "replayed_release_applied_once",
    "A release claim sent again is answered from its first result (replayed = true) and "
    "changes nothing more.",
    "The gateway retries until it hears back; a retry must not release bindings made since.",
)
async def replayed_release_applied_once(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    claim = kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x)
    first = (await kit.release(claim))[0]
    expect(first.status, OK, "the first release")
    late = await kit.bind(s.number, s.x - timedelta(days=10))
    second = (await kit.release(claim))[0]
    expect(second.status, OK, "the replayed release")
    if await kit.released(late, s.number):
        raise CheckFailed("the replay was applied again: it released a binding made since")
    if not second.replayed:
        raise CheckFailed("the replay's answer does not say replayed = true")
    if first.replayed:
        raise CheckFailed("the first application says replayed = true")
    if list(second.released) != list(first.released):
        raise CheckFailed("the replay's answer differs from the first result")
    return "second answer replayed, nothing more released"


@check(
    "batch_answered_claim_by_claim",
    "A batch mixing valid and invalid claims is answered item by item, in order, each with its "
    "own status; the invalid ones change nothing.",
    "One holder's bad claim must not fail or leak into the other holders' answers in its batch.",
)
async def batch_answered_claim_by_claim(kit: PlatformKit) -> str:
    a = await kit.seed()
    b = await kit.seed(at=False, after=False)
    old = _now() - timedelta(minutes=30)
    later = _now() + timedelta(minutes=10)
    plan: list[tuple[claim_pb2.Envelope, str, int | None]] = [
        (kit.claim(a.number, Purpose.QUERY_PRIOR, a.x), OK, 1),
        (kit.claim(a.number, Purpose.QUERY_PRIOR, a.x, issued=old), "UNAUTHENTICATED", None),
        (kit.claim(b.number, Purpose.QUERY_PRIOR, b.x), OK, 1),
        (kit.claim(a.number, Purpose.RELEASE_PRIOR, a.x), "INVALID_ARGUMENT", None),
        (
            kit.claim(b.number, Purpose.QUERY_PRIOR, b.x, key=kit.keys.narrow),
            "PERMISSION_DENIED",
            None,
        ),
        (kit.claim(a.number, Purpose.QUERY_OWN, a.x), OK, 2),
        (kit.claim(a.number, Purpose.QUERY_PRIOR, a.x, issued=later), "UNAUTHENTICATED", None),
        (kit.malformed(), "INVALID_ARGUMENT", None),
    ]
    results = await kit.query(*(c for c, _, _ in plan))
    for i, ((_, code, count), r) in enumerate(zip(plan, results, strict=True)):
        expect(r.status, code, f"query item {i}")
        if count is not None and _count(r) != count:
            raise CheckFailed(f"query item {i}: {_count(r)} bindings listed, {count} expected")
        if count is None and r.bindings:
            raise CheckFailed(f"query item {i} was refused yet lists bindings")
    rel = await kit.release(
        kit.claim(b.number, Purpose.RELEASE_PRIOR, b.x),
        kit.claim(a.number, Purpose.RELEASE_PRIOR, a.x, issued=later),
        kit.claim(a.number, Purpose.QUERY_PRIOR, a.x),
    )
    expect(rel[0].status, OK, "release item 0")
    expect(rel[1].status, "UNAUTHENTICATED", "release item 1 (issued in the future)")
    expect(rel[2].status, "INVALID_ARGUMENT", "release item 2 (a query claim)")
    if not await kit.released(b.accounts["before"], b.number):
        raise CheckFailed("the valid release in the batch was not applied")
    if await kit.released(a.accounts["before"], a.number):
        raise CheckFailed("a refused release in the batch released a binding")
    return f"{len(plan)} queries and 3 releases answered one by one"


@check(
    "malformed_batch_refused",
    "An empty batch or one with repeated item_ids is refused as a whole with INVALID_ARGUMENT.",
    "Results are matched to holders by item_id; an ambiguous batch would mix them up.",
)
async def malformed_batch_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    claim = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
    requests: list[tuple[str, Message]] = [
        ("an empty batch", platform_pb2.BatchQueryBindingsRequest()),
        (
            "repeated item_ids",
            platform_pb2.BatchQueryBindingsRequest(
                items=[platform_pb2.QueryItem(item_id="same", claim=claim)] * 2
            ),
        ),
    ]
    for what, request in requests:
        try:
            await kit.platform.BatchQueryBindings(request, timeout=CALL_TIMEOUT)  # type: ignore[arg-type]
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                raise CheckFailed(f"{what}: {exc.code().name}, not INVALID_ARGUMENT") from None
        else:
            raise CheckFailed(f"{what} was answered")
    return "both refused"


@check(
    "summaries_masked",
    "Answers carry masked summaries only: no account id, nickname or number appears anywhere "
    "in them, and each names this platform.",
    "Minimal disclosure: the gateway and the carrier must learn nothing about anyone's accounts.",
)
async def summaries_masked(kit: PlatformKit) -> str:
    s = await kit.seed(before=2)
    answers: list[Message] = list(
        await kit.query(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x),
            kit.claim(s.number, Purpose.QUERY_OWN, s.x),
        )
    )
    answers += await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
    secrets_ = [*s.accounts.values(), *s.nicknames, s.number, s.number.removeprefix("+86")]
    summaries = 0
    for answer in answers:
        expect(answer.status, OK, "a valid claim")  # type: ignore[attr-defined]
        raw = answer.SerializeToString()
        text = str(answer)
        for secret in secrets_:
            if secret.encode() in raw or secret in text:
                raise CheckFailed(f"an answer contains the raw value {secret!r}")
        found: list[binding_pb2.BindingSummary] = list(
            getattr(answer, "bindings", None) or getattr(answer, "released", None) or []
        )
        for b in found:
            summaries += 1
            if b.platform_id != kit.t.platform_id:
                raise CheckFailed(f"a summary names platform {b.platform_id!r}")
            if not b.masked_label:
                raise CheckFailed("a summary has no masked label")
    if summaries < 5:
        raise CheckFailed(f"only {summaries} summaries came back; 5 were expected")
    return f"{summaries} summaries, none with a raw value"


@check(
    "events_applied_once",
    "A lifecycle event delivered again (the same batch re-sent, or the same event in a later "
    "batch) is applied once, by its event_id.",
    "Delivery is at-least-once; applying a PENDING_RELEASE twice would release bindings made "
    "since.",
)
async def events_applied_once(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, _now(), as_of=s.x)
    batch = kit.batch(event)
    first = kit.next_seq()
    ack = await kit.deliver((first, batch))
    if ack.ack_through_seq != first:
        raise CheckFailed(f"acknowledged {ack.ack_through_seq}, not {first}")
    if not await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("PENDING_RELEASE did not release the binding made before as_of")
    late = await kit.bind(s.number, s.x - timedelta(days=5))
    again = kit.next_seq()
    ack = await kit.deliver((first, batch), (again, kit.batch(event)))
    if ack.ack_through_seq != again:
        raise CheckFailed(f"acknowledged {ack.ack_through_seq}, not {again}")
    if await kit.released(late, s.number):
        raise CheckFailed("the event was applied again and released a binding made since")
    applied = await kit.applied_events()
    if applied.count(event.event_id) != 1:
        raise CheckFailed(f"the event is listed {applied.count(event.event_id)} times as applied")
    return "applied once across 3 deliveries"


@check(
    "events_applied_in_order",
    "Batches are applied in seq order and acknowledged through the last one; a delivery out of "
    "order is refused with INVALID_ARGUMENT and nothing in it is applied.",
    "Events about one number only make sense in order (a port before a reassignment, say).",
)
async def events_applied_in_order(kit: PlatformKit) -> str:
    n1, n2, n3 = kit.number(), kit.number(), kit.number()
    now = _now()
    e1 = LifecycleEvent.new(n1, EventKind.DEACTIVATED, now)
    e2 = LifecycleEvent.new(n2, EventKind.DEACTIVATED, now)
    e3 = LifecycleEvent.new(n3, EventKind.DEACTIVATED, now)
    s1, s2 = kit.next_seq(), kit.next_seq()
    ack = await kit.deliver((s1, kit.batch(e1, e2)), (s2, kit.batch(e3)))
    if ack.ack_through_seq != s2:
        raise CheckFailed(f"acknowledged {ack.ack_through_seq}, not {s2}")
    applied = await kit.applied_events()
    mine = [e for e in applied if e in {e1.event_id, e2.event_id, e3.event_id}]
    if mine != [e1.event_id, e2.event_id, e3.event_id]:
        raise CheckFailed(f"events applied in another order (or not at all): {len(mine)} of 3")
    e4 = LifecycleEvent.new(n1, EventKind.DEACTIVATED, now)
    e5 = LifecycleEvent.new(n2, EventKind.DEACTIVATED, now)
    s3, s4 = kit.next_seq(), kit.next_seq()
    try:
        await kit.deliver((s4, kit.batch(e5)), (s3, kit.batch(e4)))
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
            raise CheckFailed(
                f"out-of-order delivery: {exc.code().name}, not INVALID_ARGUMENT"
            ) from None
    else:
        raise CheckFailed("a delivery with batches out of seq order was accepted")
    applied = await kit.applied_events()
    if e4.event_id in applied or e5.event_id in applied:
        raise CheckFailed("an event of the refused out-of-order delivery was applied")
    return "3 events in order; the out-of-order delivery refused"


@check(
    "forged_event_batch_ignored",
    "An event batch whose carrier signature does not verify is never applied (and is "
    "acknowledged, since it never will verify).",
    "Anyone on the path could otherwise release or lock accounts with a made-up event.",
)
async def forged_event_batch_ignored(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, _now(), as_of=s.x)
    # An altered signature, not a key outside the bundle: an unknown key may be in a newer
    # bundle, and a batch signed with it is not acknowledged until the platform can judge it.
    forged = _bad_signature(kit.batch(event))
    seq = kit.next_seq()
    ack = await kit.deliver((seq, forged))
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("a batch whose signature does not verify was applied")
    if event.event_id in await kit.applied_events():
        raise CheckFailed("the forged event is listed as applied")
    if ack.ack_through_seq != seq:
        raise CheckFailed(f"acknowledged {ack.ack_through_seq}, not {seq}: it would come back")
    return "not applied, acknowledged"


@check(
    "stale_binding_refuses_sms_login",
    "After REASSIGNED(X), a binding made before X no longer opens its account with an SMS code "
    "alone; bindings made since still do.",
    "Otherwise the number's new holder could log into the previous holder's accounts by SMS.",
)
async def stale_binding_refuses_sms_login(kit: PlatformKit) -> str:
    s = await kit.seed(at=False)
    if not await kit.sms_login(s.number, s.accounts["before"]):
        raise CheckFailed("before any event, SMS login to the previous holder's account fails")
    event = LifecycleEvent.new(s.number, EventKind.REASSIGNED, _now(), tenure_start=s.x)
    seq = kit.next_seq()
    await kit.deliver((seq, kit.batch(event)))
    if await kit.sms_login(s.number, s.accounts["before"]):
        raise CheckFailed("after REASSIGNED, an SMS code still opens the previous holder's account")
    if not await kit.sms_login(s.number, s.accounts["after"]):
        raise CheckFailed("after REASSIGNED, the current holder's own account no longer opens")
    return "previous holder's account locked to SMS; current holder's open"


@check(
    "bundle_rollback_refused",
    "An older trust bundle offered after a newer one is refused; the platform keeps the newer "
    "bundle and its revocations.",
    "A rollback would bring back keys the federation has revoked.",
)
async def bundle_rollback_refused(kit: PlatformKit) -> str:
    await kit.ensure_revoked()
    assert kit._base_envelope is not None and kit._revoked_envelope is not None
    kit.gateway.serve_envelope(kit._base_envelope)
    try:
        answer = await kit.refresh()
        s = await kit.seed()
        r = (await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.doomed)))[0]
    finally:
        kit.gateway.serve_envelope(kit._revoked_envelope)
    if answer.status.code == 0:
        raise CheckFailed(
            f"the platform accepted bundle v{kit.base_version} after v{kit.base_version + 1}"
        )
    if answer.bundle_version != kit.base_version + 1:
        raise CheckFailed(f"the platform now holds bundle v{answer.bundle_version}")
    expect(r.status, "UNAUTHENTICATED", "a claim by the key the newer bundle revoked")
    return f"refused ({_code(answer.status)} {_reason(answer.status)})"


async def run_platform_kit(
    target: PlatformTarget, *, only: tuple[str, ...] = (), timeout: float = 30.0
) -> Report:
    """Run the platform checks (those named in ``only``, if given) against ``target``."""
    unknown = sorted(set(only) - set(PLATFORM_SUITE.names))
    if unknown:
        from numfed.errors import InvalidArgument

        raise InvalidArgument("UNKNOWN_CHECK", f"no such platform checks: {unknown}")
    report = Report(PLATFORM_SUITE.name, f"{target.platform_id} at {target.target}")
    async with PlatformKit(target) as kit:
        return await PLATFORM_SUITE.run(kit, report, only=only, timeout=timeout)
