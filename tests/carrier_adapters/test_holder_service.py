"""HolderService over a real server: verification, claims the gateway can verify, releases.

The gateway is a recording fake over real mTLS, so each test sees exactly what the adapter sent
it: a signed claim, and nothing about the holder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from carrier_adapters.base import start_carrier
from carrier_adapters.verification import CODE_WINDOW, CODES_PER_WINDOW
from numfed.claims import (
    Purpose,
    RecycledClaim,
    RecycledQuestion,
    VerifiedClaim,
    verify_tenure_claim,
)
from numfed.envelope import Envelope
from numfed.errors import DeadlineExceeded, PermissionDenied, ResourceExhausted, Unavailable
from numfed.federation import write_trust
from numfed.history import EventKind, NumberEvent, NumberHistory
from numfed.identity import PeerId, Role
from numfed.proof import decode_proof, verify_proof
from numfed.rpc import rpc_error_info
from numfed.scenario import Holder, demo_scenario
from numfed.throttle import AdaptiveThrottle
from numfed.trustfiles import load_trusted_state
from numfed.v1 import claim_pb2, gateway_pb2, holder_pb2, holder_pb2_grpc
from tests.carrier_adapters.conftest import Running, on_port_zero
from tests.integration.holder import OWN, PRIOR, HolderApp, sms_code

WORLD = demo_scenario()
PORTED = WORLD.showcase["ported"]
X_PORTED = datetime(2020, 5, 6, 9, tzinfo=UTC)  # assigned at cucc; ported to cmcc in 2023


def current_holder(number: str) -> Holder:
    tenure = WORLD.histories[number].current_tenure(datetime.now(UTC))
    assert tenure is not None
    return WORLD.holders[tenure.holder_id]


@pytest.fixture
async def channel(running: Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.carriers['cmcc'].holder_port}") as ch:
        yield ch


async def verified(running: Running, channel: grpc.aio.Channel, number: str = PORTED) -> HolderApp:
    return await HolderApp.verified(
        channel, running.state_dir("cmcc"), number, current_holder(number)
    )


def check(running: Running, claim: claim_pb2.Envelope, *purposes: Purpose) -> VerifiedClaim:
    now = running.clock()
    trust = load_trusted_state(running.layout.trust_dir, now=now)
    return verify_tenure_claim(Envelope.from_proto(claim), trust, now=now, purposes=purposes)


async def refused(call: object) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call  # type: ignore[misc]
    info = rpc_error_info(e.value)
    return e.value.code(), info.reason if info else None


async def test_query_sends_a_claim_the_federation_verifies_and_nothing_else(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    result = gateway_pb2.PlatformResult(
        platform_id="weibo", outcome=gateway_pb2.PLATFORM_OUTCOME_NONE
    )
    running.gateway.results = [result]
    assert await app.query(PRIOR) == [result]  # the gateway's answer, unchanged
    assert await app.query(OWN) == [result]

    prior, own = running.gateway.calls
    for call, purpose in ((prior, Purpose.QUERY_PRIOR), (own, Purpose.QUERY_OWN)):
        assert call.peer == PeerId(Role.CARRIER, "cmcc")
        # The holder's deadline (10 s) less a margin; grpc rounds timeouts up on the wire.
        assert call.time_remaining is not None and 9 < call.time_remaining < 10.5
        v = check(running, call.request.claim, purpose)  # type: ignore[attr-defined]
        assert (v.carrier_id, v.claim.number, v.claim.purpose) == ("cmcc", PORTED, purpose)
        assert v.claim.tenure_start == X_PORTED  # X is the assignment, not the port
        assert v.claim.expires_at - v.claim.issued_at == timedelta(seconds=600)
        assert v.claim.binding_refs == ()

    holder = current_holder(PORTED)
    secrets = [holder.name, holder.id_number, sms_code(running.state_dir("cmcc"), PORTED)]
    sent = b"".join(c.request.SerializeToString() for c in running.gateway.calls)
    for secret in secrets:
        assert secret.encode() not in sent


async def test_gateway_call_without_a_holder_deadline_gets_the_default(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    await app.stub.QueryHolderBindings(  # no timeout: the adapter still sets one
        holder_pb2.QueryHolderBindingsRequest(session_token=app.token, scope=PRIOR)
    )
    (call,) = running.gateway.calls
    default = running.carriers["cmcc"].adapter.config.limits.default_call_timeout
    assert call.time_remaining is not None and default - 1 < call.time_remaining < default + 0.5


async def test_confirm_returns_x_of_a_ported_number(
    running: Running, channel: grpc.aio.Channel
) -> None:
    stub = holder_pb2_grpc.HolderServiceStub(channel)
    holder = current_holder(PORTED)
    start = await stub.StartVerification(
        holder_pb2.StartVerificationRequest(
            number=PORTED, name=holder.name, id_number=holder.id_number
        ),
        timeout=5,
    )
    code = sms_code(running.state_dir("cmcc"), PORTED)
    session = await stub.ConfirmVerification(
        holder_pb2.ConfirmVerificationRequest(verification_id=start.verification_id, code=code),
        timeout=5,
    )
    assert session.tenure_start.ToDatetime(tzinfo=UTC) == X_PORTED


async def test_verification_refusals_over_the_wire(
    running: Running, channel: grpc.aio.Channel
) -> None:
    stub = holder_pb2_grpc.HolderServiceStub(channel)
    holder = current_holder(PORTED)

    def start(number: str, name: str = holder.name, id_number: str = holder.id_number) -> object:
        return stub.StartVerification(
            holder_pb2.StartVerificationRequest(number=number, name=name, id_number=id_number),
            timeout=5,
        )

    wrong_id = holder.id_number[:-1] + ("0" if holder.id_number[-1] != "0" else "1")
    assert await refused(start(PORTED, name="冒名")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "HOLDER_NOT_VERIFIED",
    )
    assert await refused(start(PORTED, id_number=wrong_id)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "HOLDER_NOT_VERIFIED",
    )
    assert await refused(start(PORTED, id_number="123")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_ID_NUMBER",
    )
    assert await refused(start("13012345670")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_NUMBER",
    )
    assert await refused(start(WORLD.showcase["fresh"])) == (  # a ctcc number
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_NUMBER",
    )
    assert await refused(
        stub.ConfirmVerification(
            holder_pb2.ConfirmVerificationRequest(verification_id="nope", code="123456"), timeout=5
        )
    ) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
    assert await refused(
        stub.QueryHolderBindings(
            holder_pb2.QueryHolderBindingsRequest(session_token="nope", scope=PRIOR), timeout=5
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED, "NO_SESSION")
    assert running.gateway.calls == []


async def test_the_old_carrier_cannot_verify_a_ported_number(running: Running) -> None:
    holder = current_holder(PORTED)
    port = running.carriers["cucc"].holder_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = holder_pb2_grpc.HolderServiceStub(ch)
        call = stub.StartVerification(
            holder_pb2.StartVerificationRequest(
                number=PORTED, name=holder.name, id_number=holder.id_number
            ),
            timeout=5,
        )
        assert await refused(call) == (grpc.StatusCode.NOT_FOUND, "NUMBER_NOT_SERVED")


async def test_release_selection_rules(running: Running, channel: grpc.aio.Channel) -> None:
    app = await verified(running, channel)

    def release(
        scope: holder_pb2.BindingScope.ValueType, refs: tuple[str, ...] = (), rid: str = "r1"
    ) -> Any:
        return app.stub.ReleaseHolderBindings(
            holder_pb2.ReleaseHolderBindingsRequest(
                session_token=app.token, scope=scope, binding_refs=refs, request_id=rid
            ),
            timeout=5,
        )

    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert await refused(release(OWN)) == (bad, "NO_BINDINGS_SELECTED")
    assert await refused(release(PRIOR, ("wb-1",))) == (bad, "UNEXPECTED_BINDING_REFS")
    assert await refused(release(holder_pb2.BINDING_SCOPE_UNSPECIFIED)) == (bad, "BAD_SCOPE")
    assert await refused(release(PRIOR, rid="")) == (bad, "BAD_REQUEST_ID")
    assert await refused(release(PRIOR, rid="a/b")) == (bad, "BAD_REQUEST_ID")
    assert running.gateway.calls == []

    op = await release(OWN, ("wb-1", "tb-2"))
    (sent,) = running.gateway.of("ReleaseBindings")
    v = check(running, sent.claim, Purpose.RELEASE_OWN)
    assert v.claim.binding_refs == ("wb-1", "tb-2")
    assert v.claim.tenure_start == X_PORTED
    # The gateway sees a keyed hash of (holder, request_id), never the holder's own id.
    assert sent.request_id != "r1" and len(sent.request_id) == 64
    assert op.name == f"operations/{hashlib.sha256(sent.request_id.encode()).hexdigest()[:32]}"


async def test_release_retries_reuse_the_envelope_verbatim(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    first = await app.release(PRIOR, request_id="retry-1")
    running.clock.t += timedelta(minutes=1)  # a new claim would differ in time and id
    again = await app.release(PRIOR, request_id="retry-1")
    other = await app.release(PRIOR, request_id="retry-2")
    sent = running.gateway.of("ReleaseBindings")
    assert len(sent) == 3 and first.name == again.name != other.name
    assert sent[0].claim.SerializeToString() == sent[1].claim.SerializeToString()
    assert sent[2].claim.SerializeToString() != sent[0].claim.SerializeToString()
    assert check(running, sent[0].claim, Purpose.RELEASE_PRIOR).claim.purpose is (
        Purpose.RELEASE_PRIOR
    )

    # The same request_id with another body is refused here, not silently answered.
    call = app.release(OWN, ("wb-1",), request_id="retry-1")
    assert await refused(call) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert len(running.gateway.of("ReleaseBindings")) == 3


async def test_watch_passes_through_only_this_sessions_operations(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    op = await app.release(PRIOR, request_id="w1")
    seen = await app.watch(op.name)
    assert [(o.name, o.done) for o in seen] == [(op.name, False), (op.name, True)]
    (watched,) = running.gateway.of("WatchOperation")
    assert watched.name == op.name

    other = await verified(running, channel)  # the same holder, a new session
    assert await refused(other.watch(op.name)) == (
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
    )
    assert await refused(app.watch("operations/" + "0" * 32)) == (
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
    )
    assert len(running.gateway.of("WatchOperation")) == 1


async def test_gateway_errors_reach_the_holder_with_their_reason(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    running.gateway.fail_with = PermissionDenied("NUMBER_NOT_SERVED", "not served")
    assert await refused(app.query(PRIOR)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NUMBER_NOT_SERVED",
    )


async def test_no_claim_once_the_holder_has_left(
    running: Running, channel: grpc.aio.Channel
) -> None:
    now = running.clock()
    number = "+8613900001111"
    history = NumberHistory(
        number,
        (
            NumberEvent(EventKind.ASSIGNED, now - timedelta(days=400), "cmcc", "leaver"),
            NumberEvent(EventKind.DEACTIVATED, now + timedelta(minutes=5), "cmcc"),
        ),
    )
    holder = Holder("leaver", "赵敏", "110101199001011234")
    running.carriers["cmcc"].adapter.registry.seed([holder], [history])
    app = await HolderApp.verified(channel, running.state_dir("cmcc"), number, holder)
    running.clock.t += timedelta(minutes=10)  # the session lives on; the tenure has ended
    assert await refused(app.query(PRIOR)) == (grpc.StatusCode.NOT_FOUND, "NO_CURRENT_HOLDER")
    assert running.gateway.calls == []


async def test_holder_proof_verifies_offline(running: Running, channel: grpc.aio.Channel) -> None:
    app = await verified(running, channel)
    proof = await app.stub.IssueHolderProof(
        holder_pb2.IssueHolderProofRequest(session_token=app.token), timeout=5
    )
    now = running.clock()
    trust = load_trusted_state(running.layout.trust_dir, now=now)
    proven = verify_proof(proof.token, trust, now=now + timedelta(days=29))
    c = proven.claim
    assert (c.number, c.carrier_id, c.purpose, c.tenure_start) == (
        PORTED,
        "cmcc",
        Purpose.HOLDER_PROOF,
        X_PORTED,
    )
    assert proof.expire_time.ToDatetime(tzinfo=UTC) == c.expires_at == now + timedelta(days=30)
    holder = current_holder(PORTED)
    payload = decode_proof(proof.token).payload
    assert holder.name.encode() not in payload and holder.id_number.encode() not in payload
    assert running.gateway.calls == []  # a proof is the holder's to carry, not the gateway's
    assert await refused(
        app.stub.IssueHolderProof(holder_pb2.IssueHolderProofRequest(session_token="x"), timeout=5)
    ) == (grpc.StatusCode.UNAUTHENTICATED, "NO_SESSION")


async def test_nothing_the_carrier_signs_outlives_its_signing_keys_window(
    running: Running, channel: grpc.aio.Channel
) -> None:
    """The trust bundle held lets cmcc's key sign for 5 more minutes only (a key being
    retired). Verifiers refuse whatever that key signed once its window has closed
    (KEY_OUT_OF_WINDOW), so a holder proof, a query claim and a recycled answer all expire
    with the window, and the holder is told so. The proof used to say it was valid for 30
    days, the claim for 10 minutes."""
    now = running.clock()
    layout = running.layout
    write_trust(
        layout.pki_dir,
        layout.trust_dir,
        now=now,
        carriers=("cmcc", "cucc"),
        validity=timedelta(minutes=5),
    )
    adapter = running.carriers["cmcc"].adapter
    adapter.trust = load_trusted_state(layout.trust_dir, now=now)
    window_ends = now + timedelta(minutes=5)
    app = await verified(running, channel)

    proof = await app.stub.IssueHolderProof(
        holder_pb2.IssueHolderProofRequest(session_token=app.token), timeout=5
    )
    assert proof.expire_time.ToDatetime(tzinfo=UTC) == window_ends
    trust = load_trusted_state(layout.trust_dir, now=now)
    last = window_ends - timedelta(seconds=1)  # the root of this bundle ends then too
    assert verify_proof(proof.token, trust, now=last).claim.expires_at == window_ends

    await app.query(PRIOR)
    (sent,) = running.gateway.of("QueryBindings")
    assert check(running, sent.claim, Purpose.QUERY_PRIOR).claim.expires_at == window_ends

    answer = adapter.answer_recycled(
        PORTED, RecycledQuestion(specified_date=date(2024, 1, 1)), "weibo"
    )
    bit = RecycledClaim.from_proto(claim_pb2.RecycledClaim.FromString(answer.payload))
    assert bit.expires_at == window_ends


def test_holders_request_ids_never_meet_at_the_gateway(running: Running) -> None:
    adapter = running.carriers["cmcc"].adapter
    mine, theirs = (adapter.gateway_request_id(h, "r1") for h in ("holder-a", "holder-b"))
    assert mine != theirs  # the same id from two holders: two jobs, and nobody learns anything
    assert adapter.gateway_request_id("holder-a", "r1") == mine  # a retry finds its job again
    assert len(mine) == 64 and "holder" not in mine


def retry_delay_of(err: grpc.aio.AioRpcError) -> float | None:
    from numfed.rpc import retry_delay

    status = rpc_status.from_call(err)
    return retry_delay(status) if status is not None else None


async def test_a_gateway_refusal_reaches_the_holder_with_its_retry_delay(
    running: Running, channel: grpc.aio.Channel
) -> None:
    """The holder is told when to come back, as the gateway told the adapter (RetryInfo)."""
    app = await verified(running, channel)
    running.gateway.fail_with = ResourceExhausted("OVERLOADED", "busy", retry_after=2.5)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await app.query(PRIOR)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_of(e.value) == 2.5


async def test_while_the_gateway_refuses_most_calls_the_adapter_refuses_a_share_itself(
    running: Running, channel: grpc.aio.Channel
) -> None:
    """Launch day: the gateway refuses every call for overload (RESOURCE_EXHAUSTED, retry in
    2.5 s). After the first twenty, the adapter refuses most holders' calls itself, unsent and
    at once, with the same code, reason and RetryInfo (numfed.throttle); once the refusals are
    out of its window it sends every call again."""
    clock = [1000.0]
    adapter = running.carriers["cmcc"].adapter
    throttle = AdaptiveThrottle(clock=lambda: clock[0], rng=random.Random(1))
    adapter.gateway_throttles["QueryBindings"] = throttle
    app = await verified(running, channel)
    running.gateway.fail_with = ResourceExhausted("OVERLOADED", "busy", retry_after=2.5)
    for _ in range(100):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await app.query(PRIOR)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_error_info(e.value).reason == "OVERLOADED"  # type: ignore[union-attr]
        assert retry_delay_of(e.value) == 2.5
    sent = len(running.gateway.of("QueryBindings"))
    assert 20 <= sent < 50, sent  # the first twenty, then fewer and fewer (p = n / (n + 1))
    running.gateway.fail_with = None
    clock[0] += 61  # the refusals leave the window
    for _ in range(20):
        await app.query(PRIOR)
    assert len(running.gateway.of("QueryBindings")) == sent + 20


async def refused_queries(app: HolderApp, n: int) -> set[tuple[grpc.StatusCode, str | None]]:
    """Make ``n`` queries that all fail; their (code, reason)s."""
    seen = set()
    for _ in range(n):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await app.query(PRIOR)
        info = rpc_error_info(e.value)
        seen.add((e.value.code(), info.reason if info else None))
    return seen


async def test_a_gateway_that_does_not_answer_in_time_is_throttled_as_one_that_refuses(
    running: Running, channel: grpc.aio.Channel
) -> None:
    """A gateway too busy to answer before the deadline (DEADLINE_EXCEEDED) did not take the
    call: it is no accept (SRE: accepts are the calls the server took), so after the first
    twenty the adapter refuses most calls itself. Counted as accepts, a gateway timing out
    every call was sent every one of them."""
    app = await verified(running, channel)
    running.gateway.fail_with = DeadlineExceeded("COMMIT_TIMEOUT", "too slow")
    seen = await refused_queries(app, 100)
    sent = len(running.gateway.of("QueryBindings"))
    assert 20 <= sent < 50, sent
    assert seen == {
        (grpc.StatusCode.DEADLINE_EXCEEDED, "COMMIT_TIMEOUT"),  # the gateway's, passed on
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED"),  # the adapter's own
    }


async def test_refused_queries_do_not_hold_back_releases(
    running: Running, channel: grpc.aio.Channel
) -> None:
    """Launch day: the gateway refuses every query for overload, while its release class (a
    bound of its own, gateway.admission) has room. Releases are throttled apart from queries,
    so each one is sent; one throttle for both refused almost every release here."""
    app = await verified(running, channel)
    running.gateway.fail_with = ResourceExhausted("OVERLOADED", "busy", retry_after=2.5)
    await refused_queries(app, 100)
    assert len(running.gateway.of("QueryBindings")) < 50  # queries are throttled
    running.gateway.fail_with = None  # the release class has room
    ops = [await app.release(PRIOR, request_id=f"launch-{i}") for i in range(5)]
    assert len(running.gateway.of("ReleaseBindings")) == 5 and all(op.name for op in ops)


@pytest.mark.parametrize("where", ["adapter", "gateway"])
async def test_a_retry_refused_for_overload_keeps_the_envelope_of_an_unknown_outcome(
    running: Running, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A release whose first call's outcome is unknown (UNAVAILABLE: the gateway may have made
    the job) is retried while the federation is overloaded: the retry is refused for overload
    by the adapter's throttle, unsent, or by the gateway's admission, before it looked for the
    job. Neither tells whether the job exists, so the envelope is kept: the next retry sends
    the same claim and finds the job. Dropping it signed a new claim under the same request_id,
    which the gateway refuses REQUEST_ID_REUSED for the job it has."""
    app = await verified(running, channel)
    running.gateway.fail_with = Unavailable("DATABASE_UNAVAILABLE", "the commit may have run")
    assert await refused(app.release(PRIOR, request_id="r1")) == (
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    )
    running.clock.t += timedelta(minutes=1)  # a new claim would differ in time and id
    if where == "adapter":
        with monkeypatch.context() as m:
            m.setattr(AdaptiveThrottle, "admit", lambda self: False)
            code = await refused(app.release(PRIOR, request_id="r1"))
    else:
        running.gateway.fail_with = ResourceExhausted("OVERLOADED", "busy", retry_after=1.0)
        code = await refused(app.release(PRIOR, request_id="r1"))
    assert code == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    running.gateway.fail_with = None
    op = await app.release(PRIOR, request_id="r1")
    sent = running.gateway.of("ReleaseBindings")
    assert sent[-1].claim.SerializeToString() == sent[0].claim.SerializeToString()
    assert sent[-1].request_id == sent[0].request_id
    seen = await app.watch(op.name)  # the session holds the operation
    assert seen[-1].done


