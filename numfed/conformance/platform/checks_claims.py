"""Platform checks: how a claim is verified (``PLAT-CLAIM``)."""

from __future__ import annotations

import secrets
from datetime import timedelta

from numfed.claims import RECYCLED_CLAIM_PAYLOAD_TYPE, Purpose
from numfed.conformance.gateway import OTHER_CARRIER, TEST_CARRIER
from numfed.conformance.platform.kit import (
    OK,
    PLATFORM_SUITE,
    PlatformKit,
    bad_signature,
    expect,
    now,
    reason,
    tampered,
)
from numfed.conformance.report import CheckFailed
from numfed.envelope import sign
from numfed.events import EVENT_BATCH_PAYLOAD_TYPE, EventKind, LifecycleEvent
from numfed.timeutil import to_timestamp
from numfed.v1 import claim_pb2

check = PLATFORM_SUITE.check


@check(
    "forged_claim_refused",
    "A claim whose payload was changed after signing, whose signature was altered, or that "
    "was signed by a key outside the bundle is refused with UNAUTHENTICATED.",
    "The gateway is not trusted: only the carrier's signature makes a claim true.",
    rules=("PLAT-CLAIM-1",),
)
async def forged_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    good = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
    forged = [
        ("payload changed after signing", tampered(good)),
        ("signature altered", bad_signature(good)),
        (
            "signed by a key outside the bundle",
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.stranger),
        ),
    ]
    for what, claim in forged:
        (r,) = await kit.query(claim)
        expect(r.status, "UNAUTHENTICATED", what)
        if r.bindings:
            raise CheckFailed(f"{what}: bindings were listed for a forged claim")
    (release,) = await kit.release(bad_signature(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x)))
    expect(release.status, "UNAUTHENTICATED", "release with an altered signature")
    await kit.unchanged(s, "a forged release claim")
    return "3 forged queries and 1 forged release refused"


@check(
    "one_signature_required",
    "A claim with two signatures (one of them valid) or none is refused with UNAUTHENTICATED.",
    "One carrier speaks per claim; with several signatures nobody can say which one does.",
    rules=("PLAT-CLAIM-2",),
)
async def one_signature_required(kit: PlatformKit) -> str:
    s = await kit.seed()
    good = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
    twice = sign(good.payload_type, good.payload, [kit.keys.good, kit.keys.other]).to_proto()
    stranger_too = sign(
        good.payload_type, good.payload, [kit.keys.stranger, kit.keys.good]
    ).to_proto()
    unsigned = claim_pb2.Envelope(payload_type=good.payload_type, payload=good.payload)
    cases = [
        ("signed by two keys of the bundle", twice),
        ("signed by a stranger and a key of the bundle", stranger_too),
        ("with no signature", unsigned),
    ]
    for what, claim in cases:
        (r,) = await kit.query(claim)
        expect(r.status, "UNAUTHENTICATED", what)
    return f"{len(cases)} refused"


@check(
    "claim_payload_type_checked",
    "A properly signed TenureClaim under another payload_type (an event batch's, a recycled "
    "answer's) is refused with UNAUTHENTICATED WRONG_PAYLOAD_TYPE.",
    "The signature covers the type; a verifier that ignores it reads one signed thing as another.",
    rules=("PLAT-CLAIM-3",),
)
async def claim_payload_type_checked(kit: PlatformKit) -> str:
    s = await kit.seed()
    good = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)
    for other in (EVENT_BATCH_PAYLOAD_TYPE, RECYCLED_CLAIM_PAYLOAD_TYPE):
        claim = sign(other, good.payload, [kit.keys.good]).to_proto()
        (r,) = await kit.query(claim)
        expect(r.status, "UNAUTHENTICATED", f"a claim typed {other}", reason_="WRONG_PAYLOAD_TYPE")
    return "refused under 2 other payload types"


