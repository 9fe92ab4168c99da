"""Platform checks: lifecycle events (``PLAT-EVT``)."""

from __future__ import annotations

from datetime import timedelta

import grpc

from numfed.conformance.gateway import NARROW_PREFIX, OTHER_CARRIER
from numfed.conformance.platform.kit import (
    PLATFORM_SUITE,
    PlatformKit,
    bad_signature,
    now,
)
from numfed.conformance.report import CheckFailed
from numfed.events import EventKind, LifecycleEvent
from numfed.v1 import binding_pb2

check = PLATFORM_SUITE.check


@check(
    "forged_event_batch_ignored",
    "An event batch whose carrier signature does not verify is never applied (and is "
    "acknowledged, since it never will verify).",
    "Anyone on the path could otherwise release or lock accounts with a made-up event.",
    rules=("PLAT-EVT-1",),
)
async def forged_event_batch_ignored(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
    # An altered signature, not a key outside the bundle: an unknown key may be in a newer
    # bundle, and a batch signed with it is not acknowledged until the platform can judge it.
    forged = bad_signature(kit.batch(event))
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
    "event_outside_key_scope_refused",
    "A batch with one event about a number outside the signing key's prefixes, or outside the "
    "numbering plan, is refused whole: none of its events is applied.",
    "A key speaks only for its own numbers, and a batch is one statement: half of it is not true.",
    rules=("PLAT-EVT-2",),
)
async def event_outside_key_scope_refused(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    inside = LifecycleEvent.new(kit.number(NARROW_PREFIX), EventKind.DEACTIVATED, now())
    outside = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
    unplanned = LifecycleEvent.new(kit.number("+86131"), EventKind.DEACTIVATED, now())
    fine = LifecycleEvent.new(kit.number(), EventKind.DEACTIVATED, now())
    await kit.deliver((kit.next_seq(), kit.batch(inside, outside, key=kit.keys.narrow)))
    await kit.deliver((kit.next_seq(), kit.batch(fine, unplanned)))
    applied = set(await kit.applied_events())
    for what, event in (
        ("the in-scope event of a batch with one out of scope", inside),
        ("an event outside the signing key's prefixes", outside),
        ("an event about a number in no range of the plan", unplanned),
        ("the planned event of a batch with one unplanned", fine),
    ):
        if event.event_id in applied:
            raise CheckFailed(f"{what} was applied")
    if await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("an out-of-scope PENDING_RELEASE released a binding")
    return "2 batches refused whole"


@check(
    "event_times_checked",
    "A batch issued in the future, or holding an event time after the batch was signed, is not "
    "applied; a batch that waited two hours in the log is applied all the same.",
    "A future-dated event is a claim about what has not happened; an old one may have waited "
    "for a platform that was away.",
    rules=("PLAT-EVT-3",),
)
async def event_times_checked(kit: PlatformKit) -> str:
    s = await kit.seed(at=False)
    ahead = LifecycleEvent.new(kit.number(), EventKind.DEACTIVATED, now())
    future_x = LifecycleEvent.new(
        s.number, EventKind.REASSIGNED, now(), tenure_start=now() + timedelta(hours=1)
    )
    old = LifecycleEvent.new(kit.number(), EventKind.DEACTIVATED, now() - timedelta(hours=2))
    await kit.deliver(
        (kit.next_seq(), kit.batch(ahead, issued=now() + timedelta(minutes=10))),
    )
    await kit.deliver((kit.next_seq(), kit.batch(future_x)))
    await kit.deliver((kit.next_seq(), kit.batch(old, issued=now() - timedelta(hours=2))))
    applied = set(await kit.applied_events())
    if ahead.event_id in applied:
        raise CheckFailed("a batch issued 10 minutes from now was applied")
    if future_x.event_id in applied:
        raise CheckFailed("a REASSIGNED whose tenure_start lies after its signing was applied")
    if not await kit.sms_login(s.number, s.accounts["before"]):
        raise CheckFailed("a future-dated REASSIGNED locked an account")
    if old.event_id not in applied:
        raise CheckFailed("a batch signed two hours ago was not applied (its age is no reason)")
    return "future times refused, an old batch applied"


@check(
    "events_applied_once",
    "A lifecycle event delivered again (the same batch re-sent, or the same event in a later "
    "batch) is applied once, by its event_id.",
    "Delivery is at-least-once; applying a PENDING_RELEASE twice would release bindings made "
    "since.",
    rules=("PLAT-EVT-4",),
)
async def events_applied_once(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
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
    "Batches are applied in seq order and acknowledged through the last one; seqs with gaps are "
    "fine; a delivery out of order is refused with INVALID_ARGUMENT and nothing in it is applied.",
    "Events about one number only make sense in order (a port before a reassignment, say); "
    "the log's seqs strictly increase but need not be contiguous.",
    rules=("PLAT-EVT-5",),
)
async def events_applied_in_order(kit: PlatformKit) -> str:
    n1, n2, n3 = kit.number(), kit.number(), kit.number()
    t = now()
    e1 = LifecycleEvent.new(n1, EventKind.DEACTIVATED, t)
    e2 = LifecycleEvent.new(n2, EventKind.DEACTIVATED, t)
    e3 = LifecycleEvent.new(n3, EventKind.DEACTIVATED, t)
    s1, s2 = kit.next_seq(gap=3), kit.next_seq(gap=5)
    ack = await kit.deliver((s1, kit.batch(e1, e2)), (s2, kit.batch(e3)))
    if ack.ack_through_seq != s2:
        raise CheckFailed(f"acknowledged {ack.ack_through_seq}, not {s2} (seqs {s1}, {s2})")
    applied = await kit.applied_events()
    mine = [e for e in applied if e in {e1.event_id, e2.event_id, e3.event_id}]
    if mine != [e1.event_id, e2.event_id, e3.event_id]:
        raise CheckFailed(f"events applied in another order (or not at all): {len(mine)} of 3")
    e4 = LifecycleEvent.new(n1, EventKind.DEACTIVATED, t)
    e5 = LifecycleEvent.new(n2, EventKind.DEACTIVATED, t)
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
    return "3 events in order across a gap; the out-of-order delivery refused"


@check(
    "unjudged_batch_held",
    "A batch the platform cannot judge yet (signed by a key only a newer bundle lists) is not "
    "acknowledged (ack_through_seq stops before it) and not applied; delivered again once the "
    "newer bundle is out, it is applied.",
    "A refusal that may be the platform's own staleness is not a verdict: acknowledging the "
    "batch would drop a carrier's event for good.",
    rules=("PLAT-EVT-6",),
)
async def unjudged_batch_held(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    async with kit.fresh_trust():
        before = LifecycleEvent.new(kit.number(), EventKind.DEACTIVATED, now())
        event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
        first, held = kit.next_seq(), kit.next_seq()
        batch = kit.batch(event, key=kit.keys.late)
        ack = await kit.deliver((first, kit.batch(before)), (held, batch))
        if ack.ack_through_seq != first:
            raise CheckFailed(
                f"acknowledged {ack.ack_through_seq}: a batch it could not judge "
                f"({held}) must stop the acknowledgement at {first}"
            )
        if event.event_id in await kit.applied_events():
            raise CheckFailed("the batch it could not judge was applied")
        kit.sim.publish_bundle(kit.bundle(2, with_late=True))
        ack = await kit.deliver((held, batch))
        if ack.ack_through_seq != held:
            raise CheckFailed(
                f"delivered again after the newer bundle came out: acknowledged "
                f"{ack.ack_through_seq}, not {held}"
            )
        if not await kit.released(s.accounts["before"], s.number):
            raise CheckFailed("delivered again after the newer bundle came out, not applied")
    return "held until the newer bundle was out, then applied"


@check(
    "stale_binding_refuses_sms_login",
    "After REASSIGNED(X), no binding made before X (login, recovery or payment) opens its "
    "account with an SMS code alone; bindings made since still do.",
    "Otherwise the number's new holder could log into the previous holder's accounts by SMS.",
    rules=("PLAT-EVT-7",),
)
async def stale_binding_refuses_sms_login(kit: PlatformKit) -> str:
    kinds = (
        binding_pb2.BINDING_KIND_ACCOUNT_LOGIN,
        binding_pb2.BINDING_KIND_ACCOUNT_RECOVERY,
        binding_pb2.BINDING_KIND_PAYMENT,
    )
    s = await kit.seed(before=3, at=False, kinds=kinds)
    old = [r for r in s.accounts if r.startswith("before")]
    for role in old:
        if not await kit.sms_login(s.number, s.accounts[role]):
            raise CheckFailed("before any event, SMS login to the previous holder's account fails")
    event = LifecycleEvent.new(s.number, EventKind.REASSIGNED, now(), tenure_start=s.x)
    await kit.deliver((kit.next_seq(), kit.batch(event)))
    for role, kind in zip(old, kinds, strict=True):
        if await kit.sms_login(s.number, s.accounts[role]):
            name = binding_pb2.BindingKind.Name(kind)
            raise CheckFailed(f"after REASSIGNED, an SMS code still opens a {name} binding")
    if not await kit.sms_login(s.number, s.accounts["after"]):
        raise CheckFailed("after REASSIGNED, the current holder's own account no longer opens")
    return "3 kinds of the previous holder's bindings locked to SMS; the current holder's open"


@check(
    "pending_release_before_as_of_only",
    "PENDING_RELEASE(as_of) releases the number from the bindings made before as_of, and keeps "
    "the one made at as_of and the one after.",
    "An event that arrives late must never touch a binding a new holder made since.",
    rules=("PLAT-EVT-8",),
)
async def pending_release_before_as_of_only(kit: PlatformKit) -> str:
    s = await kit.seed()
    event = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
    await kit.deliver((kit.next_seq(), kit.batch(event)))
    if not await kit.released(s.accounts["before"], s.number):
        raise CheckFailed("the binding made before as_of was not released")
    for role in ("at", "after"):
        if await kit.released(s.accounts[role], s.number) is not False:
            raise CheckFailed(f"the binding made {role} as_of was released (or is gone)")
    return "before as_of released; at and after kept"


@check(
    "deactivated_changes_no_binding",
    "DEACTIVATED changes no binding: nothing is released or marked stale, and an SMS code still "
    "opens the holder's accounts.",
    "A deactivated number rests in its quiet period and may come back to the same holder; only "
    "REASSIGNED and PENDING_RELEASE change bindings.",
    rules=("PLAT-EVT-9",),
)
async def deactivated_changes_no_binding(kit: PlatformKit) -> str:
    s = await kit.seed()
    event = LifecycleEvent.new(s.number, EventKind.DEACTIVATED, now())
    ack = await kit.deliver((seq := kit.next_seq(), kit.batch(event)))
    if ack.ack_through_seq != seq or event.event_id not in await kit.applied_events():
        raise CheckFailed("a DEACTIVATED event was not applied and acknowledged")
    await kit.unchanged(s, "DEACTIVATED")
    if not await kit.sms_login(s.number, s.accounts["after"]):
        raise CheckFailed("after DEACTIVATED, the holder's account no longer opens by SMS")
    return "applied; every binding as it was"


@check(
    "events_from_serving_carrier_only",
    "An event about a number is applied only from its serving carrier: a PENDING_RELEASE or "
    "REASSIGNED signed by another carrier (its own key, naming itself) is not applied.",
    "Lifecycle events come only from the carrier that serves the number; any other carrier's "
    "word would let it release its rival's subscribers' accounts.",
    rules=("PLAT-EVT-10",),
)
async def events_from_serving_carrier_only(kit: PlatformKit) -> str:
    s = await kit.seed(at=False)
    release = LifecycleEvent.new(s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x)
    reassign = LifecycleEvent.new(s.number, EventKind.REASSIGNED, now(), tenure_start=s.x)
    for event in (release, reassign):
        batch = kit.batch(event, key=kit.keys.other, carrier_id=OTHER_CARRIER)
        await kit.deliver((kit.next_seq(), batch))
    applied = set(await kit.applied_events())
    if release.event_id in applied or reassign.event_id in applied:
        raise CheckFailed(f"an event by {OTHER_CARRIER}, which does not serve the number, applied")
    await kit.unchanged(s, f"{OTHER_CARRIER}'s events")
    return f"{OTHER_CARRIER}'s events about a number it does not serve not applied"
