"""The carrier kit: play the gateway against a carrier adapter's CarrierService.

The kit seeds number histories (a reassignment after the quiet period, a port in, a port out, a
number given up) through the carrier's test-only ``CarrierConformanceService``, then checks what
the carrier signs: claims and event batches must verify under the federation's trust bundle, X
must be the current holder's assignment (a port does not move it), and each recycled-check case
(a calendar day) must get its one right bit or its precise error.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType

import grpc

from numfed import pki
from numfed.claims import ClaimPolicy, Purpose, verify_recycled_claim, verify_tenure_claim
from numfed.conformance.reach import probe_keepalive, probe_target
from numfed.conformance.report import Check, CheckFailed, Report, Suite, Xfails
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument
from numfed.events import EventKind, LifecycleEvent, verify_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import error_from_rpc
from numfed.timecheck import DEFAULT_MAX_CLOCK_SKEW
from numfed.timeutil import to_date, to_timestamp
from numfed.trust import TrustedState
from numfed.trustfiles import load_trusted_state
from numfed.v1 import (
    carrier_pb2,
    carrier_pb2_grpc,
    claim_pb2,
    conformance_pb2,
    conformance_pb2_grpc,
    events_pb2,
)

__all__ = ["CARRIER_SUITE", "CarrierKit", "CarrierTarget", "run_carrier_kit"]

CARRIER_SUITE: Suite[CarrierKit] = Suite("numfed conformance carrier", "carrier")
CALL_TIMEOUT = 10.0
AUDIENCE = "conformance"
"""The platform id the kit asks recycled checks for."""
OTHER_CARRIER = "kit-other"
"""The carrier on the other side of the kit's ports."""
_KIND = conformance_pb2.HistoryEventKind


@dataclass(frozen=True)
class CarrierTarget:
    """Where the carrier listens, who it is, the PKI that issued its certificate and the trust
    files (root and bundle) that carry its signing keys."""

    target: str
    carrier_id: str
    pki_dir: Path
    trust_dir: Path


@dataclass(frozen=True)
class World:
    """The histories the kit seeded; every time is 12:00 UTC, so that in any time zone from
    UTC-11 to UTC+11 (Asia/Shanghai is UTC+8) it falls on the same calendar day as in UTC."""

    reassigned: str
    """Held by one subscriber from t0, given up at t1, held by another from t2 (X)."""
    ported_in: str
    """Assigned at another carrier at p0 (X), ported to this carrier at p1."""
    ported_out: str
    """Assigned here at p0, ported to another carrier at p1."""
    given_up: str
    """Assigned here at t0, given up at t1; nobody holds it."""
    t0: datetime
    t1: datetime
    t2: datetime
    p0: datetime
    p1: datetime


def _noon(t: datetime) -> datetime:
    return t.replace(hour=12, minute=0, second=0, microsecond=0)


def _event(kind: int, at: datetime, carrier: str, holder: str = "") -> conformance_pb2.HistoryEvent:
    return conformance_pb2.HistoryEvent(
        kind=kind,  # type: ignore[arg-type]
        at=to_timestamp(at),
        carrier_id=carrier,
        holder_id=holder,
    )