@check(
    "carrier_key_mismatch_refused",
    "PLAT-CLAIM-KEY-CARRIER: a claim or event batch counts only if the key that signed it "
    "belongs to the carrier it names. Signed with another carrier's key (valid, in scope, not "
    "revoked), a claim is refused item by item with PERMISSION_DENIED (CARRIER_KEY_MISMATCH) "
    "and changes nothing; an event batch is never applied.",
    "With number portability every carrier's key covers every number: a platform that checks "
    "only the key's prefixes lets each carrier, or anyone with one leaked key, speak for all.",
    rules=("PLAT-CLAIM-KEY-CARRIER",),
)
async def carrier_key_mismatch_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    control = await kit.seed(at=False, after=False)
    mismatched = [
        (f"a claim naming {OTHER_CARRIER} signed by a {TEST_CARRIER} key", OTHER_CARRIER, None),
        (
            f"a claim naming {TEST_CARRIER} signed by an {OTHER_CARRIER} key",
            TEST_CARRIER,
            kit.keys.other,
        ),
    ]
    for what, carrier, key in mismatched:
        (q,) = await kit.query(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, carrier_id=carrier, key=key)
        )
        expect(q.status, "PERMISSION_DENIED", f"query: {what}", reason_="CARRIER_KEY_MISMATCH")
        if q.bindings:
            raise CheckFailed(f"query: {what}: bindings were listed")
    releases = await kit.release(
        kit.claim(control.number, Purpose.RELEASE_PRIOR, control.x),
        *(
            kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, carrier_id=c, key=k)
            for _, c, k in mismatched
        ),
    )
    expect(releases[0].status, OK, "a valid release in the same batch")
    for (what, _, _), r in zip(mismatched, releases[1:], strict=True):
        expect(r.status, "PERMISSION_DENIED", f"release: {what}", reason_="CARRIER_KEY_MISMATCH")
        if r.released:
            raise CheckFailed(f"release: {what}: bindings are reported released")
    await kit.unchanged(s, "a mismatched release")
    if not await kit.released(control.accounts["before"], control.number):
        raise CheckFailed("the valid release in the same batch was not applied")

    e = await kit.seed(at=False, after=False)
    batches = []
    for _, carrier_id, key in mismatched:
        event = LifecycleEvent.new(e.number, EventKind.PENDING_RELEASE, now(), as_of=e.x)
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
    "Once the trust bundle revokes a key, claims it signs are refused with UNAUTHENTICATED "
    "KEY_REVOKED.",
    "Revocation is how the federation contains a stolen carrier key.",
    rules=("PLAT-CLAIM-4",),
)
async def revoked_key_refused(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        s = await kit.seed()
        (before,) = await kit.query(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.doomed)
        )
        expect(before.status, OK, "a claim by the key while the bundle still trusts it")
        await kit.take(
            kit.sim.publish_bundle(kit.bundle(2, revoke_doomed=True)),
            what="the bundle v2 that revokes a key",
        )
        (after,) = await kit.query(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.doomed)
        )
        expect(after.status, "UNAUTHENTICATED", "a claim by the revoked key", reason_="KEY_REVOKED")
        (rel,) = await kit.release(
            kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, key=kit.keys.doomed)
        )
        expect(rel.status, "UNAUTHENTICATED", "a release by the revoked key")
        await kit.unchanged(s, "a release by a revoked key")
    return "accepted while trusted, refused once revoked (KEY_REVOKED)"


@check(
    "out_of_range_key_refused",
    "A claim signed by a key whose number prefixes do not cover the number is refused with "
    "PERMISSION_DENIED KEY_OUT_OF_SCOPE.",
    "Each carrier key may attest only its own numbers; one leaked key must not speak for all.",
    rules=("PLAT-CLAIM-5",),
)
async def out_of_range_key_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.narrow))
    expect(r.status, "PERMISSION_DENIED", "a +86150 key signing a +86139 number")
    if reason(r.status) != "KEY_OUT_OF_SCOPE":
        raise CheckFailed(f"refused with {reason(r.status)}, not KEY_OUT_OF_SCOPE")
    (rel,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, key=kit.keys.narrow))
    expect(rel.status, "PERMISSION_DENIED", "release signed by an out-of-range key")
    await kit.unchanged(s, "a release by an out-of-range key")
    return "refused (KEY_OUT_OF_SCOPE)"


