"""The platform kit: plays the gateway and the carriers against any PlatformService.

Test data reaches the platform through its test-only ConformanceService; every check uses
numbers of its own, so checks do not disturb each other and the kit may run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.conformance.kitgateway import KitGateway, TestKeys, start_kit_gateway
from numfed.conformance.report import CheckFailed, CheckResult
from numfed.envelope import SigningKey
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, error_info
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

__all__ = ["CHECKS", "PlatformTarget", "run_platform_kit"]

CALL_TIMEOUT = 10.0
DAY = timedelta(days=1)
LOGIN = binding_pb2.BINDING_KIND_ACCOUNT_LOGIN


@dataclass(frozen=True)
class PlatformTarget:
    """Where the platform listens, who it is, and the test federation's files."""

    target: str
    platform_id: str
    pki_dir: Path
    trust_dir: Path
    gateway_listen: str
    """Where the kit's stand-in gateway listens: the gateway address the platform dials."""


def _code(status: object) -> str:
    code = getattr(status, "code", 0)
    return grpc.StatusCode.OK.name if code == 0 else _CODE_NAMES.get(code, str(code))


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class PlatformKit:
    """One run's state: channels, keys, the stand-in gateway and helpers the checks share."""

    def __init__(self, t: PlatformTarget, gateway: KitGateway) -> None:
        self.t = t
        self.gateway = gateway
        carriers = [p.id for p in pki.PkiLayout(t.pki_dir).members() if p.role is Role.CARRIER]
        if not carriers:
            raise CheckFailed(f"no carrier in the PKI at {t.pki_dir}")
        self.carriers = carriers
        self.keys = TestKeys(carriers[0], pki.load_carrier_signer(t.pki_dir, carriers[0]))
        server = PeerId(Role.PLATFORM, t.platform_id)
        self.channel = pki.secure_channel(t.target, t.pki_dir, pki.GATEWAY, server=server)
        self.platform = platform_pb2_grpc.PlatformServiceStub(self.channel)
        self.conf = conformance_pb2_grpc.ConformanceServiceStub(self.channel)
        self.bundle_version = 0
        self.seq = time.time_ns() // 1000

    async def close(self) -> None:
        await self.channel.close()

    # --- trust -----------------------------------------------------------------------------
    async def refresh(self) -> conformance_pb2.RefreshTrustResponse:
        return await self.conf.RefreshTrust(
            conformance_pb2.RefreshTrustRequest(), timeout=CALL_TIMEOUT
        )

    async def prepare(self, wait: float = 20.0) -> None:
        """Wait until the platform answers and holds a bundle; then publish the kit's own."""
        deadline = time.monotonic() + wait
        while True:
            try:
                answer = await self.refresh()
                if answer.bundle_version > 0:
                    break
            except grpc.aio.AioRpcError as err:
                if time.monotonic() > deadline:
                    raise CheckFailed(f"platform unreachable: {err.code().name}") from err
            if time.monotonic() > deadline:
                raise CheckFailed("the platform never accepted a trust bundle")
            await asyncio.sleep(0.2)
        self.bundle_version = answer.bundle_version + 1
        self.gateway.publish(
            version=self.bundle_version,
            keys=self.keys,
            pki_dir=self.t.pki_dir,
            now=datetime.now(UTC),
            carriers=self.carriers,
        )
        answer = await self.refresh()
        if answer.bundle_version != self.bundle_version:
            raise CheckFailed(
                f"the platform did not take the kit's bundle v{self.bundle_version}: "
                f"holds v{answer.bundle_version}, {answer.status.message}"
            )

    # --- data ------------------------------------------------------------------------------
    @staticmethod
    def number() -> str:
        return "+86199" + "".join(secrets.choice("0123456789") for _ in range(8))

    async def seed(self, number: str, *rows: tuple[str, datetime]) -> list[str]:
        """Bind a fresh account to ``number`` at each ``bound_at``; return the account ids."""
        ids = [f"{label}-{secrets.token_hex(6)}" for label, _ in rows]
        await self.conf.SeedBindings(
            conformance_pb2.SeedBindingsRequest(
                bindings=[
                    conformance_pb2.SeededBinding(
                        account_id=i,
                        nickname=f"nick{secrets.token_hex(4)}",
                        number=number,
                        kind=LOGIN,
                        bound_at=to_timestamp(at),
                    )
                    for i, (_, at) in zip(ids, rows, strict=True)
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        return ids

    async def read(self, number: str) -> dict[str, conformance_pb2.SeededBinding]:
        answer = await self.conf.ListSeededBindings(
            conformance_pb2.ListSeededBindingsRequest(number=number), timeout=CALL_TIMEOUT
        )
        return {b.account_id: b for b in answer.bindings}

    async def active(self, number: str) -> set[str]:
        return {a for a, b in (await self.read(number)).items() if not b.HasField("released_at")}

    def claim(
        self,
        number: str,
        x: datetime,
        purpose: Purpose,
        *,
        key: SigningKey | None = None,
        issued: datetime | None = None,
        binding_refs: tuple[str, ...] = (),
    ) -> claim_pb2.Envelope:
        claim = TenureClaim.new(
            number=number,
            carrier_id=self.keys.carrier_id,
            tenure_start=x,
            purpose=purpose,
            now=issued or datetime.now(UTC),
            binding_refs=binding_refs,
        )
        return sign_claim(claim, key or self.keys.good).to_proto()

    async def query(self, *claims: claim_pb2.Envelope) -> list[platform_pb2.QueryItemResult]:
        answer = await self.platform.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(
                items=[
                    platform_pb2.QueryItem(item_id=f"q{i}", claim=c) for i, c in enumerate(claims)
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        return list(answer.results)

    async def release(self, *claims: claim_pb2.Envelope) -> list[platform_pb2.ReleaseItemResult]:
        answer = await self.platform.BatchReleaseBindings(
            platform_pb2.BatchReleaseBindingsRequest(
                items=[
                    platform_pb2.ReleaseItem(item_id=f"r{i}", claim=c) for i, c in enumerate(claims)
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        return list(answer.results)

    async def deliver(self, *batches: tuple[int, claim_pb2.Envelope]) -> int:
        answer = await self.platform.DeliverEvents(
            platform_pb2.DeliverEventsRequest(
                batches=[events_pb2.SequencedBatch(seq=s, batch=b) for s, b in batches]
            ),
            timeout=CALL_TIMEOUT,
        )
        return answer.ack_through_seq

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def batch(self, *events: LifecycleEvent, key: SigningKey | None = None) -> claim_pb2.Envelope:
        env = sign_event_batch(
            self.keys.carrier_id, events, key or self.keys.good, now=datetime.now(UTC)
        )
        return env.to_proto()

    async def refused(
        self,
        what: str,
        results: Sequence[platform_pb2.QueryItemResult | platform_pb2.ReleaseItemResult],
        code: str,
    ) -> None:
        for r in results:
            got = _code(r.status)
            if got != code:
                raise CheckFailed(f"{what}: item {r.item_id} answered {got}, expected {code}")
            if error_info(r.status) is None:
                raise CheckFailed(f"{what}: refusal of {r.item_id} has no google.rpc.ErrorInfo")

    async def untouched(self, number: str, accounts: Sequence[str]) -> None:
        left = await self.active(number)
        gone = [a for a in accounts if a not in left]
        if gone:
            raise CheckFailed(f"a refused claim released {len(gone)} binding(s) anyway")


CheckFn = Callable[[PlatformKit], Awaitable[str]]


@dataclass(frozen=True)
class Check:
    name: str
    rule: str
    why: str
    run: CheckFn


def _forge(env: claim_pb2.Envelope) -> claim_pb2.Envelope:
    """The same signature over a payload whose tenure_start moved a year later."""
    claim = claim_pb2.TenureClaim.FromString(env.payload)
    claim.tenure_start.seconds += 365 * 86400
    forged = claim_pb2.Envelope()
    forged.CopyFrom(env)
    forged.payload = claim.SerializeToString()
    return forged


async def _refusal(
    kit: PlatformKit,
    make: Callable[[str, datetime], claim_pb2.Envelope],
    code: str,
    via: str = "release",
) -> str:
    x = datetime.now(UTC) - 30 * DAY
    n = kit.number()
    accounts = await kit.seed(n, ("old", x - 400 * DAY))
    env = make(n, x)
    if via == "release":
        results: Sequence[platform_pb2.QueryItemResult | platform_pb2.ReleaseItemResult]
        results = await kit.release(env)
        if results[0].released:
            raise CheckFailed("the refused release reported released bindings")
    else:
        results = await kit.query(env)
        if results[0].bindings:
            raise CheckFailed("the refused query listed bindings")
    await kit.refused(via, results, code)
    await kit.untouched(n, accounts)
    return f"{code} ({error_info(results[0].status).reason})"  # type: ignore[union-attr]


async def forged(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return _forge(kit.claim(n, x, Purpose.RELEASE_PRIOR))

    return await _refusal(kit, make, "UNAUTHENTICATED")


async def expired(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.QUERY_PRIOR, issued=datetime.now(UTC) - timedelta(hours=1))

    return await _refusal(kit, make, "UNAUTHENTICATED", via="query")


async def future(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.RELEASE_PRIOR, issued=datetime.now(UTC) + timedelta(hours=1))

    return await _refusal(kit, make, "UNAUTHENTICATED")


async def wrong_purpose(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.QUERY_PRIOR)

    first = await _refusal(kit, make, "INVALID_ARGUMENT")

    def proof(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.HOLDER_PROOF)

    await _refusal(kit, proof, "INVALID_ARGUMENT", via="query")
    return first


async def out_of_range_key(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.RELEASE_PRIOR, key=kit.keys.narrow)

    return await _refusal(kit, make, "PERMISSION_DENIED")


async def revoked_key(kit: PlatformKit) -> str:
    def make(n: str, x: datetime) -> claim_pb2.Envelope:
        return kit.claim(n, x, Purpose.RELEASE_PRIOR, key=kit.keys.revoked)

    return await _refusal(kit, make, "UNAUTHENTICATED")


async def at_or_after_x_kept(kit: PlatformKit) -> str:
    x = datetime.now(UTC).replace(microsecond=0) - 10 * DAY
    n = kit.number()
    _old, at_x, after = await kit.seed(
        n, ("old", x - 300 * DAY), ("atx", x), ("new", x + timedelta(seconds=1))
    )
    await kit.release(kit.claim(n, x, Purpose.RELEASE_PRIOR))
    rows = await kit.read(n)
    for account, what in ((at_x, "bound exactly at X"), (after, "bound after X")):
        b = rows.get(account)
        if b is None or b.HasField("released_at"):
            raise CheckFailed(f"the binding {what} was released")
    return "bindings at X and X+1s kept"


async def prior_released(kit: PlatformKit) -> str:
    x = datetime.now(UTC).replace(microsecond=0) - 10 * DAY
    n = kit.number()
    accounts = await kit.seed(
        n, ("a", x - 300 * DAY), ("b", x - timedelta(seconds=1)), ("new", x + DAY)
    )
    results = await kit.release(kit.claim(n, x, Purpose.RELEASE_PRIOR))
    if _code(results[0].status) != "OK":
        raise CheckFailed(f"a valid release was refused: {results[0].status.message}")
    rows = await kit.read(n)
    for account in accounts[:2]:
        b = rows.get(account)
        if b is None:
            raise CheckFailed("a released binding's account was deleted")
        if not b.HasField("released_at"):
            raise CheckFailed("a binding made before X was not released")
        if not b.account_exists:
            raise CheckFailed("a released binding's account was deleted")
    if len(results[0].released) < 1:
        raise CheckFailed("the answer reports nothing released")
    return f"{len(results[0].released)} summaries, accounts kept"


async def replay_once(kit: PlatformKit) -> str:
    x = datetime.now(UTC) - 10 * DAY
    n = kit.number()
    await kit.seed(n, ("a", x - 300 * DAY))
    env = kit.claim(n, x, Purpose.RELEASE_PRIOR)
    first = (await kit.release(env))[0]
    (later,) = await kit.seed(n, ("b", x - 200 * DAY))
    again = (await kit.release(env))[0]
    if not again.replayed:
        raise CheckFailed("the repeated claim was not answered as replayed")
    if list(again.released) != list(first.released):
        raise CheckFailed("the replay answered differently from the first result")
    if later not in await kit.active(n):
        raise CheckFailed("the replayed claim was applied a second time")
    return "second answer replayed, nothing applied"


async def batch_per_claim(kit: PlatformKit) -> str:
    x = datetime.now(UTC) - 10 * DAY
    claims, expect = [], []
    for i in range(12):
        n = kit.number()
        await kit.seed(n, ("a", x - 300 * DAY))
        kind = i % 4
        if kind == 0:
            claims.append(kit.claim(n, x, Purpose.QUERY_PRIOR, key=kit.keys.revoked))
            expect.append("UNAUTHENTICATED")
        elif kind == 1:
            claims.append(kit.claim(n, x, Purpose.QUERY_PRIOR, key=kit.keys.narrow))
            expect.append("PERMISSION_DENIED")
        elif kind == 2:
            claims.append(kit.claim(n, x, Purpose.RELEASE_PRIOR))
            expect.append("INVALID_ARGUMENT")
        else:
            claims.append(kit.claim(n, x, Purpose.QUERY_PRIOR))
            expect.append("OK")
    results = await kit.query(*claims)
    if [r.item_id for r in results] != [f"q{i}" for i in range(len(claims))]:
        raise CheckFailed("results are not one per item in request order")
    for r, code in zip(results, expect, strict=True):
        if _code(r.status) != code:
            raise CheckFailed(f"item {r.item_id}: {_code(r.status)}, expected {code}")
        if code == "OK" and len(r.bindings) != 1:
            raise CheckFailed(f"item {r.item_id}: {len(r.bindings)} bindings, expected 1")
        if code != "OK" and r.bindings:
            raise CheckFailed(f"refused item {r.item_id} listed bindings")
    for bad, why in (([], "an empty batch"), (["d", "d"], "duplicate item_ids")):
        try:
            await kit.platform.BatchQueryBindings(
                platform_pb2.BatchQueryBindingsRequest(
                    items=[platform_pb2.QueryItem(item_id=i, claim=claims[3]) for i in bad]
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                raise CheckFailed(f"{why}: {err.code().name}, expected INVALID_ARGUMENT") from err
        else:
            raise CheckFailed(f"{why} was accepted")
    return f"{len(claims)} items answered one by one"


async def summaries_masked(kit: PlatformKit) -> str:
    x = datetime.now(UTC) - 10 * DAY
    n = kit.number()
    old, new = await kit.seed(n, ("old", x - 300 * DAY), ("new", x + DAY))
    rows = await kit.read(n)
    secrets_ = [old, new, rows[old].nickname, rows[new].nickname, n, n[-8:]]
    said: list[binding_pb2.BindingSummary] = []
    for r in await kit.query(kit.claim(n, x, Purpose.QUERY_PRIOR)):
        said += r.bindings
    for r in await kit.query(kit.claim(n, x, Purpose.QUERY_OWN)):
        said += r.bindings
    for rr in await kit.release(kit.claim(n, x, Purpose.RELEASE_PRIOR)):
        said += rr.released
    if len(said) < 3:
        raise CheckFailed(f"expected at least 3 summaries, got {len(said)}")
    for s in said:
        text = f"{s.masked_label} {s.binding_ref} {s.platform_id}"
        leaked = [v for v in secrets_ if v and v in text]
        if leaked:
            raise CheckFailed(f"a summary reveals {leaked[0]!r}: {s.masked_label!r}")
        if s.platform_id != kit.t.platform_id or s.count < 1:
            raise CheckFailed("a summary lacks its platform_id or a count of at least 1")
    return f"{len(said)} summaries masked"


def _event(n: str, kind: EventKind, **kw: object) -> LifecycleEvent:
    return LifecycleEvent.new(n, kind, datetime.now(UTC), **kw)


async def events_once_in_order(kit: PlatformKit) -> str:
    now = datetime.now(UTC)
    n1, n2 = kit.number(), kit.number()
    (a1,) = await kit.seed(n1, ("a", now - 300 * DAY))
    e1 = _event(n1, EventKind.PENDING_RELEASE, as_of=now)
    e2 = _event(n2, EventKind.DEACTIVATED)
    e3 = _event(n2, EventKind.DEACTIVATED)
    s1, s2 = kit.next_seq(), kit.next_seq()
    b1, b2 = kit.batch(e1, e2), kit.batch(e1, e3)
    ack = await kit.deliver((s1, b1), (s2, b2))
    if ack != s2:
        raise CheckFailed(f"acknowledged through {ack}, expected {s2}")
    await kit.deliver((s1, b1), (s2, b2))  # delivered again: at-least-once
    ours = {e.event_id for e in (e1, e2, e3)}
    applied = [
        i
        for i in (
            await kit.conf.ListAppliedEvents(
                conformance_pb2.ListAppliedEventsRequest(), timeout=CALL_TIMEOUT
            )
        ).event_ids
        if i in ours
    ]
    if applied != [e1.event_id, e2.event_id, e3.event_id]:
        raise CheckFailed(f"applied {len(applied)} events, not each once in order")
    if a1 in await kit.active(n1):
        raise CheckFailed("PENDING_RELEASE did not release the binding made before as_of")
    try:
        await kit.deliver((kit.next_seq() + 1, b1), (kit.seq, b2))
    except grpc.aio.AioRpcError as err:
        if err.code() is not grpc.StatusCode.INVALID_ARGUMENT:
            raise CheckFailed(f"batches out of order: {err.code().name}") from err
    else:
        raise CheckFailed("batches out of seq order were accepted")
    return "3 events applied once each, in order"


async def events_forged_refused(kit: PlatformKit) -> str:
    now = datetime.now(UTC)
    n = kit.number()
    (a,) = await kit.seed(n, ("a", now - 300 * DAY))
    e = _event(n, EventKind.PENDING_RELEASE, as_of=now)
    forged_batch = kit.batch(e, key=kit.keys.unknown)
    with contextlib.suppress(grpc.aio.AioRpcError):  # refusing the whole call is fine too
        await kit.deliver((kit.next_seq(), forged_batch))
    if a not in await kit.active(n):
        raise CheckFailed("an event batch signed by an unknown key was applied")
    return "not applied"


async def stale_sms_login(kit: PlatformKit) -> str:
    x = datetime.now(UTC) - DAY
    n = kit.number()
    old, new = await kit.seed(n, ("old", x - 300 * DAY), ("new", x + timedelta(hours=1)))

    async def sms(account: str) -> bool:
        answer = await kit.conf.CheckSmsLogin(
            conformance_pb2.CheckSmsLoginRequest(number=n, account_id=account),
            timeout=CALL_TIMEOUT,
        )
        return answer.allowed

    if not await sms(old):
        raise CheckFailed("SMS login refused before any event (the seed is not active)")
    await kit.deliver((kit.next_seq(), kit.batch(_event(n, EventKind.REASSIGNED, tenure_start=x))))
    if await sms(old):
        raise CheckFailed("after REASSIGNED(X) an SMS code still opens a binding made before X")
    if not await sms(new):
        raise CheckFailed("after REASSIGNED(X) the current holder's binding was locked out")
    return "stale before X, current holder unaffected"


async def trust_rollback_refused(kit: PlatformKit) -> str:
    current = kit.gateway.bundle
    kit.gateway.publish(
        version=kit.bundle_version - 1 or 1,
        keys=kit.keys,
        pki_dir=kit.t.pki_dir,
        now=datetime.now(UTC),
        carriers=kit.carriers,
    )
    try:
        answer = await kit.refresh()
    finally:
        kit.gateway.bundle = current
    if answer.bundle_version != kit.bundle_version:
        raise CheckFailed(
            f"rolled back from bundle v{kit.bundle_version} to v{answer.bundle_version}"
        )
    if _code(answer.status) != "UNAUTHENTICATED":
        raise CheckFailed(f"the older bundle was answered {_code(answer.status)}")
    return f"held v{answer.bundle_version}"


async def gateway_only(kit: PlatformKit) -> str:
    carrier = PeerId(Role.CARRIER, kit.keys.carrier_id)
    server = PeerId(Role.PLATFORM, kit.t.platform_id)
    channel = pki.secure_channel(kit.t.target, kit.t.pki_dir, carrier, server=server)
    try:
        stub = platform_pb2_grpc.PlatformServiceStub(channel)
        n = kit.number()
        env = kit.claim(n, datetime.now(UTC), Purpose.QUERY_PRIOR)
        await stub.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(
                items=[platform_pb2.QueryItem(item_id="a", claim=env)]
            ),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as err:
        if err.code() is not grpc.StatusCode.PERMISSION_DENIED:
            raise CheckFailed(f"a carrier's call got {err.code().name}") from err
        return "PERMISSION_DENIED"
    finally:
        await channel.close()
    raise CheckFailed("a carrier identity was answered")


CHECKS: tuple[Check, ...] = (
    Check(
        "claims.forged",
        "A claim whose signature does not cover its payload is refused UNAUTHENTICATED.",
        "Else anyone could rewrite X and release a current holder's accounts.",
        forged,
    ),
    Check(
        "claims.expired",
        "An expired claim is refused UNAUTHENTICATED.",
        "A claim leaked or replayed later must not open a number's bindings.",
        expired,
    ),
    Check(
        "claims.future",
        "A claim issued in the future (beyond clock skew) is refused UNAUTHENTICATED.",
        "Post-dated claims would outlive their lifetime and any key revocation.",
        future,
    ),
    Check(
        "claims.wrong_purpose",
        "A claim is accepted only by the RPC of its purpose, else INVALID_ARGUMENT.",
        "A query claim must never work as a release (least privilege).",
        wrong_purpose,
    ),
    Check(
        "claims.out_of_range_key",
        "A key may attest only numbers in its range, else PERMISSION_DENIED.",
        "A carrier key scoped to other numbers must not speak for these.",
        out_of_range_key,
    ),
    Check(
        "claims.revoked_key",
        "A claim signed by a revoked key is refused UNAUTHENTICATED.",
        "Revocation is how the federation contains a stolen carrier key.",
        revoked_key,
    ),
    Check(
        "release.at_or_after_x_kept",
        "A prior-holder release never touches a binding made at or after X.",
        "Those bindings belong to the current holder (strictly before X only).",
        at_or_after_x_kept,
    ),
    Check(
        "release.prior_released",
        "A release removes the number from every binding made before X and keeps the accounts.",
        "The new holder gets the number back; the previous holder keeps the account.",
        prior_released,
    ),
    Check(
        "release.replay_once",
        "A release claim is applied once; a repeat gets the first result, replayed.",
        "The gateway retries until answered, so repeats must not release anything new.",
        replay_once,
    ),
    Check(
        "batch.per_claim",
        "Each claim of a batch is answered on its own, in order; bad batches are INVALID_ARGUMENT.",
        "One bad claim must not fail, or leak into, other holders' answers.",
        batch_per_claim,
    ),
    Check(
        "summaries.masked",
        "Summaries carry no raw account id, nickname or number.",
        "The gateway and holders learn only masked labels (minimal disclosure).",
        summaries_masked,
    ),
    Check(
        "events.once_in_order",
        "Lifecycle events are applied once each, in seq order; out-of-order batches refused.",
        "Delivery is at-least-once; applying twice or out of order corrupts state.",
        events_once_in_order,
    ),
    Check(
        "events.forged_refused",
        "An event batch that does not verify under the bundle is never applied.",
        "Else anyone could release or lock numbers with a fake carrier event.",
        events_forged_refused,
    ),
    Check(
        "events.stale_sms_login",
        "After REASSIGNED(X), bindings made before X refuse SMS-only login.",
        "The new holder receives the codes; they must not open the old holder's accounts.",
        stale_sms_login,
    ),
    Check(
        "trust.rollback_refused",
        "A trust bundle older than the one held is refused.",
        "A rollback would bring back revoked carrier keys.",
        trust_rollback_refused,
    ),
    Check(
        "auth.gateway_only",
        "PlatformService answers only the gateway's mTLS identity, else PERMISSION_DENIED.",
        "Only the gateway may relay claims; other members must not probe a platform.",
        gateway_only,
    ),
)


async def run_platform_kit(
    target: PlatformTarget, *, only: Sequence[str] = (), wait: float = 20.0
) -> list[CheckResult]:
    """Run the checks (all, or those named in ``only``) and return one result each."""
    checks = [c for c in CHECKS if not only or c.name in only]
    gateway, handle = await start_kit_gateway(
        target.trust_dir, target.pki_dir, target.gateway_listen
    )
    kit = PlatformKit(target, gateway)
    results: list[CheckResult] = []
    try:
        try:
            await kit.prepare(wait)
        except (CheckFailed, grpc.aio.AioRpcError) as err:
            return [CheckResult(c.name, c.rule, c.why, False, f"setup: {err}") for c in checks]
        for c in checks:
            results.append(await _run(kit, c))
    finally:
        await kit.close()
        await _stop(handle)
    return results


async def _run(kit: PlatformKit, check: Check) -> CheckResult:
    start = time.monotonic()
    try:
        detail = await check.run(kit)
        passed = True
    except CheckFailed as err:
        detail, passed = str(err), False
    except grpc.aio.AioRpcError as err:
        detail, passed = f"{err.code().name}: {err.details()}", False
    return CheckResult(check.name, check.rule, check.why, passed, detail, time.monotonic() - start)


async def _stop(handle: ServerHandle) -> None:
    await handle.stop(0)