class CarrierKit:
    def __init__(self, target: CarrierTarget) -> None:
        self.t = target
        self._channels: list[grpc.aio.Channel] = []
        server = PeerId(Role.CARRIER, target.carrier_id)
        self.carrier = carrier_pb2_grpc.CarrierServiceStub(self._channel(pki.GATEWAY, server))
        self.conformance = conformance_pb2_grpc.CarrierConformanceServiceStub(
            self._channel(pki.GATEWAY, server)
        )
        self._world: World | None = None
        self.seed_error = ""
        self._seeded = False

    def _channel(self, peer: PeerId, server: PeerId) -> grpc.aio.Channel:
        channel = pki.secure_channel(self.t.target, self.t.pki_dir, peer, server=server)
        self._channels.append(channel)
        return channel

    async def __aenter__(self) -> CarrierKit:
        return self

    async def prepare(self, check: Check) -> None:
        """Past the gate, seed the kit's number histories (once per run)."""
        if check.gate or self._seeded:
            return
        self._seeded = True
        try:
            self._world = await self._seed()
        except grpc.aio.AioRpcError as exc:
            self.seed_error = f"seeding failed: {exc.code().name}: {exc.details()}"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the kit's channels."""
        for channel in self._channels:
            await channel.close()

    @property
    def world(self) -> World:
        if self._world is None:
            raise CheckFailed(self.seed_error or "no test data")
        return self._world

    def trust(self) -> TrustedState:
        return load_trusted_state(self.t.trust_dir, now=datetime.now(UTC))

    def number(self) -> str:
        """A fresh mobile number (+86, 11 digits) in a block the trust bundle's numbering plan
        gives the carrier under test: only numbers in the plan can be attested."""
        bundle = self.trust().bundle
        ranges = bundle.number_ranges if bundle is not None else {}
        mine = sorted(p for p, c in ranges.items() if c == self.t.carrier_id and len(p) <= 14)
        prefix = mine[0] if mine else "+86139"
        return prefix + "".join(secrets.choice("0123456789") for _ in range(14 - len(prefix)))

    async def _seed(self) -> World:
        me = self.t.carrier_id
        now = _noon(datetime.now(UTC) - timedelta(days=1))
        t0, t1 = now - timedelta(days=1500), now - timedelta(days=900)
        t2 = now - timedelta(days=400)
        p0, p1 = now - timedelta(days=700), now - timedelta(days=200)
        w = World(self.number(), self.number(), self.number(), self.number(), t0, t1, t2, p0, p1)
        tag = secrets.token_hex(4)
        holders = [f"kit{tag}{i}" for i in range(5)]
        subscribers = [
            conformance_pb2.TestSubscriber(
                holder_id=h, name=f"测试{i}", id_number=f"11010119900101{1000 + i}"
            )
            for i, h in enumerate(holders)
        ]
        histories = [
            conformance_pb2.NumberHistory(
                number=w.reassigned,
                events=[
                    _event(_KIND.HISTORY_EVENT_KIND_ASSIGNED, t0, me, holders[0]),
                    _event(_KIND.HISTORY_EVENT_KIND_DEACTIVATED, t1, me),
                    _event(_KIND.HISTORY_EVENT_KIND_ASSIGNED, t2, me, holders[1]),
                ],
            ),
            conformance_pb2.NumberHistory(
                number=w.ported_in,
                events=[
                    _event(_KIND.HISTORY_EVENT_KIND_ASSIGNED, p0, OTHER_CARRIER, holders[2]),
                    _event(_KIND.HISTORY_EVENT_KIND_PORTED, p1, me),
                ],
            ),
            conformance_pb2.NumberHistory(
                number=w.ported_out,
                events=[
                    _event(_KIND.HISTORY_EVENT_KIND_ASSIGNED, p0, me, holders[3]),
                    _event(_KIND.HISTORY_EVENT_KIND_PORTED, p1, OTHER_CARRIER),
                ],
            ),
            conformance_pb2.NumberHistory(
                number=w.given_up,
                events=[
                    _event(_KIND.HISTORY_EVENT_KIND_ASSIGNED, t0, me, holders[4]),
                    _event(_KIND.HISTORY_EVENT_KIND_DEACTIVATED, t1, me),
                ],
            ),
        ]
        await self.conformance.SeedNumberHistory(
            conformance_pb2.SeedNumberHistoryRequest(subscribers=subscribers, histories=histories),
            timeout=CALL_TIMEOUT,
        )
        return w

    async def issue(self, number: str, purpose: Purpose) -> claim_pb2.Envelope:
        answer = await self.conformance.IssueTenureClaim(
            conformance_pb2.IssueTenureClaimRequest(number=number, purpose=purpose.value),
            timeout=CALL_TIMEOUT,
        )
        return answer.claim

    async def port_half_batches(self) -> list[claim_pb2.Envelope]:
        """Every page of ListPortHalves: the signed batches."""
        batches: list[claim_pb2.Envelope] = []
        token = ""
        for _ in range(1000):
            page = await self.carrier.ListPortHalves(
                carrier_pb2.ListPortHalvesRequest(page_token=token), timeout=CALL_TIMEOUT
            )
            if page.HasField("batch"):
                batches.append(page.batch)
            token = page.next_page_token
            if not token:
                break
        return batches

    async def recycled(
        self, number: str, day: date | None = None, *, since: datetime | None = None
    ) -> carrier_pb2.AnswerRecycledCheckResponse:
        request = carrier_pb2.AnswerRecycledCheckRequest(number=number, platform_id=AUDIENCE)
        if day is not None:
            request.specified_date.CopyFrom(to_date(day))
        if since is not None:
            request.since.CopyFrom(to_timestamp(since))
        return await self.carrier.AnswerRecycledCheck(request, timeout=CALL_TIMEOUT)


