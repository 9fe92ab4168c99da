"""The platform SDK over a real server with mTLS, called as the gateway.

Each item of a batch is answered on its own: good claims get masked summaries, forged, tampered,
expired, mis-scoped and wrong-purpose claims get their own precise status and change nothing.
Releases apply once per claim_id. Only the gateway may call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import status_pb2

from numfed.claims import ClaimPolicy, Purpose, TenureClaim, sign_claim
from numfed.envelope import Envelope, SigningKey
from numfed.identity import PeerId, Role
from numfed.rpc import error_info, ok_status, rpc_error_info
from numfed.summaries import MAX_SUMMARIES_PER_CLAIM
from numfed.v1 import binding_pb2, claim_pb2, platform_pb2
from platform_stubs.store import applied_releases
from tests.platform_stubs.conftest import Running, platform_stub, signed

N1, N2 = "+8613812345678", "+8618611112222"
X1 = datetime(2022, 5, 6, 7, 8, 9, 654321, tzinfo=UTC)
X2 = datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
US = timedelta(microseconds=1)
ROWS = [
    ("wb1000000001", "老王甲", N1, "ACCOUNT_LOGIN", X1 - timedelta(days=400)),
    ("wb1000000002", "阿李乙", N1, "ACCOUNT_RECOVERY", X1 - US),
    ("wb1000000003", "小张丙", N1, "ACCOUNT_LOGIN", X1),
    ("wb1000000004", "小刘丁", N1, "PAYMENT", X1 + US),
    ("wb2000000001", "老陈戊", N2, "ACCOUNT_LOGIN", X2 - timedelta(days=1)),
    ("wb2000000002", "小赵己", N2, "ACCOUNT_LOGIN", X2 + timedelta(days=1)),
]
PRIOR_N1 = {"wb1000000001", "wb1000000002"}
OWN_N1 = {"wb1000000003", "wb1000000004"}
SECRETS = [s for r in ROWS for s in (r[0], r[1])] + [N1, N2, N1[3:], N2[3:]]
TIMEOUT = 5


def outcome(status: status_pb2.Status) -> tuple[int, str]:
    info = error_info(status)
    return status.code, info.reason if info is not None else ""


OK = (grpc.StatusCode.OK.value[0], "")


def code(c: grpc.StatusCode, reason: str) -> tuple[int, str]:
    return c.value[0], reason


def tampered(env: Envelope) -> Envelope:
    pb = claim_pb2.TenureClaim.FromString(env.payload)
    pb.tenure_start.seconds += 86400 * 365  # move X a year later: more would look "prior"
    return replace(env, payload=pb.SerializeToString(deterministic=True))


def query(items: Sequence[tuple[str, Envelope]]) -> platform_pb2.BatchQueryBindingsRequest:
    return platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id=i, claim=e.to_proto()) for i, e in items]
    )


def release(items: Sequence[tuple[str, Envelope]]) -> platform_pb2.BatchReleaseBindingsRequest:
    return platform_pb2.BatchReleaseBindingsRequest(
        items=[platform_pb2.ReleaseItem(item_id=i, claim=e.to_proto()) for i, e in items]
    )


async def active(running: Running, number: str) -> set[str]:
    store = running.platform.store
    found = await store.run(store.bindings_for, [number])
    return {b.account_id for b in found[number] if b.active}


def leaks(message: Any) -> list[str]:
    raw = message.SerializeToString()
    return [s for s in SECRETS if s.encode() in raw]


async def test_a_batch_is_answered_item_by_item(running: Running) -> None:
    await running.seed(ROWS)
    cmcc, cucc = running.signer("cmcc"), running.signer("cucc")
    good_prior = signed(cmcc, number=N1, tenure_start=X1, purpose=Purpose.QUERY_PRIOR)
    items = [
        ("prior", good_prior),
        ("own", signed(cmcc, number=N1, tenure_start=X1, purpose=Purpose.QUERY_OWN)),
        (
            "n2",
            signed(
                cucc, number=N2, tenure_start=X2, purpose=Purpose.QUERY_PRIOR, carrier_id="cucc"
            ),
        ),
        (
            "forged",
            signed(SigningKey.generate(), number=N1, tenure_start=X1, purpose=Purpose.QUERY_PRIOR),
        ),
        ("tampered", tampered(good_prior)),
        (
            "expired",
            signed(
                cmcc,
                number=N1,
                tenure_start=X1,
                purpose=Purpose.QUERY_PRIOR,
                issued=datetime.now(UTC) - timedelta(hours=1),
            ),
        ),
        ("purpose", signed(cmcc, number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)),
        (
            "mismatch",  # says cucc, signed with cmcc's key
            signed(
                cmcc, number=N1, tenure_start=X1, purpose=Purpose.QUERY_PRIOR, carrier_id="cucc"
            ),
        ),
        ("proof", signed(cmcc, number=N1, tenure_start=X1, purpose=Purpose.HOLDER_PROOF)),
    ]
    async with running.channel() as ch:
        answer = await platform_stub(ch).BatchQueryBindings(query(items), timeout=TIMEOUT)

    assert [r.item_id for r in answer.results] == [i for i, _ in items]
    got = {r.item_id: r for r in answer.results}
    assert {i: outcome(r.status) for i, r in got.items()} == {
        "prior": OK,
        "own": OK,
        "n2": OK,
        "forged": code(grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_KEY"),
        "tampered": code(grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
        "expired": code(grpc.StatusCode.UNAUTHENTICATED, "CLAIM_EXPIRED"),
        "purpose": code(grpc.StatusCode.INVALID_ARGUMENT, "WRONG_PURPOSE"),
        "mismatch": code(grpc.StatusCode.PERMISSION_DENIED, "CARRIER_KEY_MISMATCH"),
        "proof": code(grpc.StatusCode.INVALID_ARGUMENT, "WRONG_PURPOSE"),
    }
    for refused in ("forged", "tampered", "expired", "purpose", "mismatch", "proof"):
        assert list(got[refused].bindings) == []

    prior = got["prior"].bindings
    assert len(prior) == len(PRIOR_N1)  # X - 1 µs is prior, X itself is not
    assert {s.kind for s in prior} == {
        binding_pb2.BINDING_KIND_ACCOUNT_LOGIN,
        binding_pb2.BINDING_KIND_ACCOUNT_RECOVERY,
    }
    assert all(s.platform_id == "weibo" and s.count == 1 for s in prior)
    assert all(s.binding_ref == "" for s in prior)  # no handles on a prior holder's accounts
    own = got["own"].bindings
    assert len(own) == len(OWN_N1)
    assert all(s.binding_ref for s in own) and len({s.binding_ref for s in own}) == 2
    assert len(got["n2"].bindings) == 1
    assert leaks(answer) == []
    assert await active(running, N1) == PRIOR_N1 | OWN_N1  # a query changes nothing


async def test_release_prior_applies_once_and_keeps_the_current_holder(running: Running) -> None:
    await running.seed(ROWS)
    cmcc = running.signer("cmcc")
    good = signed(cmcc, number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    cucc = running.signer("cucc")

    def n2(purpose: Purpose, issued: datetime | None = None) -> Envelope:
        return signed(
            cucc, number=N2, tenure_start=X2, carrier_id="cucc", purpose=purpose, issued=issued
        )

    # Issued 2 h ago for 10 min: expired longer ago than the release grace (1 h).
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    items = [
        ("good", good),
        ("purpose", n2(Purpose.QUERY_PRIOR)),
        ("expired", n2(Purpose.RELEASE_PRIOR, two_hours_ago)),
        ("tampered", tampered(n2(Purpose.RELEASE_PRIOR))),
    ]
    async with running.channel() as ch:
        stub = platform_stub(ch)
        first = await stub.BatchReleaseBindings(release(items), timeout=TIMEOUT)
        got = {r.item_id: r for r in first.results}
        assert {i: outcome(r.status) for i, r in got.items()} == {
            "good": OK,
            "purpose": code(grpc.StatusCode.INVALID_ARGUMENT, "WRONG_PURPOSE"),
            "expired": code(grpc.StatusCode.UNAUTHENTICATED, "CLAIM_EXPIRED"),
            "tampered": code(grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
        }
        assert not got["good"].replayed and len(got["good"].released) == len(PRIOR_N1)
        assert await active(running, N1) == OWN_N1  # the binding at exactly X stays
        assert await active(running, N2) == {"wb2000000001", "wb2000000002"}
        assert leaks(first) == []

        again = await stub.BatchReleaseBindings(release([("retry", good)]), timeout=TIMEOUT)
    [replay] = again.results
    assert replay.item_id == "retry" and replay.replayed
    assert outcome(replay.status) == OK
    assert list(replay.released) == list(got["good"].released)
    counts = running.platform.store.counts()
    assert counts["released"] == len(PRIOR_N1)
    assert counts["applied"] == 1 and counts["replays"] == 1
    assert counts["accounts"] == len(ROWS)  # release never deletes an account


async def test_a_release_in_another_carriers_name_is_refused_and_never_replayed(
    running: Running,
) -> None:
    """PLAT-CLAIM-KEY-CARRIER on the release path. Every key here covers all of +86, so only
    the carrier check stops cmcc's key releasing in cucc's name, also when the claim copies the
    claim_id of a release applied before and expired past the grace (the replay path)."""
    await running.seed(ROWS)
    cmcc = running.signer("cmcc")
    now = datetime.now(UTC)
    applied = TenureClaim.new(
        number=N1, carrier_id="cmcc", tenure_start=X1, purpose=Purpose.RELEASE_PRIOR, now=now
    )
    copied = replace(
        applied,
        carrier_id="cucc",
        issued_at=now - timedelta(hours=3),
        expires_at=now - timedelta(hours=3) + timedelta(minutes=10),
    )
    items = [
        ("copied", sign_claim(copied, cmcc)),
        (
            "n2",
            signed(
                cmcc, number=N2, tenure_start=X2, carrier_id="cucc", purpose=Purpose.RELEASE_PRIOR
            ),
        ),
    ]
    async with running.channel() as ch:
        stub = platform_stub(ch)
        first = await stub.BatchReleaseBindings(
            release([("applied", sign_claim(applied, cmcc))]), timeout=TIMEOUT
        )
        assert outcome(first.results[0].status) == OK
        answer = await stub.BatchReleaseBindings(release(items), timeout=TIMEOUT)
    for r in answer.results:
        assert outcome(r.status) == code(grpc.StatusCode.PERMISSION_DENIED, "CARRIER_KEY_MISMATCH")
        info = error_info(r.status)
        assert info is not None and info.metadata["rule"] == "PLAT-CLAIM-KEY-CARRIER"
        assert not r.replayed and list(r.released) == []
    assert await active(running, N2) == {"wb2000000001", "wb2000000002"}
    assert running.platform.store.counts()["replays"] == 0


async def test_own_release_takes_only_the_selected_own_bindings(running: Running) -> None:
    await running.seed(ROWS)
    cmcc = running.signer("cmcc")

    def mine(purpose: Purpose, *refs: str) -> Envelope:
        return signed(cmcc, number=N1, tenure_start=X1, purpose=purpose, binding_refs=refs)

    async with running.channel() as ch:
        stub = platform_stub(ch)
        listed = await stub.BatchQueryBindings(
            query([("q", mine(Purpose.QUERY_OWN))]),
            timeout=TIMEOUT,
        )
        refs = [s.binding_ref for s in listed.results[0].bindings]
        assert len(refs) == 2
        masker = running.platform.servicer.masker
        store = running.platform.store
        bindings = (await store.run(store.bindings_for, [N1]))[N1]
        prior_ref = next(masker.ref(b) for b in bindings if b.account_id in PRIOR_N1)

        picked = mine(Purpose.RELEASE_OWN, refs[0])
        sneaky = mine(Purpose.RELEASE_OWN, refs[1], prior_ref)  # a prior binding smuggled in
        answer = await stub.BatchReleaseBindings(
            release([("picked", picked), ("sneaky", sneaky)]), timeout=TIMEOUT
        )
    got = {r.item_id: r for r in answer.results}
    assert outcome(got["picked"].status) == OK
    assert [s.binding_ref for s in got["picked"].released] == [refs[0]]
    assert outcome(got["sneaky"].status) == code(
        grpc.StatusCode.FAILED_PRECONDITION, "UNKNOWN_BINDING_REF"
    )
    assert list(got["sneaky"].released) == []
    # One own binding released; the other own one and both prior ones untouched.
    left = await active(running, N1)
    assert left >= PRIOR_N1 and len(left & OWN_N1) == 1


@pytest.mark.parametrize(
    ("item_ids", "reason"),
    [
        ([], "EMPTY_BATCH"),
        (["a", "a"], "BAD_ITEM_IDS"),
        (["a", ""], "BAD_ITEM_IDS"),
        ([str(i) for i in range(501)], "BATCH_TOO_LARGE"),
    ],
    ids=["empty", "duplicate", "blank", "501"],
)
async def test_a_bad_batch_is_refused_whole_and_changes_nothing(
    running: Running, item_ids: list[str], reason: str
) -> None:
    await running.seed(ROWS)
    good = signed(running.signer("cmcc"), number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    async with running.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await platform_stub(ch).BatchReleaseBindings(
                release([(i, good) for i in item_ids]), timeout=TIMEOUT
            )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = rpc_error_info(e.value)
    assert info is not None and info.reason == reason
    assert running.platform.store.counts()["released"] == 0
    assert running.platform.store.counts()["applied"] == 0


@pytest.mark.parametrize(
    "caller",
    [PeerId(Role.CARRIER, "cmcc"), PeerId(Role.PLATFORM, "weibo")],
    ids=["carrier", "platform-itself"],
)
async def test_only_the_gateway_may_call(running: Running, caller: PeerId) -> None:
    await running.seed(ROWS)
    good = signed(running.signer("cmcc"), number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    async with running.channel(caller) as ch:
        stub = platform_stub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as q:
            await stub.BatchQueryBindings(query([("q", good)]), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as r:
            await stub.BatchReleaseBindings(release([("r", good)]), timeout=TIMEOUT)
    for e in (q, r):
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == "ROLE_NOT_ALLOWED"
    assert running.platform.store.counts()["released"] == 0


async def test_an_outage_answers_unavailable_and_applies_nothing(running: Running) -> None:
    await running.seed(ROWS)
    running.platform.servicer.knobs.outage = True
    good = signed(running.signer("cmcc"), number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    async with running.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await platform_stub(ch).BatchReleaseBindings(release([("r", good)]), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    info = rpc_error_info(e.value)
    assert info is not None and info.reason == "PLATFORM_OUTAGE"
    assert running.platform.store.counts()["applied"] == 0


async def test_an_answer_lost_to_latency_is_replayed_not_reapplied(running: Running) -> None:
    """The latency knob delays the answer after the work: the caller gives up, the release
    stays applied, and the retry gets the first result back."""
    await running.seed(ROWS)
    running.platform.servicer.knobs.latency_ms = 2000
    good = signed(running.signer("cmcc"), number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    async with running.channel() as ch:
        stub = platform_stub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.BatchReleaseBindings(release([("r", good)]), timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        running.platform.servicer.knobs.latency_ms = 0
        answer = await stub.BatchReleaseBindings(release([("r", good)]), timeout=TIMEOUT)
    [r] = answer.results
    assert outcome(r.status) == OK and r.replayed and len(r.released) == len(PRIOR_N1)
    assert running.platform.store.counts()["applied"] == 1


def test_the_test_claims_cover_both_sides_of_x() -> None:
    """Guard: the rows above straddle X1 by one microsecond each way, and the claims'
    tenure_start survives the proto round trip to the microsecond."""
    assert min(r[4] for r in ROWS if r[0] in OWN_N1) == X1
    assert max(r[4] for r in ROWS if r[0] in PRIOR_N1) == X1 - US
    env = signed(SigningKey.generate(), number=N1, tenure_start=X1, purpose=Purpose.QUERY_PRIOR)
    pb = claim_pb2.TenureClaim.FromString(env.payload)
    assert pb.tenure_start.nanos == X1.microsecond * 1000


async def test_a_replay_after_the_claim_expired_still_returns_the_first_result(
    running: Running,
) -> None:
    """The gateway retries a release until its job deadline, which outlives the claim: when the
    first answer was lost, the retry must get that answer back, not CLAIM_EXPIRED. An expired
    release claim never applied before is applied within the release grace (RELEASE_GRACE)."""
    await running.seed(ROWS)
    skew = ClaimPolicy().max_skew
    t0 = datetime.now(UTC)
    valid_for = timedelta(seconds=1)  # expires_at + skew == t0 + valid_for

    def short_lived(number: str, x: datetime, carrier: str) -> Envelope:
        return signed(
            running.signer(carrier),
            number=number,
            tenure_start=x,
            carrier_id=carrier,
            purpose=Purpose.RELEASE_PRIOR,
            issued=t0 - skew - timedelta(seconds=1),
            lifetime=valid_for + timedelta(seconds=1),
        )

    applied, never = short_lived(N1, X1, "cmcc"), short_lived(N2, X2, "cucc")
    async with running.channel() as ch:
        stub = platform_stub(ch)
        first = await stub.BatchReleaseBindings(release([("a", applied)]), timeout=TIMEOUT)
        assert outcome(first.results[0].status) == OK
        left = t0 + valid_for - datetime.now(UTC)  # let both claims expire
        await asyncio.sleep(max(left.total_seconds(), 0) + 0.05)
        late = await stub.BatchReleaseBindings(
            release([("a", applied), ("n", never)]), timeout=TIMEOUT
        )
    got = {r.item_id: r for r in late.results}
    assert outcome(got["a"].status) == OK and got["a"].replayed
    assert list(got["a"].released) == list(first.results[0].released)
    assert outcome(got["n"].status) == OK and not got["n"].replayed  # late, within the grace
    assert await active(running, N2) == {"wb2000000002"}  # only the binding after X stays


async def test_a_result_stored_before_answers_were_capped_is_replayed_capped(
    running: Running,
) -> None:
    """A release stored with every binding it released listed (as before answers were bounded)
    is replayed merged and capped: however many it released, its replay fits one message."""
    await running.seed(ROWS)
    good = signed(running.signer("cmcc"), number=N1, tenure_start=X1, purpose=Purpose.RELEASE_PRIOR)
    async with running.channel() as ch:
        stub = platform_stub(ch)
        await stub.BatchReleaseBindings(release([("r", good)]), timeout=TIMEOUT)
        legacy = platform_pb2.ReleaseItemResult(
            status=ok_status(),
            released=[
                binding_pb2.BindingSummary(
                    platform_id="weibo",
                    kind=binding_pb2.BINDING_KIND_LABEL,
                    masked_label=f"caller-ID label ***{i:06d} · set 2019",
                    count=1,
                )
                for i in range(200_000)
            ],
        )
        store = running.platform.store
        with store.engine.begin() as c:
            c.execute(sa.update(applied_releases).values(result=legacy.SerializeToString()))
        again = await stub.BatchReleaseBindings(release([("r", good)]), timeout=TIMEOUT)
    [r] = again.results
    assert outcome(r.status) == OK and r.replayed
    assert len(r.released) == MAX_SUMMARIES_PER_CLAIM
    assert sum(s.count for s in r.released) + r.omitted_bindings == 200_000
    assert again.ByteSize() < 16 * 1024