async def test_too_many_codes_tells_the_holder_when_to_come_back(
    running: Running, channel: grpc.aio.Channel
) -> None:
    stub = holder_pb2_grpc.HolderServiceStub(channel)
    holder = current_holder(PORTED)
    request = holder_pb2.StartVerificationRequest(
        number=PORTED, name=holder.name, id_number=holder.id_number
    )
    for _ in range(CODES_PER_WINDOW):
        await stub.StartVerification(request, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.StartVerification(request, timeout=5)
    assert rpc_error_info(e.value).reason == "TOO_MANY_CODES"  # type: ignore[union-attr]
    assert retry_delay_of(e.value) == CODE_WINDOW.total_seconds()  # the clock stands still


async def test_a_crowd_on_the_holder_channel_is_turned_away_not_queued_forever(
    running: Running,
) -> None:
    """Past its concurrency and queue, the holder channel answers RESOURCE_EXHAUSTED at once
    (with RetryInfo) while the calls it admitted still finish."""
    config = on_port_zero(running.layout, "cmcc", running.gateway_server.port)
    limits = dataclasses.replace(
        config.limits,
        max_concurrent_holder_calls=2,
        max_queued_holder_calls=1,
        admission_queue_wait=30.0,
    )
    handle = await start_carrier(
        dataclasses.replace(config, limits=limits, state_dir=config.state_dir / "crowd"),
        clock=running.clock,
    )
    running.gateway.hold = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.holder_port}") as ch:
            app = await HolderApp.verified(
                ch, handle.adapter.config.state_dir, PORTED, current_holder(PORTED)
            )
            running_calls = [asyncio.create_task(app.query(PRIOR)) for _ in range(2)]
            async with asyncio.timeout(10):
                for _ in running_calls:  # both slots are taken
                    await running.gateway.held.get()
            # Of two more, one waits in the queue (room for one) and one is turned away.
            more = [asyncio.create_task(app.query(PRIOR)) for _ in range(2)]
            done, _ = await asyncio.wait(more, return_when=asyncio.FIRST_COMPLETED, timeout=10)
            (turned_away,) = done
            err = turned_away.exception()
            assert isinstance(err, grpc.aio.AioRpcError)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert rpc_error_info(err).reason == "OVERLOADED"  # type: ignore[union-attr]
            assert retry_delay_of(err) is not None
            running.gateway.hold.set()
            queued = next(t for t in more if t is not turned_away)
            assert await asyncio.gather(*running_calls, queued) == [[], [], []]
    finally:
        running.gateway.hold.set()
        await handle.stop(0)