async def _refused(call: object, code: grpc.StatusCode, what: str) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not code:
            raise CheckFailed(f"{what}: {exc.code().name}, not {code.name}") from None
        return exc.code().name
    raise CheckFailed(f"{what}: answered, not {code.name}")


check = CARRIER_SUITE.check

LONG_LIVED = ClaimPolicy(max_lifetime=timedelta(days=1), max_skew=DEFAULT_MAX_CLOCK_SKEW)
"""For checks about what a claim says (X), not how long it lives: claim_verifies_under_bundle
holds the lifetime to the bundle's."""


def _x(kit: CarrierKit, env: claim_pb2.Envelope) -> datetime:
    """The X of a claim whose signature verifies under the kit's trust files."""
    return verify_tenure_claim(
        Envelope.from_proto(env),
        kit.trust(),
        now=datetime.now(UTC),
        purposes=[Purpose.QUERY_PRIOR],
        policy=LONG_LIVED,
    ).claim.tenure_start


@check(
    "target_reachable",
    "The carrier answers the gateway's mTLS identity at the target with a certificate that "
    "names it, and turns a caller without a client certificate away in the TLS handshake.",
    "Every other check reaches the carrier this way; if this fails, they all would.",
    rules=("CARR-OPS-1", "CARR-OPS-2"),
    gate=True,
)
async def target_reachable(kit: CarrierKit) -> str:
    return await probe_target(kit.t.target, kit.t.pki_dir, PeerId(Role.CARRIER, kit.t.carrier_id))


@check(
    "claim_verifies_under_bundle",
    "Each claim the carrier signs carries one signature by a key of the trust bundle, for its "
    "own carrier id, the number asked and the purpose asked.",
    "Platforms verify every claim themselves; a claim that does not verify is worthless.",
    rules=("CARR-CLAIM-1",),
)
async def claim_verifies_under_bundle(kit: CarrierKit) -> str:
    w = kit.world
    trust = kit.trust()
    done = []
    refs = ("b_" + "1" * 24, "b_" + "2" * 24)
    for purpose in (
        Purpose.QUERY_PRIOR,
        Purpose.RELEASE_PRIOR,
        Purpose.QUERY_OWN,
        Purpose.RELEASE_OWN,
    ):
        answer = await kit.conformance.IssueTenureClaim(
            conformance_pb2.IssueTenureClaimRequest(
                number=w.reassigned,
                purpose=purpose.value,
                binding_refs=refs if purpose is Purpose.RELEASE_OWN else (),
            ),
            timeout=CALL_TIMEOUT,
        )
        v = verify_tenure_claim(
            Envelope.from_proto(answer.claim), trust, now=datetime.now(UTC), purposes=[purpose]
        )
        if v.claim.carrier_id != kit.t.carrier_id or v.carrier_id != kit.t.carrier_id:
            raise CheckFailed(f"the claim speaks for {v.claim.carrier_id!r}")
        if v.claim.number != w.reassigned:
            raise CheckFailed("the claim names another number")
        if purpose is Purpose.RELEASE_OWN and v.claim.binding_refs != refs:
            raise CheckFailed("the RELEASE_OWN claim does not carry exactly the refs picked")
        done.append(purpose.name)
    return f"{', '.join(done)} claims verify"


@check(
    "tenure_start_matches_history",
    "X in a claim is the moment the number was assigned to its current holder, not the first "
    "holder's, nor the deactivation.",
    "Platforms release exactly the bindings made before X; a wrong X hits the wrong holder.",
    rules=("CARR-CLAIM-2",),
)
async def tenure_start_matches_history(kit: CarrierKit) -> str:
    w = kit.world
    x = _x(kit, await kit.issue(w.reassigned, Purpose.QUERY_PRIOR))
    if x != w.t2:
        raise CheckFailed(
            f"X is {x.isoformat()}; the current holder's tenure began {w.t2.isoformat()}"
        )
    return f"X = {x.date()}"