@check(
    "key_window_enforced",
    "A claim signed by a key whose window closed an hour ago, or opens in an hour, is refused "
    "with UNAUTHENTICATED KEY_OUT_OF_WINDOW.",
    "A retired key must sign nothing more, and a key announced ahead of its use nothing yet.",
    rules=("PLAT-CLAIM-6",),
)
async def key_window_enforced(kit: PlatformKit) -> str:
    s = await kit.seed()
    for what, key in (
        ("retired an hour ago", kit.keys.retired),
        ("valid in an hour", kit.keys.early),
    ):
        (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=key))
        expect(r.status, "UNAUTHENTICATED", f"a claim by a key {what}", reason_="KEY_OUT_OF_WINDOW")
    return "both refused (KEY_OUT_OF_WINDOW)"


@check(
    "expired_claim_refused",
    "A query claim past its expiry, and a release claim past its grace that was never applied, "
    "are refused with UNAUTHENTICATED CLAIM_EXPIRED.",
    "A claim outlives its holder's tenure only by minutes; an old one may speak for a former "
    "holder.",
    rules=("PLAT-CLAIM-7",),
)
async def expired_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    old = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, issued=now() - timedelta(minutes=30))
    (r,) = await kit.query(old)
    expect(r.status, "UNAUTHENTICATED", "a claim expired 20 minutes ago", reason_="CLAIM_EXPIRED")
    ancient = kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, issued=now() - timedelta(hours=3))
    (rel,) = await kit.release(ancient)
    expect(
        rel.status,
        "UNAUTHENTICATED",
        "a release claim expired nearly 3 hours ago, never applied",
        reason_="CLAIM_EXPIRED",
    )
    await kit.unchanged(s, "an expired release claim")
    return "refused (CLAIM_EXPIRED)"


@check(
    "future_claim_refused",
    "A claim issued in the future (beyond the bundle's clock skew) is refused with "
    "UNAUTHENTICATED ISSUED_IN_FUTURE.",
    "Post-dated claims would let a stolen signing key act long after it was revoked.",
    rules=("PLAT-CLAIM-8",),
)
async def future_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    later = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, issued=now() + timedelta(minutes=10))
    (r,) = await kit.query(later)
    expect(
        r.status,
        "UNAUTHENTICATED",
        "a claim issued 10 minutes from now",
        reason_="ISSUED_IN_FUTURE",
    )
    return "refused (ISSUED_IN_FUTURE)"


@check(
    "bundle_time_rules_used",
    "Signed times are judged with the rules of the bundle held, not defaults: the kit's bundle "
    "publishes a maximum claim lifetime of 20 min, so a claim living 25 min is refused with "
    "INVALID_ARGUMENT CLAIM_LIFETIME_TOO_LONG, though the default (30 min) would allow it.",
    "The whole federation must judge time alike; the bundle is where the operator says how.",
    rules=("PLAT-CLAIM-9",),
)
async def bundle_time_rules_used(kit: PlatformKit) -> str:
    s = await kit.seed()
    for minutes in (25, 120):
        long = kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, lifetime=timedelta(minutes=minutes))
        (r,) = await kit.query(long)
        expect(
            r.status,
            "INVALID_ARGUMENT",
            f"a claim living {minutes} min",
            reason_="CLAIM_LIFETIME_TOO_LONG",
        )
    return "the bundle's maximum claim lifetime applied"


def _claim_pb(kit: PlatformKit, number: str, purpose: Purpose) -> claim_pb2.TenureClaim:
    t = now()
    return claim_pb2.TenureClaim(
        number=number,
        carrier_id=TEST_CARRIER,
        tenure_start=to_timestamp(t - timedelta(days=30)),
        purpose=purpose.value,
        issued_at=to_timestamp(t),
        expires_at=to_timestamp(t + timedelta(minutes=10)),
        claim_id=secrets.token_bytes(16),
    )


