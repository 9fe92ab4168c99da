"""The holder's journey end to end over real servers: verify, query, release, query again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from gateway.audit import read_chain
from gateway.schema import audit_log
from numfed.claims import RELEASE_GRACE
from numfed.scenario import demo_scenario
from numfed.v1 import gateway_pb2
from tests.integration.conftest import Federation
from tests.integration.holder import OWN, PRIOR, HolderApp, counts, metadata, response

Outcome = gateway_pb2.PlatformOutcome
WORLD = demo_scenario()


def expected(number: str) -> tuple[dict[str, int], dict[str, int]]:
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    prior: dict[str, int] = {}
    own: dict[str, int] = {}
    for b in WORLD.bindings:
        if b.number == number:
            side = prior if b.bound_at < x else own
            side[b.platform_id] = side.get(b.platform_id, 0) + 1
    return prior, own


async def holder_app(fed: Federation, number: str) -> HolderApp:
    now = datetime.now(UTC)
    history = WORLD.histories[number]
    carrier = history.carrier_at(now)
    tenure = history.current_tenure(now)
    assert carrier is not None and tenure is not None
    channel = fed.holder_channel(carrier)
    state = fed.layout.root / "state" / f"carrier-{carrier}"
    return await HolderApp.verified(channel, state, number, WORLD.holders[tenure.holder_id])


@pytest.mark.parametrize("label", ["recycled_once", "recycled_twice", "ported", "fresh"])
async def test_holders_journey(federation: Federation, label: str) -> None:
    number = WORLD.showcase[label]
    prior, own = expected(number)
    app = await holder_app(federation, number)

    found = await app.query(PRIOR)
    assert len(found) == len(federation.platforms)
    assert counts(found) == prior

    op = await app.release(PRIOR)
    progress = await app.watch(op.name)
    assert progress[-1].done
    done = response(progress[-1])
    assert {r.platform_id for r in done.results} == set(federation.platforms)
    assert counts(list(done.results)) == prior
    assert all(
        r.outcome in (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
        for r in done.results
    )

    again = await app.query(PRIOR)
    assert counts(again) == {}
    assert counts(await app.query(OWN)) == own  # the current holder's bindings are untouched

    # Every claim and delivery was audited, under pseudonyms only, in an intact chain.
    await federation.gateway.audit.flush()
    report = read_chain(federation.gateway.store.engine)
    assert report.ok and report.entries >= 4 + 7
    with federation.gateway.store.engine.connect() as conn:
        logged = " ".join(str(tuple(r)) for r in conn.execute(sa.select(audit_log)))
    assert number not in logged and number[1:] not in logged

    # Accounts are never deleted: every seeded account is still there.
    for p, handle in federation.platforms.items():
        c = handle.store.counts()
        assert c["accounts"] == len(WORLD.bindings_on(p))


async def test_own_release_takes_only_the_selected_binding(federation: Federation) -> None:
    number = WORLD.showcase["ported"]
    app = await holder_app(federation, number)
    mine = await app.query(OWN)
    refs = [b.binding_ref for r in mine for b in r.bindings]
    assert len(refs) == 3 and all(refs)
    op = await app.release(OWN, refs=(refs[0],))
    last = (await app.watch(op.name))[-1]
    assert sum(b.count for r in response(last).results for b in r.bindings) == 1
    assert sum(counts(await app.query(OWN)).values()) == 2


async def test_own_release_without_selection_is_refused(federation: Federation) -> None:
    app = await holder_app(federation, WORLD.showcase["fresh"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await app.release(OWN, refs=())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retried_release_request_is_one_operation(federation: Federation) -> None:
    app = await holder_app(federation, WORLD.showcase["recycled_twice"])
    first = await app.release(PRIOR, request_id="same-request")
    again = await app.release(PRIOR, request_id="same-request")
    assert again.name == first.name
    # The job retries no longer than platforms accept its claim: expiry + RELEASE_GRACE.
    meta = metadata(first)
    span = meta.deadline.ToDatetime() - meta.create_time.ToDatetime()
    assert span <= timedelta(seconds=600) + RELEASE_GRACE + timedelta(seconds=5)
    await app.watch(first.name)
    applied = sum(h.store.counts()["applied"] for h in federation.platforms.values())
    assert applied == len(federation.platforms)  # one application per platform, not two


async def test_holder_takes_away_a_proof_anyone_can_check_offline(
    federation: Federation,
) -> None:
    from numfed.proof import verify_proof
    from numfed.trustfiles import load_trusted_state
    from numfed.v1 import holder_pb2

    number = WORLD.showcase["ported"]
    app = await holder_app(federation, number)
    issued = await app.stub.IssueHolderProof(
        holder_pb2.IssueHolderProofRequest(session_token=app.token), timeout=5
    )
    now = datetime.now(UTC)
    proven = verify_proof(
        issued.token, load_trusted_state(federation.layout.trust_dir, now=now), now=now
    )
    assert proven.claim.number == number
    assert proven.claim.tenure_start == WORLD.histories[number].tenure_start(now)


async def test_labels_cleared_only_when_set_before_x(federation: Federation) -> None:
    number = WORLD.showcase["recycled_once"]
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    labels = [b for b in WORLD.bindings_on("labels") if b.number == number]
    assert {b.bound_at < x for b in labels} == {True, False}  # some before X, some after
    app = await holder_app(federation, number)
    op = await app.release(PRIOR)
    await app.watch(op.name)
    stored = federation.platforms["labels"].store.bindings_for([number])[number]
    assert sorted(b.nickname for b in stored if b.active) == sorted(
        b.nickname for b in labels if b.bound_at >= x
    )
    assert len(stored) == len(labels)  # cleared labels leave the number, not the records
