"""Platform checks: what a query lists and what a release touches (``PLAT-REL``)."""

from __future__ import annotations

from datetime import timedelta

from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.conformance.gateway import TEST_CARRIER
from numfed.conformance.platform.kit import (
    OK,
    PLATFORM_SUITE,
    PlatformKit,
    count,
    expect,
    now,
    reason,
    status_code,
)
from numfed.conformance.report import CheckFailed
from numfed.events import EventKind, LifecycleEvent

check = PLATFORM_SUITE.check


@check(
    "release_keeps_current_holder",
    "A prior-holder release never touches a binding made at exactly X or after it "
    "(bound_at < X, strictly).",
    "From X on the number belonged to the current holder: those accounts are theirs.",
    rules=("PLAT-REL-1",),
)
async def release_keeps_current_holder(kit: PlatformKit) -> str:
    s, _ = await kit.ensure_release()
    for role in ("at", "after"):
        if await kit.released(s.accounts[role], s.number) is not False:
            raise CheckFailed(f"the binding made {role} X was released (or its account is gone)")
    return "bindings at and after X kept"


@check(
    "release_frees_binding_before_x",
    "RELEASE_PRIOR removes the number from every binding made before X, keeps the accounts, "
    "and lists what it released.",
    "The new holder must be able to register and receive their own codes; the previous holder "
    "keeps their accounts and their data.",
    rules=("PLAT-REL-2",),
)
async def release_frees_binding_before_x(kit: PlatformKit) -> str:
    s, results = await kit.ensure_release()
    for role in ("before", "before1"):
        state = await kit.released(s.accounts[role], s.number)
        if state is None:
            raise CheckFailed("the release deleted the previous holder's account")
        if not state:
            raise CheckFailed(f"a binding made before X ({role}) is still bound")
    if count(results[0]) < 2:
        raise CheckFailed(f"the answer lists {count(results[0])} released bindings, not 2")
    return "both bindings before X released, accounts kept"


@check(
    "replayed_release_applied_once",
    "A release claim sent again is answered from its first result (replayed = true) and "
    "changes nothing more.",
    "The gateway retries until it hears back; a retry must not release bindings made since.",
    rules=("PLAT-REL-3",),
)
async def replayed_release_applied_once(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    claim = kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x)
    (first,) = await kit.release(claim)
    expect(first.status, OK, "the first release")
    late = await kit.bind(s.number, s.x - timedelta(days=10))
    (second,) = await kit.release(claim)
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
    "release_grace_honoured",
    "A release claim that expired 30 minutes ago is still applied (the grace is an hour), and a "
    "claim applied before is answered from its stored result even past the grace.",
    "The gateway retries a release until the job's deadline, which outlives the claim; a "
    "platform that was down must not lose the holder's release, nor apply it twice.",
    rules=("PLAT-REL-4",),
)
async def release_grace_honoured(kit: PlatformKit) -> str:
    late = await kit.seed(at=False, after=False)
    issued = now() - timedelta(minutes=40)
    (r,) = await kit.release(kit.claim(late.number, Purpose.RELEASE_PRIOR, late.x, issued=issued))
    expect(r.status, OK, "a release claim that expired 30 minutes ago")
    if not await kit.released(late.accounts["before"], late.number):
        raise CheckFailed("the release within its grace was answered OK but not applied")

    s = await kit.seed(at=False, after=False)
    fresh = TenureClaim.new(
        number=s.number,
        carrier_id=TEST_CARRIER,
        tenure_start=s.x,
        purpose=Purpose.RELEASE_PRIOR,
        now=now(),
    )
    (first,) = await kit.release(sign_claim(fresh, kit.keys.good).to_proto())
    expect(first.status, OK, "a fresh release claim")
    t = now() - timedelta(hours=3)
    old = TenureClaim(
        number=s.number,
        carrier_id=TEST_CARRIER,
        tenure_start=s.x,
        purpose=Purpose.RELEASE_PRIOR,
        issued_at=t,
        expires_at=t + timedelta(minutes=10),
        claim_id=fresh.claim_id,
    )
    (again,) = await kit.release(sign_claim(old, kit.keys.good).to_proto())
    expect(again.status, OK, "a claim applied before, now nearly 3 hours past its expiry (replay)")
    if not again.replayed or list(again.released) != list(first.released):
        raise CheckFailed("past the grace, the applied claim was not answered from its result")
    return "applied within the grace; stored result given after it"


async def _own_refs(kit: PlatformKit, number: str, x: object) -> list[str]:
    (own,) = await kit.query(kit.claim(number, Purpose.QUERY_OWN, x))  # type: ignore[arg-type]
    expect(own.status, OK, "QUERY_OWN")
    return [b.binding_ref for b in own.bindings]