@check(
    "malformed_claim_refused",
    "A properly signed claim with a malformed field (a number not in E.164, a bad carrier id, "
    "no or an unknown purpose, a missing time, expires_at before issued_at, tenure_start after "
    "issued_at, a claim_id not of 16 bytes, refs on a claim that takes none, RELEASE_OWN without "
    "refs or with repeats) is refused with INVALID_ARGUMENT and its precise reason.",
    "A verifier that reads past a malformed field believes something the carrier never signed "
    "in that form.",
    rules=("PLAT-CLAIM-10",),
)
async def malformed_claim_refused(kit: PlatformKit) -> str:
    s = await kit.seed()

    def variant(change: str, purpose: Purpose = Purpose.QUERY_PRIOR) -> claim_pb2.TenureClaim:
        pb = _claim_pb(kit, s.number, purpose)
        if change == "number":
            pb.number = s.number.removeprefix("+")
        elif change == "carrier_id":
            pb.carrier_id = "China Mobile"
        elif change == "no purpose":
            pb.purpose = claim_pb2.PURPOSE_UNSPECIFIED
        elif change == "unknown purpose":
            pb.purpose = 99  # type: ignore[assignment]
        elif change == "no tenure_start":
            pb.ClearField("tenure_start")
        elif change == "expires before issued":
            pb.expires_at.seconds = pb.issued_at.seconds - 60
        elif change == "tenure_start after issued":
            pb.tenure_start.seconds = pb.issued_at.seconds + 3600
        elif change == "short claim_id":
            pb.claim_id = pb.claim_id[:8]
        elif change == "refs on a query":
            pb.binding_refs.append("b_0123456789abcdef01234567")
        elif change == "repeated refs":
            pb.binding_refs.extend(["b_0123456789abcdef01234567"] * 2)
        return pb

    queries = [
        ("a payload that is not a TenureClaim", kit.malformed(), "MALFORMED_CLAIM"),
        *(
            (what, kit.signed(variant(what)), why)
            for what, why in (
                ("number", "MALFORMED_NUMBER"),
                ("carrier_id", "MALFORMED_CLAIM"),
                ("no purpose", "PURPOSE_UNSPECIFIED"),
                ("unknown purpose", "MALFORMED_CLAIM"),
                ("no tenure_start", "MALFORMED_CLAIM"),
                ("expires before issued", "MALFORMED_CLAIM"),
                ("tenure_start after issued", "MALFORMED_CLAIM"),
                ("short claim_id", "MALFORMED_CLAIM"),
                ("refs on a query", "MALFORMED_CLAIM"),
            )
        ),
    ]
    for what, claim, why in queries:
        (r,) = await kit.query(claim)
        expect(r.status, "INVALID_ARGUMENT", f"a claim with {what}", reason_=why)
    releases: list[tuple[str, claim_pb2.TenureClaim, str | None]] = [
        ("RELEASE_OWN without refs", variant("", Purpose.RELEASE_OWN), "NO_BINDINGS_SELECTED"),
        ("RELEASE_OWN with repeated refs", variant("repeated refs", Purpose.RELEASE_OWN), None),
        ("a short claim_id", variant("short claim_id", Purpose.RELEASE_PRIOR), "MALFORMED_CLAIM"),
    ]
    for what, pb, reason_ in releases:
        (rel,) = await kit.release(kit.signed(pb))
        expect(rel.status, "INVALID_ARGUMENT", f"a release claim with {what}", reason_=reason_)
    await kit.unchanged(s, "a malformed release claim")
    return f"{len(queries) + len(releases)} malformed claims refused with their reasons"