@check(
    "port_keeps_tenure_start",
    "For a number ported in, X is still its assignment at the previous carrier; the port does "
    "not move it.",
    "A port changes the carrier, not the holder: with X at the port, the holder's own accounts "
    "made before it would be released.",
    rules=("CARR-CLAIM-3",),
)
async def port_keeps_tenure_start(kit: CarrierKit) -> str:
    w = kit.world
    x = _x(kit, await kit.issue(w.ported_in, Purpose.QUERY_PRIOR))
    if x != w.p0:
        raise CheckFailed(
            f"X is {x.isoformat()}; the holder was assigned the number {w.p0.isoformat()} "
            f"(ported in {w.p1.isoformat()})"
        )
    return f"X = {x.date()}, the assignment before the port"


@check(
    "no_claim_without_current_holder",
    "The carrier signs no claim for a number it no longer serves (ported out) or that nobody "
    "holds (given up): NOT_FOUND.",
    "A carrier may attest only numbers it serves now, for the holder it has now.",
    rules=("CARR-CLAIM-4",),
)
async def no_claim_without_current_holder(kit: CarrierKit) -> str:
    w = kit.world
    await _refused(
        kit.issue(w.ported_out, Purpose.QUERY_PRIOR), grpc.StatusCode.NOT_FOUND, "ported out"
    )
    await _refused(
        kit.issue(w.given_up, Purpose.QUERY_PRIOR), grpc.StatusCode.NOT_FOUND, "given up"
    )
    return "both refused with NOT_FOUND"


@check(
    "recycled_check_cases",
    "AnswerRecycledCheck says true exactly when the current tenure began after the end of the "
    "day asked about (a gap counts), false from the day X fell on (a port is no change), and "
    "answers the deprecated `since` for its day; each answer is signed, addressed to the "
    "platform asked and names the day asked.",
    "Platforms decide from this one bit whether to distrust a number; each wrong bit either "
    "locks out a holder or lets a stranger in.",
    rules=("CARR-REC-1",),
)
async def recycled_check_cases(kit: CarrierKit) -> str:
    w = kit.world
    trust = kit.trust()
    day = timedelta(days=1)
    cases = [
        ("the day the current tenure began", w.reassigned, w.t2.date(), False),
        ("the day before it", w.reassigned, w.t2.date() - day, True),
        ("during the current tenure", w.reassigned, w.t2.date() + day, False),
        ("during the gap between holders", w.reassigned, w.t1.date() + day, True),
        ("during the previous holder's tenure", w.reassigned, w.t0.date() + day, True),
        ("before a port, same holder", w.ported_in, w.p0.date() + day, False),
        ("after a port", w.ported_in, w.p1.date() + day, False),
    ]
    for what, number, asked, expected in cases:
        answer = await kit.recycled(number, asked)
        v = verify_recycled_claim(
            Envelope.from_proto(answer.answer), trust, now=datetime.now(UTC), audience=AUDIENCE
        )
        if v.claim.number != number or v.claim.specified_date != asked:
            raise CheckFailed(f"{what}: the answer is about another number or date")
        if v.claim.changed is not expected:
            raise CheckFailed(f"{what}: answered changed={v.claim.changed}, expected {expected}")
    # The deprecated since, an hour before X: answered for X's day, so not a change.
    answer = await kit.recycled(w.reassigned, since=w.t2 - timedelta(hours=1))
    v = verify_recycled_claim(
        Envelope.from_proto(answer.answer), trust, now=datetime.now(UTC), audience=AUDIENCE
    )
    if (v.claim.specified_date, v.claim.changed) != (w.t2.date(), False):
        raise CheckFailed("since an hour before X: not answered for X's day")
    return f"{len(cases) + 1} answers right and signed"