@check(
    "release_own_all_or_nothing",
    "RELEASE_OWN releases exactly the bindings whose refs it names; a ref that is unknown, "
    "already released or another number's refuses the whole claim with FAILED_PRECONDITION "
    "UNKNOWN_BINDING_REF, and nothing is released.",
    "The holder picked these bindings one by one; a platform must neither widen nor half-apply "
    "the selection.",
    rules=("PLAT-REL-5",),
)
async def release_own_all_or_nothing(kit: PlatformKit) -> str:
    s = await kit.seed(before=0)
    other = await kit.seed(before=0)
    refs = await _own_refs(kit, s.number, s.x)
    foreign = await _own_refs(kit, other.number, other.x)
    if len(refs) != 2 or len(foreign) != 2:
        raise CheckFailed("QUERY_OWN did not list the two own-tenure bindings with refs")
    for what, picked in (
        ("an unknown ref", [refs[0], "b_" + "0" * 24]),
        ("another number's ref", [refs[0], foreign[0]]),
    ):
        claim = kit.claim(s.number, Purpose.RELEASE_OWN, s.x, refs=picked)
        (r,) = await kit.release(claim)
        expect(
            r.status,
            "FAILED_PRECONDITION",
            f"a selection with {what}",
            reason_="UNKNOWN_BINDING_REF",
        )
        await kit.unchanged(s, f"a refused selection with {what}")
    (one,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_OWN, s.x, refs=[refs[0]]))
    expect(one.status, OK, "a selection of one own binding")
    if count(one) != 1:
        raise CheckFailed(f"releasing one selected binding reports {count(one)} released")
    states = await kit.read(s.accounts["at"], s.accounts["after"])
    released = sum(b.released for st in states.values() for b in st.bindings)
    if released != 1:
        raise CheckFailed(f"releasing one selected binding released {released}")
    (again,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_OWN, s.x, refs=[refs[0]]))
    expect(
        again.status,
        "FAILED_PRECONDITION",
        "a new claim selecting the binding already released",
        reason_="UNKNOWN_BINDING_REF",
    )
    return "2 bad selections refused whole; the good one released exactly its binding"


@check(
    "release_own_refuses_prior_tenure_ref",
    "RELEASE_OWN never releases a binding made before its X, even by a ref the platform gave "
    "for it under an earlier X: FAILED_PRECONDITION UNKNOWN_BINDING_REF.",
    "Own-tenure release is the current holder's; a ref from before X belongs to someone else's "
    "tenure.",
    rules=("PLAT-REL-6",),
)
async def release_own_refuses_prior_tenure_ref(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    earlier = s.x - timedelta(days=800)  # an earlier holder's X: the binding was "own" then
    refs = await _own_refs(kit, s.number, earlier)
    if len(refs) != 1:
        raise CheckFailed(f"QUERY_OWN under an earlier X listed {len(refs)} bindings, not 1")
    (r,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_OWN, s.x, refs=refs))
    if status_code(r.status) == OK and count(r):
        raise CheckFailed("RELEASE_OWN naming a binding made before X released it")
    await kit.unchanged(s, "RELEASE_OWN with a prior-tenure ref")
    return f"the previous holder's binding kept ({status_code(r.status)} {reason(r.status)})"


@check(
    "query_lists_only_before_x",
    "QUERY_PRIOR lists exactly the active bindings made before X (stale ones included, released "
    "ones not), without refs; QUERY_OWN lists those made at or after X, each with a binding_ref.",
    "The previous holder's accounts are the ones to clean up; the current holder's are theirs.",
    rules=("PLAT-REL-7",),
)
async def query_lists_only_before_x(kit: PlatformKit) -> str:
    s = await kit.seed(before=3)
    # The oldest binding released by an event, the other two marked stale by another.
    release = LifecycleEvent.new(
        s.number, EventKind.PENDING_RELEASE, now(), as_of=s.x - timedelta(days=445)
    )
    stale = LifecycleEvent.new(s.number, EventKind.REASSIGNED, now(), tenure_start=s.x)
    first, second = kit.next_seq(), kit.next_seq()
    await kit.deliver((first, kit.batch(release)), (second, kit.batch(stale)))
    if not await kit.released(s.accounts["before2"], s.number):
        raise CheckFailed("setup: PENDING_RELEASE did not release the oldest binding")
    prior, own = await kit.query(
        kit.claim(s.number, Purpose.QUERY_PRIOR, s.x), kit.claim(s.number, Purpose.QUERY_OWN, s.x)
    )
    expect(prior.status, OK, "QUERY_PRIOR")
    expect(own.status, OK, "QUERY_OWN")
    if count(prior) != 2:
        raise CheckFailed(
            f"QUERY_PRIOR listed {count(prior)} bindings; 2 active ones (stale) were made before X"
        )
    if count(own) != 2:
        raise CheckFailed(f"QUERY_OWN listed {count(own)} bindings; 2 were made at or after X")
    if not all(b.binding_ref for b in own.bindings):
        raise CheckFailed("QUERY_OWN summaries carry no binding_ref")
    if any(b.binding_ref for b in prior.bindings):
        raise CheckFailed("QUERY_PRIOR summaries carry binding_refs (own-tenure answers only)")
    return "2 prior (stale) and 2 own bindings; the released one not listed"


@check(
    "summary_counts_add_up",
    "Every BindingSummary has a count of at least 1, and the counts of an answer add up to the "
    "bindings it stands for.",
    "The gateway and the holder read how many accounts a platform holds from the counts.",
    rules=("PLAT-REL-8",),
)
async def summary_counts_add_up(kit: PlatformKit) -> str:
    s = await kit.seed(before=3)
    prior, own = await kit.query(
        kit.claim(s.number, Purpose.QUERY_PRIOR, s.x), kit.claim(s.number, Purpose.QUERY_OWN, s.x)
    )
    (rel,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
    states = await kit.read(*s.accounts.values())
    released = sum(b.released for st in states.values() for b in st.bindings)
    answers: list[tuple[str, list[int], int]] = [
        ("QUERY_PRIOR", [b.count for b in prior.bindings], 3),
        ("QUERY_OWN", [b.count for b in own.bindings], 2),
        ("RELEASE_PRIOR", [b.count for b in rel.released], released),
    ]
    for what, counts, expected in answers:
        if any(c < 1 for c in counts):
            raise CheckFailed(f"{what}: a summary has count {min(counts)}")
        if sum(counts) != expected:
            raise CheckFailed(f"{what}: counts add up to {sum(counts)}, not {expected}")
    return "counts of 3 answers add up to the bindings they stand for"