@check(
    "number_outside_plan_refused",
    "A claim about a number in no range of the bundle's numbering plan is refused with "
    "PERMISSION_DENIED NUMBER_NOT_IN_PLAN, though the signing key covers it.",
    "Which numbers exist is the carriers' word in the signed plan; nobody may attest others.",
    rules=("PLAT-CLAIM-11",),
)
async def number_outside_plan_refused(kit: PlatformKit) -> str:
    number = kit.number("+86131")
    x = now() - timedelta(days=30)
    (r,) = await kit.query(kit.claim(number, Purpose.QUERY_PRIOR, x))
    expect(r.status, "PERMISSION_DENIED", "a +86131 number", reason_="NUMBER_NOT_IN_PLAN")
    return "refused (NUMBER_NOT_IN_PLAN)"


@check(
    "serving_carrier_required",
    "A claim counts only from the number's serving carrier: the plan's range holder, until both "
    "the donor's and the recipient's PORTED halves are in; otherwise PERMISSION_DENIED "
    "NUMBER_NOT_SERVED. The port touches no binding.",
    "A carrier may attest only numbers it serves now, and no single carrier can move a number.",
    rules=("PLAT-CLAIM-12",),
)
async def serving_carrier_required(kit: PlatformKit) -> str:
    s = await kit.seed()

    async def answer(carrier: str) -> object:
        key = kit.keys.other if carrier == OTHER_CARRIER else kit.keys.good
        (r,) = await kit.query(
            kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, carrier_id=carrier, key=key)
        )
        return r.status

    expect(await answer(TEST_CARRIER), OK, f"{TEST_CARRIER}, the range holder")
    expect(
        await answer(OTHER_CARRIER),
        "PERMISSION_DENIED",
        f"{OTHER_CARRIER} before any port",
        reason_="NUMBER_NOT_SERVED",
    )
    at = now() - timedelta(hours=1)
    halves = []
    for carrier, key in ((TEST_CARRIER, kit.keys.good), (OTHER_CARRIER, kit.keys.other)):
        half = LifecycleEvent.new(
            s.number, EventKind.PORTED, at, from_carrier=TEST_CARRIER, to_carrier=OTHER_CARRIER
        )
        halves.append((kit.next_seq(), kit.batch(half, carrier_id=carrier, key=key)))
    await kit.deliver(halves[0])
    expect(
        await answer(OTHER_CARRIER),
        "PERMISSION_DENIED",
        f"{OTHER_CARRIER} with only the donor's half in",
        reason_="NUMBER_NOT_SERVED",
    )
    ack = await kit.deliver(halves[1])
    if ack.ack_through_seq != halves[1][0]:
        raise CheckFailed("the recipient's half was not acknowledged")
    expect(await answer(OTHER_CARRIER), OK, f"{OTHER_CARRIER} once both halves are in")
    expect(
        await answer(TEST_CARRIER),
        "PERMISSION_DENIED",
        f"{TEST_CARRIER} after the port",
        reason_="NUMBER_NOT_SERVED",
    )
    await kit.unchanged(s, "a port")
    return "range holder, then the recipient once both halves were in"


@check(
    "wrong_purpose_refused",
    "A claim is used only for its purpose: release or proof claims are refused by "
    "BatchQueryBindings and query claims by BatchReleaseBindings, with INVALID_ARGUMENT "
    "WRONG_PURPOSE.",
    "Least privilege: a holder who asked only to look must never cause a release.",
    rules=("PLAT-CLAIM-13",),
)
async def wrong_purpose_refused(kit: PlatformKit) -> str:
    s = await kit.seed()
    for purpose in (Purpose.RELEASE_PRIOR, Purpose.HOLDER_PROOF):
        (r,) = await kit.query(kit.claim(s.number, purpose, s.x))
        expect(r.status, "INVALID_ARGUMENT", f"{purpose.name} claim sent to query")
    for purpose in (Purpose.QUERY_PRIOR, Purpose.HOLDER_PROOF):
        (rel,) = await kit.release(kit.claim(s.number, purpose, s.x))
        expect(rel.status, "INVALID_ARGUMENT", f"{purpose.name} claim sent to release")
    await kit.unchanged(s, "a misused claim")
    return "4 misused claims refused, nothing released"