@check(
    "recycled_check_refusals",
    "AnswerRecycledCheck refuses a day after the carrier's today or before its history of the "
    "number with OUT_OF_RANGE (ErrorInfo metadata naming the day), and a number it does not "
    "serve with NOT_FOUND.",
    "An answer about a day the carrier knows nothing of is a guess that a platform would take "
    "for the carrier's word.",
    rules=("CARR-REC-2",),
)
async def recycled_check_refusals(kit: CarrierKit) -> str:
    w = kit.world
    day = timedelta(days=1)
    errors = [
        (
            "a day in the future",  # after today in every time zone
            w.reassigned,
            datetime.now(UTC).date() + 2 * day,
            grpc.StatusCode.OUT_OF_RANGE,
        ),
        ("a day before the history", w.reassigned, w.t0.date() - day, grpc.StatusCode.OUT_OF_RANGE),
        ("a number ported out", w.ported_out, w.p0.date() + day, grpc.StatusCode.NOT_FOUND),
        ("an unknown number", kit.number(), w.t0.date(), grpc.StatusCode.NOT_FOUND),
    ]
    for what, number, asked, code in errors:
        await _refused(kit.recycled(number, asked), code, what)
    early = w.t0 - 2 * day
    try:
        await kit.recycled(w.reassigned, since=early)
    except grpc.aio.AioRpcError as exc:
        err = error_from_rpc(exc)
        named = err.metadata.get("specified_date")
        if (err.code, named) != ("OUT_OF_RANGE", early.date().isoformat()):
            raise CheckFailed(
                f"a since before the history: {err.code} naming day {named}"
            ) from None
    else:
        raise CheckFailed("a since before the history: answered, not OUT_OF_RANGE")
    return f"{len(errors) + 1} refusals precise"


@check(
    "served_numbers_listed",
    "ListServedNumbers lists every number the carrier serves now (held, or in its quiet "
    "period) and no number ported away.",
    "The gateway's portability registry, which decides who may attest a number, is seeded from it.",
    rules=("CARR-NUM-1",),
)
async def served_numbers_listed(kit: CarrierKit) -> str:
    w = kit.world
    served: set[str] = set()
    token = ""
    for _ in range(1000):
        page = await kit.carrier.ListServedNumbers(
            carrier_pb2.ListServedNumbersRequest(page_size=500, page_token=token),
            timeout=CALL_TIMEOUT,
        )
        served.update(page.numbers)
        token = page.next_page_token
        if not token:
            break
    missing = {w.reassigned, w.ported_in, w.given_up} - served
    if missing:
        raise CheckFailed(f"{len(missing)} served numbers are not listed")
    if w.ported_out in served:
        raise CheckFailed("a number ported to another carrier is still listed")
    return f"{len(served)} numbers listed, the ported-out one not among them"


@check(
    "port_halves_listed",
    "ListPortHalves lists the carrier's half of each port it took part in, as donor and as "
    "recipient (PORTED with the number, both carriers and the port's moment), each under the "
    "same event_id every time.",
    "Ports made before the federation reach the gateway and the platforms only this way; a "
    "missing half leaves the number with its donor for ever.",
    rules=("CARR-NUM-2",),
)
async def port_halves_listed(kit: CarrierKit) -> str:
    w = kit.world
    me = kit.t.carrier_id

    async def listed() -> dict[tuple[str, str, str, datetime], bytes]:
        found = {}
        for batch in await kit.port_half_batches():
            pb = events_pb2.EventBatch.FromString(batch.payload)
            for e in (LifecycleEvent.from_proto(x) for x in pb.events):
                if e.kind is EventKind.PORTED:
                    found[(e.number, e.from_carrier, e.to_carrier, e.at)] = e.event_id
        return found

    first, second = await listed(), await listed()
    wanted = {
        "the port in (this carrier the recipient)": (w.ported_in, OTHER_CARRIER, me, w.p1),
        "the port out (this carrier the donor)": (w.ported_out, me, OTHER_CARRIER, w.p1),
    }
    for what, half in wanted.items():
        if half not in first:
            raise CheckFailed(f"{what}: its half is not listed")
        if first[half] != second.get(half):
            raise CheckFailed(f"{what}: its half has another event_id when listed again")
    return f"{len(first)} halves listed, both of the kit's ports, ids stable"


