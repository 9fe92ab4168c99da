"""Platform checks: the shape of answers and which refusal wins (``PLAT-ANS``)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import Message

from numfed.claims import Purpose
from numfed.conformance.gateway import OTHER_CARRIER
from numfed.conformance.platform.kit import (
    CALL_TIMEOUT,
    OK,
    PLATFORM_SUITE,
    PlatformKit,
    Seeded,
    _same_items,
    count,
    expect,
    now,
    reason,
    status_code,
)
from numfed.conformance.report import CheckFailed
from numfed.rpc import rpc_error_info
from numfed.staleness import STALE_VERIFIER_REASONS
from numfed.summaries import MAX_SUMMARIES_PER_CLAIM, MAX_SUMMARY_BYTES
from numfed.timeutil import to_timestamp
from numfed.v1 import binding_pb2, claim_pb2, conformance_pb2, platform_pb2

check = PLATFORM_SUITE.check


@check(
    "batch_answered_claim_by_claim",
    "A batch mixing valid and invalid claims is answered item by item, in order, each with its "
    "own status and, when refused, one ErrorInfo of domain numfed.dev; the invalid ones change "
    "nothing.",
    "One holder's bad claim must not fail or leak into the other holders' answers in its batch.",
    rules=("PLAT-ANS-1",),
)
async def batch_answered_claim_by_claim(kit: PlatformKit) -> str:
    a = await kit.seed()
    b = await kit.seed(at=False, after=False)
    # Each refused item breaks a rule that no other check's mistake lets through.
    two_hours = timedelta(hours=2)
    bad_number = kit.claim(a.number, Purpose.QUERY_PRIOR, a.x)
    pb = claim_pb2.TenureClaim.FromString(bad_number.payload)
    pb.number = a.number.removeprefix("+")
    plan: list[tuple[claim_pb2.Envelope, str, int | None]] = [
        (kit.claim(a.number, Purpose.QUERY_PRIOR, a.x), OK, 1),
        (
            kit.claim(a.number, Purpose.QUERY_PRIOR, a.x, lifetime=two_hours),
            "INVALID_ARGUMENT",
            None,
        ),
        (kit.claim(b.number, Purpose.QUERY_PRIOR, b.x), OK, 1),
        (
            kit.claim(b.number, Purpose.QUERY_PRIOR, b.x, key=kit.keys.stranger),
            "UNAUTHENTICATED",
            None,
        ),
        (kit.signed(pb), "INVALID_ARGUMENT", None),
        (kit.claim(a.number, Purpose.QUERY_OWN, a.x), OK, 2),
        (kit.malformed(), "INVALID_ARGUMENT", None),
    ]
    results = await kit.query(*(c for c, _, _ in plan), together=True)
    for i, ((_, code, n), r) in enumerate(zip(plan, results, strict=True)):
        expect(r.status, code, f"query item {i}")
        if n is not None and count(r) != n:
            raise CheckFailed(f"query item {i}: {count(r)} bindings listed, {n} expected")
        if n is None and r.bindings:
            raise CheckFailed(f"query item {i} was refused yet lists bindings")
    rel = await kit.release(
        kit.claim(b.number, Purpose.RELEASE_PRIOR, b.x),
        kit.claim(a.number, Purpose.RELEASE_PRIOR, a.x, key=kit.keys.stranger),
        kit.claim(a.number, Purpose.RELEASE_PRIOR, a.x, lifetime=two_hours),
        together=True,
    )
    expect(rel[0].status, OK, "release item 0")
    expect(rel[1].status, "UNAUTHENTICATED", "release item 1 (a key outside the bundle)")
    expect(rel[2].status, "INVALID_ARGUMENT", "release item 2 (living two hours)")
    if await kit.released(b.accounts["before"], b.number) is False:
        raise CheckFailed("the valid release in the batch was not applied")
    await kit.unchanged(a, "a refused release in the batch")
    return f"{len(plan)} queries and 3 releases answered one by one"


@check(
    "sparse_answers_honoured",
    "Asked for sparse answers (BatchQueryBindingsRequest.sparse_answers), a platform either "
    "answers every item as before, or sets sparse and answers every claim it found bindings "
    "for or refused, in the request's order, leaving out only claims it accepted and found "
    "nothing for. Not asked, it answers every item and never sets sparse.",
    "Silence means 'nothing bound': a found or refused claim left out would hide a previous "
    "holder's bindings, or a refusal, from the holder; an unasked-for sparse answer would "
    "leave a gateway that does not know the shape without an answer.",
    rules=("PLAT-ANS-8",),
)
async def sparse_answers_honoured(kit: PlatformKit) -> str:
    # Judged against the platform's own full answer to the same batch, so that only the shape
    # is checked here (whether each item's verdict is right is the other checks' business).
    found = await kit.seed()
    nothing = await kit.seed(before=0)
    claims = [
        kit.claim(nothing.number, Purpose.QUERY_PRIOR, nothing.x),
        kit.claim(found.number, Purpose.QUERY_PRIOR, found.x),
        kit.claim(found.number, Purpose.QUERY_PRIOR, found.x, key=kit.keys.stranger),
        kit.claim(nothing.number, Purpose.QUERY_PRIOR, nothing.x),
        kit.claim(found.number, Purpose.QUERY_OWN, found.x),
    ]
    ids = [f"s{i}-{secrets.token_hex(3)}" for i in range(len(claims))]
    items = [platform_pb2.QueryItem(item_id=i, claim=c) for i, c in zip(ids, claims, strict=True)]
    try:
        whole = await kit.platform.BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(items=items), timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:  # a whole-batch refusal is PLAT-ANS-1's business
        return f"the batch is refused as a whole ({exc.code().name}): no shape to compare"
    if whole.sparse:
        raise CheckFailed("answered sparsely although the request did not ask for it")
    _same_items(ids, [r.item_id for r in whole.results])
    asked = await kit.platform.BatchQueryBindings(
        platform_pb2.BatchQueryBindingsRequest(items=items, sparse_answers=True),
        timeout=CALL_TIMEOUT,
    )
    got = [r.item_id for r in asked.results]
    if not asked.sparse:
        _same_items(ids, got)
    elif got != [i for i in ids if i in got]:
        raise CheckFailed(f"a sparse answer is not the request's items in order, once each: {got}")
    full = dict(zip(ids, whole.results, strict=True))
    for i, item_id in enumerate(ids):
        r = full[item_id]
        said = f"{status_code(r.status)}, {count(r)} bindings"
        if item_id not in got:
            if status_code(r.status) != OK or count(r):
                raise CheckFailed(
                    f"a sparse answer left out item {i}, which the full one gave ({said})"
                )
            continue
        s = asked.results[got.index(item_id)]
        if (status_code(s.status), count(s)) != (status_code(r.status), count(r)):
            raise CheckFailed(
                f"item {i}: {status_code(s.status)}, {count(s)} bindings in the sparse answer; "
                f"{said} in the full one"
            )
    if not asked.sparse:
        return "answers every item (does not answer sparsely)"
    left = len(ids) - len(got)
    return f"answered sparsely: {len(got)} of {len(ids)} items ({left} found nothing)"


@check(
    "malformed_batch_refused",
    "An empty batch, or one with an empty or repeated item_id, is refused as a whole with "
    "INVALID_ARGUMENT.",
    "Results are matched to holders by item_id; an ambiguous batch would mix them up.",
    rules=("PLAT-ANS-2",),
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
        (
            "an empty item_id",
            platform_pb2.BatchQueryBindingsRequest(
                items=[platform_pb2.QueryItem(item_id="", claim=claim)]
            ),
        ),
    ]
    for what, request in requests:
        try:
            await kit.platform.BatchQueryBindings(request, timeout=CALL_TIMEOUT)  # type: ignore[arg-type]
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                raise CheckFailed(f"{what}: {exc.code().name}, not INVALID_ARGUMENT") from None
            if rpc_error_info(exc) is None:
                raise CheckFailed(f"{what}: refused without a google.rpc.ErrorInfo") from None
        else:
            raise CheckFailed(f"{what} was answered")
    return f"{len(requests)} refused"


@check(
    "refusal_precedence",
    "A claim that breaks several rules gets the first refusal in the spec's order: signature, "
    "form, issuer, time, purpose, serving carrier (a forged claim is UNAUTHENTICATED whatever "
    "else is wrong with it).",
    "The gateway decides whether to retry from the reason; every platform must give the same one.",
    rules=("PLAT-ANS-3",),
)
async def refusal_precedence(kit: PlatformKit) -> str:
    s = await kit.seed()
    two_hours = timedelta(hours=2)
    malformed = claim_pb2.TenureClaim.FromString(
        kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x).payload
    )
    malformed.number = s.number.removeprefix("+")
    # Each pairs an earlier rule that every platform keeps (the kit's broken members included)
    # with a later one, so only the order decides the answer.
    cases = [
        (
            "a release claim by a key outside the bundle, sent to query",
            kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, key=kit.keys.stranger),
            "UNAUTHENTICATED",
            "UNKNOWN_KEY",
        ),
        (
            "a release claim with a malformed number, sent to query",
            kit.signed(malformed),
            "INVALID_ARGUMENT",
            "MALFORMED_NUMBER",
        ),
        (
            "a malformed number signed by an out-of-scope key",
            kit.signed(malformed, key=kit.keys.narrow),
            "INVALID_ARGUMENT",
            "MALFORMED_NUMBER",
        ),
        (
            "a release claim living two hours, sent to query",
            kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x, lifetime=two_hours),
            "INVALID_ARGUMENT",
            "CLAIM_LIFETIME_TOO_LONG",
        ),
        (
            f"a claim living two hours by {OTHER_CARRIER}, which does not serve the number",
            kit.claim(
                s.number,
                Purpose.QUERY_PRIOR,
                s.x,
                key=kit.keys.other,
                carrier_id=OTHER_CARRIER,
                lifetime=two_hours,
            ),
            "INVALID_ARGUMENT",
            "CLAIM_LIFETIME_TOO_LONG",
        ),
    ]
    for what, claim, code, why in cases:
        (r,) = await kit.query(claim)
        expect(r.status, code, what, reason_=why)
    return f"{len(cases)} claims, each refused for its first broken rule"


@check(
    "no_bundle_answer_not_final",
    "A platform that holds no bundle (and cannot fetch one) gives no final answer: the whole "
    "call is UNAVAILABLE, or each item carries a staleness reason such as NO_TRUST_BUNDLE.",
    "The gateway retries a platform that is not ready; a final refusal would lose the "
    "holder's release for good.",
    rules=("PLAT-ANS-4",),
)
async def no_bundle_answer_not_final(kit: PlatformKit) -> str:
    s = await kit.seed()
    async with kit.fresh_trust():
        await kit.conformance.ResetTrust(conformance_pb2.ResetTrustRequest(), timeout=CALL_TIMEOUT)
        kit.sim.serve_raw(roots=[], bundle=None)  # the gateway has nothing to give either
        answers = []
        sends = (
            ("a query", lambda: kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x))),
            ("a release", lambda: kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x))),
        )
        for what, send in sends:
            try:
                (r,) = await send()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise CheckFailed(
                        f"{what} without a bundle: the call failed {exc.code().name}, "
                        "not UNAVAILABLE"
                    ) from None
                answers.append(f"{what}: UNAVAILABLE")
                continue
            if status_code(r.status) == OK or reason(r.status) not in STALE_VERIFIER_REASONS:
                raise CheckFailed(
                    f"{what} without a bundle was answered {status_code(r.status)} "
                    f"{reason(r.status)}: a final answer"
                )
            answers.append(f"{what}: {reason(r.status)}")
        await kit.unchanged(s, "a release without a bundle")
    return "; ".join(answers)


@check(
    "summaries_masked",
    "Answers carry masked summaries only: no account id, nickname or number appears anywhere "
    "in them, and each names this platform.",
    "Minimal disclosure: the gateway and the carrier must learn nothing about anyone's accounts.",
    rules=("PLAT-ANS-5",),
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
    if summaries < 3:
        raise CheckFailed(f"only {summaries} summaries came back; at least 3 were expected")
    return f"{summaries} summaries, none with a raw value"


async def _seed_before(kit: PlatformKit, bindings: Sequence[tuple[str, int]]) -> Seeded:
    """Bind a fresh number to one fresh account per (nickname, kind) of ``bindings``, a second
    apart from 1 June of the year before X's: all before X, all in one calendar year (a masked
    label may name the year)."""
    x = (now() - timedelta(days=30)).replace(microsecond=0)
    s = Seeded(kit.number(), x)
    start = datetime(x.year - 1, 6, 1, tzinfo=UTC)
    accounts, seeded = [], []
    for i, (nickname, kind) in enumerate(bindings):
        account_id = f"acct-many{i}-{secrets.token_hex(6)}"
        s.accounts[f"before{i}"] = account_id
        s.nicknames.append(nickname)
        at = start + timedelta(seconds=i)
        accounts.append(
            conformance_pb2.SeedAccount(
                account_id=account_id, nickname=nickname, created_at=to_timestamp(at)
            )
        )
        seeded.append(
            conformance_pb2.SeedBinding(
                account_id=account_id,
                number=s.number,
                bound_at=to_timestamp(at),
                kind=kind,  # type: ignore[arg-type]
            )
        )
    await kit.conformance.SeedAccounts(
        conformance_pb2.SeedAccountsRequest(accounts=accounts, bindings=seeded),
        timeout=CALL_TIMEOUT,
    )
    return s


def _listed(answer: Message) -> list[binding_pb2.BindingSummary]:
    return list(getattr(answer, "bindings", None) or getattr(answer, "released", None) or [])


@check(
    "summaries_merged",
    "No answer lists two summaries that say the same thing (the same platform, kind and masked "
    "label, without a binding_ref): identical summaries are one, with their count.",
    "A number can be marked by thousands of users with the same caller-ID label; one summary "
    "each would fill the answer with copies and push out everything else.",
    rules=("PLAT-ANS-6",),
)
async def summaries_merged(kit: PlatformKit) -> str:
    text = f"spam-{secrets.token_hex(4)}"  # one caller-ID label text, set by six users
    labels = [(text, binding_pb2.BINDING_KIND_LABEL)] * 6
    logins = [(f"nick-{secrets.token_hex(5)}", binding_pb2.BINDING_KIND_ACCOUNT_LOGIN)] * 2
    s = await _seed_before(kit, labels + logins)
    answers: list[Message] = list(await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x)))
    answers += await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
    listed = 0
    for answer, what in zip(answers, ("QUERY_PRIOR", "RELEASE_PRIOR"), strict=True):
        expect(answer.status, OK, what)  # type: ignore[attr-defined]
        seen: set[tuple[str, int, str]] = set()
        for b in _listed(answer):
            listed += 1
            key = (b.platform_id, b.kind, b.masked_label)
            if not b.binding_ref and key in seen:
                raise CheckFailed(
                    f"{what}: two summaries both say {b.masked_label!r} "
                    f"({binding_pb2.BindingKind.Name(b.kind)}): merge them into one with a count"
                )
            seen.add(key)
    return f"{listed} summaries for 8 bindings (6 of one label), none repeated"


@check(
    "answers_capped",
    "An answer about a number with 150 bindings before X lists at most 100 summaries in at "
    "most 8,000 bytes, and counts the rest in omitted_bindings: the counts and omitted_bindings "
    "add up to 150.",
    "A batch of 500 answers must fit one 4 MiB message; an unbounded answer fails the claim "
    "(PLATFORM_ANSWER_TOO_LARGE) and costs its batch-mates a bisection.",
    rules=("PLAT-ANS-7",),
)
async def answers_capped(kit: PlatformKit) -> str:
    n = 150
    logins = [(f"nick-{secrets.token_hex(5)}", binding_pb2.BINDING_KIND_ACCOUNT_LOGIN)] * n
    s = await _seed_before(kit, logins)
    (query,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x))
    (release,) = await kit.release(kit.claim(s.number, Purpose.RELEASE_PRIOR, s.x))
    for answer, what in ((query, "QUERY_PRIOR"), (release, "RELEASE_PRIOR")):
        expect(answer.status, OK, what)
        listed = _listed(answer)
        # The bytes of the repeated field: each entry's tag, length and body.
        nbytes = sum(1 + _varint_len(b.ByteSize()) + b.ByteSize() for b in listed)
        if len(listed) > MAX_SUMMARIES_PER_CLAIM:
            raise CheckFailed(f"{what}: {len(listed)} summaries listed; at most 100")
        if nbytes > MAX_SUMMARY_BYTES:
            raise CheckFailed(f"{what}: the summaries take {nbytes} bytes; at most 8,000")
        if what == "QUERY_PRIOR" and all(b.count for b in listed) and count(answer) != n:
            # (A count left unset is PLAT-REL-8's to judge.)
            raise CheckFailed(
                f"{what}: the counts and omitted_bindings ({answer.omitted_bindings}) add up "
                f"to {count(answer)}; {n} bindings were made before X"
            )
    return (
        f"{len(query.bindings)} summaries and {query.omitted_bindings} omitted for {n} bindings; "
        f"the release: {len(release.released)} and {release.omitted_bindings}"
    )


def _varint_len(n: int) -> int:
    return max((n.bit_length() + 6) // 7, 1)