async def test_preview_shows_the_claim_platforms_receive_before_anything_is_sent(
    running: Running, channel: grpc.aio.Channel
) -> None:
    app = await verified(running, channel)
    preview = await app.stub.PreviewHolderClaim(
        holder_pb2.PreviewHolderClaimRequest(
            session_token=app.token, purpose=claim_pb2.PURPOSE_QUERY_PRIOR
        ),
        timeout=5,
    )
    assert running.gateway.calls == []  # nothing left the carrier
    await app.query(PRIOR)
    (call,) = running.gateway.calls
    sent = claim_pb2.TenureClaim.FromString(call.request.claim.payload)  # type: ignore[attr-defined]
    shown = preview.claim
    # The same statement, field for field, but for the claim's own id (each claim has one).
    assert shown.claim_id and shown.claim_id != sent.claim_id
    shown.ClearField("claim_id")
    sent.ClearField("claim_id")
    assert shown == sent  # the clock stands still in these tests
    assert (shown.number, shown.carrier_id) == (PORTED, "cmcc")
    assert shown.tenure_start.ToDatetime(tzinfo=UTC) == X_PORTED

    proof = await app.stub.PreviewHolderClaim(
        holder_pb2.PreviewHolderClaimRequest(
            session_token=app.token, purpose=claim_pb2.PURPOSE_HOLDER_PROOF
        ),
        timeout=5,
    )
    lifetime = proof.claim.expires_at.ToDatetime() - proof.claim.issued_at.ToDatetime()
    assert lifetime == timedelta(days=30)

    unknown = claim_pb2.Purpose.ValueType(99)
    for purpose in (claim_pb2.PURPOSE_UNSPECIFIED, claim_pb2.PURPOSE_RELEASE_OWN, unknown):
        assert await refused(
            app.stub.PreviewHolderClaim(
                holder_pb2.PreviewHolderClaimRequest(session_token=app.token, purpose=purpose),
                timeout=5,
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_PURPOSE")
    assert await refused(
        app.stub.PreviewHolderClaim(
            holder_pb2.PreviewHolderClaimRequest(
                session_token="nope", purpose=claim_pb2.PURPOSE_QUERY_PRIOR
            ),
            timeout=5,
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED, "NO_SESSION")