@check(
    "event_batch_signed",
    "A lifecycle event batch carries one signature by a key of the trust bundle, names the "
    "carrier, and holds exactly the events published.",
    "Platforms apply events on the carrier's word alone; an unverifiable batch is ignored.",
    rules=("CARR-EVT-1",),
)
async def event_batch_signed(kit: CarrierKit) -> str:
    w = kit.world
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        LifecycleEvent.new(w.reassigned, EventKind.REASSIGNED, now, tenure_start=w.t2),
        LifecycleEvent.new(w.given_up, EventKind.PENDING_RELEASE, now, as_of=now),
        LifecycleEvent.new(w.ported_in, EventKind.DEACTIVATED, now),
    ]
    answer = await kit.conformance.IssueEventBatch(
        conformance_pb2.IssueEventBatchRequest(events=[e.to_proto() for e in events]),
        timeout=CALL_TIMEOUT,
    )
    v = verify_event_batch(Envelope.from_proto(answer.batch), kit.trust(), now=datetime.now(UTC))
    if v.carrier_id != kit.t.carrier_id:
        raise CheckFailed(f"the batch speaks for {v.carrier_id!r}")
    if list(v.events) != events:
        raise CheckFailed("the signed batch does not hold exactly the events asked for")
    halves = 0
    for batch in await kit.port_half_batches():
        h = verify_event_batch(Envelope.from_proto(batch), kit.trust(), now=datetime.now(UTC))
        if h.carrier_id != kit.t.carrier_id:
            raise CheckFailed(f"a batch of port halves speaks for {h.carrier_id!r}")
        halves += len(h.events)
    return f"{len(events)} events and {halves} port halves, each batch's signature verifies"


@check(
    "gateway_only",
    "CarrierService and the conformance service answer only the gateway's mTLS identity; any "
    "other member gets PERMISSION_DENIED.",
    "Recycled checks are rate-limited and audited at the gateway; a direct call would skip both.",
    rules=("CARR-OPS-3",),
)
async def gateway_only(kit: CarrierKit) -> str:
    me = PeerId(Role.CARRIER, kit.t.carrier_id)
    channel = kit._channel(me, me)
    w = kit.world
    await _refused(
        carrier_pb2_grpc.CarrierServiceStub(channel).AnswerRecycledCheck(
            carrier_pb2.AnswerRecycledCheckRequest(
                number=w.reassigned, since=to_timestamp(w.t2), platform_id=AUDIENCE
            ),
            timeout=CALL_TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CarrierService",
    )
    await _refused(
        conformance_pb2_grpc.CarrierConformanceServiceStub(channel).IssueTenureClaim(
            conformance_pb2.IssueTenureClaimRequest(
                number=w.reassigned, purpose=Purpose.QUERY_PRIOR.value
            ),
            timeout=CALL_TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "conformance service",
    )
    return f"{me.uri} refused on both services"


@check(
    "keepalive_pings_accepted",
    "Keepalive pings every 0.5 s are accepted on a connection with no call open and on one "
    "whose only call is a quiet health Watch: the connection stays up, the stream open.",
    "The gateway pings quiet connections to notice a frozen carrier; a carrier that answers "
    "GOAWAY too_many_pings ends the gateway's calls to it.",
    rules=("CARR-OPS-7",),
)
async def keepalive_pings_accepted(kit: CarrierKit) -> str:
    member = PeerId(Role.CARRIER, kit.t.carrier_id)
    return await probe_keepalive(kit.t.target, kit.t.pki_dir, member)


async def run_carrier_kit(
    target: CarrierTarget,
    *,
    only: tuple[str, ...] = (),
    timeout: float = 30.0,
    xfails: Xfails | None = None,
) -> Report:
    """Run the carrier checks (those named in ``only``, if given) against ``target``."""
    unknown = sorted(set(only) - set(CARRIER_SUITE.names))
    if unknown:
        raise InvalidArgument("UNKNOWN_CHECK", f"no such carrier checks: {unknown}")
    report = Report(CARRIER_SUITE.name, f"{target.carrier_id} at {target.target}")
    async with CarrierKit(target) as kit:
        return await CARRIER_SUITE.run(kit, report, only=only, timeout=timeout, xfails=xfails)
