"""A refusal that may be the verifier's own staleness is never final (issue 12, DESIGN.md flow 6).

The cases reported: cmcc rotates its claim key (the next bundle adds the new key) and signs with
the new key while the platforms still hold the old bundle and would not fetch one for an hour.
A release claim must still end FOUND or NONE at every platform (not REFUSED), and an event
batch must still be applied (REASSIGNED makes the previous holder's binding stale: an SMS code
alone no longer opens it). A platform that cannot get the new bundle is shown UNAVAILABLE with
its reason and retried until it can; a batch it cannot judge waits on its dead-letter list
while the stream moves on, and ``numfed platform replay`` applies it once it can. Real servers
with mTLS, the gateway on SQLite and on PostgreSQL, the operator's CLI as its own process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.longrunning import operations_pb2

from carrier_adapters.base import start_carrier
from gateway.breaker import BreakerState
from gateway.server import Gateway
from numfed import pki
from numfed.config import load_carrier_config, load_gateway_config
from numfed.envelope import Envelope, SigningKey
from numfed.events import EventKind, LifecycleEvent
from numfed.identity import PeerId, Role
from numfed.rpc import error_info
from numfed.scenario import demo_scenario
from numfed.testing import until_serving
from numfed.trustfiles import write_envelope
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc, holder_pb2
from tests.helpers.rotation import dead_letters, numfed, rotated, signed_bundle, write_signing_key
from tests.integration.conftest import Federation, start_federation
from tests.integration.holder import PRIOR, HolderApp, metadata, response
from tests.integration.test_journey import holder_app

pytestmark = pytest.mark.timeout(240)

WORLD = demo_scenario()
RECYCLED = WORLD.showcase["recycled_once"]  # cmcc's; the previous holder left accounts
PLATFORMS = ("weibo", "taobao", "xiaomi")
RETRY_LIMIT = 3
RETRY_WINDOW = 8.0
"""Seconds a batch is held at least: time for a platform to fetch a bundle on demand (at most
once a second) while its channel to the restarted gateway reconnects."""
Outcome = gateway_pb2.PlatformOutcome
ANSWERED = {Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE}


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    knobs: dict[str, object] = {
        "trust_refresh": 3600.0,  # the platforms would not fetch a bundle for an hour
        "event_retry_limit": RETRY_LIMIT,
        "event_retry_window": RETRY_WINDOW,
    }
    f = await start_federation(
        tmp_path / "fed",
        platforms=PLATFORMS,
        platform_knobs={
            p: {**knobs, **({"events": "poll"} if p == "xiaomi" else {})} for p in PLATFORMS
        },
        limits={"retry_max_backoff": 0.5},
        database_url=db_url,
    )
    try:
        yield f
    finally:
        await f.stop()


async def restart_gateway(fed: Federation) -> None:
    """Stop the gateway and start it again from its config and trust files; return once every
    carrier is connected to it again."""
    await fed.gateway.stop(0)
    fed.gateway = await Gateway.start(load_gateway_config(fed.layout.gateway_config))
    async with asyncio.timeout(20):
        await fed.gateway.ready.wait()
        for c in fed.carriers.values():
            await c.adapter.channel.channel_ready()
    await until_serving(fed.gateway, fed.running_platforms())


async def rotate_cmcc(fed: Federation, *, gateway_files: bool = True) -> Envelope:
    """cmcc rotates its claim key: the next bundle adds the new key, the gateway verifies with
    it, and cmcc signs with it from its restart on. The platforms are not told.

    ``gateway_files``: the new bundle is written to the trust files and the gateway restarts on
    them (what it serves, GetTrustBundle, is the new bundle). Without: only the gateway's
    verifier takes it and the files it serves stay old, as a replica whose files lag behind.
    Returns the new bundle.
    """
    held = fed.gateway.trust.bundle
    assert held is not None
    key = SigningKey.generate()
    bundle = signed_bundle(fed.layout.pki_dir, rotated(held, "cmcc", key))
    if gateway_files:
        write_envelope(fed.layout.trust_dir / "bundle.pb", bundle)
        await restart_gateway(fed)
    else:
        fed.gateway.trust.update_bundle(bundle, now=datetime.now(UTC))
    write_signing_key(fed.layout.pki_dir, "cmcc", key)
    await fed.carriers["cmcc"].stop(0)
    fed.carriers["cmcc"] = await start_carrier(
        load_carrier_config(fed.layout.carrier_configs["cmcc"])
    )
    assert fed.carriers["cmcc"].adapter.signer.key_id == key.key_id
    for p in PLATFORMS:
        bundle_held = fed.platforms[p].trust.state.bundle
        assert bundle_held is not None and bundle_held.version == held.version
    return bundle


async def publish(fed: Federation, carrier: str, *events: LifecycleEvent) -> int:
    """The carrier signs (with its key of now) and publishes one batch; returns its seq."""
    batch: claim_pb2.Envelope = fed.carriers[carrier].adapter.sign_events(events)
    async with pki.secure_channel(
        fed.layout.gateway_endpoint, fed.layout.pki_dir, PeerId(Role.CARRIER, carrier)
    ) as ch:
        answer = await gateway_pb2_grpc.GatewayServiceStub(ch).PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=batch), timeout=10
        )
    return answer.seq


def old_bindings(platform: str, number: str) -> list[str]:
    """Accounts the previous holders of ``number`` bound on ``platform``."""
    x = WORLD.histories[number].tenure_start(datetime.now(UTC))
    return [
        b.account_id for b in WORLD.bindings_on(platform) if b.number == number and b.bound_at < x
    ]


def reason(result: gateway_pb2.PlatformResult) -> str:
    info = error_info(result.status)
    return info.reason if info is not None else ""


async def watch_until(
    app: HolderApp, name: str, done: Callable[[operations_pb2.Operation], bool]
) -> operations_pb2.Operation:
    """Follow the release until ``done`` says so; fail if it finishes first."""
    call = app.stub.WatchHolderRelease(
        holder_pb2.WatchHolderReleaseRequest(session_token=app.token, name=name), timeout=60
    )
    async for op in call:
        if done(op):
            call.cancel()
            return op
        assert not op.done, f"finished without that: {metadata(op).results}"
    raise AssertionError("the watch ended early")


async def test_a_release_signed_with_a_rotated_key_is_applied_where_the_bundle_is_old(
    fed: Federation,
) -> None:
    await rotate_cmcc(fed)
    app = await holder_app(fed, RECYCLED)
    op = await app.release(PRIOR)
    progress = await app.watch(op.name)
    results = {r.platform_id: r for r in response(progress[-1]).results}
    assert set(results) == set(PLATFORMS)
    for p, r in results.items():
        assert r.outcome in ANSWERED, f"{p}: {Outcome.Name(r.outcome)} {reason(r)}"
        gone = old_bindings(p, RECYCLED)
        assert (r.outcome == Outcome.PLATFORM_OUTCOME_FOUND) == bool(gone)
        left = fed.platforms[p].store.bindings_for([RECYCLED])[RECYCLED]
        assert not any(b.active for b in left if b.account_id in gone)
        held = fed.platforms[p].trust.state.bundle
        assert held is not None and held.version == 2  # it refreshed on UNKNOWN_KEY


async def test_an_event_batch_signed_with_a_rotated_key_is_applied_where_the_bundle_is_old(
    fed: Federation,
) -> None:
    x = WORLD.histories[RECYCLED].tenure_start(datetime.now(UTC))
    takeover = {p: old_bindings(p, RECYCLED) for p in PLATFORMS}
    assert any(takeover.values())
    for p, accounts in takeover.items():
        assert all(fed.platforms[p].store.login_by_sms(RECYCLED, a) for a in accounts)
    await rotate_cmcc(fed)
    event = LifecycleEvent.new(RECYCLED, EventKind.REASSIGNED, x, tenure_start=x)
    await publish(fed, "cmcc", event)
    await fed.events_settled(60)
    for p, accounts in takeover.items():  # weibo and taobao pushed to, xiaomi polls
        store = fed.platforms[p].store
        assert event.event_id in store.applied_event_ids(), f"{p} dropped the batch"
        assert not any(store.login_by_sms(RECYCLED, a) for a in accounts), p
        assert store.dead_letters() == []


async def test_a_platform_that_cannot_get_the_new_bundle_is_retried_and_its_batch_waits(
    fed: Federation,
) -> None:
    bundle = await rotate_cmcc(fed, gateway_files=False)
    app = await holder_app(fed, RECYCLED)

    # A query shows each platform UNAVAILABLE with its reason: it may be behind, so not REFUSED.
    for r in await app.query(PRIOR):
        assert r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE, Outcome.Name(r.outcome)
        assert reason(r) == "UNKNOWN_KEY"

    # A release is retried, each try counted, with the platform's reason meanwhile.
    op = await app.release(PRIOR)

    def retried(o: operations_pb2.Operation) -> bool:
        return all(
            r.attempts >= 2
            and r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
            and reason(r) == "UNKNOWN_KEY"
            for r in metadata(o).results
        )

    await watch_until(app, op.name, retried)

    # An event batch it cannot judge waits on its dead-letter list; the stream moves on.
    other = WORLD.showcase["ported"]  # served by cmcc since a port; old bindings on weibo
    gone = old_bindings("weibo", other)
    assert gone
    x = WORLD.histories[other].tenure_start(datetime.now(UTC))
    stuck = LifecycleEvent.new(other, EventKind.REASSIGNED, x, tenure_start=x)
    stuck_seq = await publish(fed, "cmcc", stuck)
    cucc_number = WORLD.histories_served_by("cucc", datetime.now(UTC))[0].number
    after = LifecycleEvent.new(cucc_number, EventKind.DEACTIVATED, datetime.now(UTC))
    await publish(fed, "cucc", after)
    await fed.events_settled(60)
    for p in PLATFORMS:
        applied = fed.platforms[p].store.applied_event_ids()
        assert after.event_id in applied and stuck.event_id not in applied, p
        [letter] = await dead_letters(fed.layout.platform_configs[p])
        assert letter["seq"] == stuck_seq and letter["reason"] == "UNKNOWN_KEY", p
        assert letter["may_be_stale"] is True and letter["attempts"] >= RETRY_LIMIT, p
    assert all(fed.platforms["weibo"].store.login_by_sms(other, a) for a in gone)
    for p in ("weibo", "taobao"):  # holding a batch is an answer: the breaker stays closed
        assert fed.gateway.links[p].breaker.state is BreakerState.CLOSED

    # The gateway serves the new bundle at last: the release completes, the replay applies.
    write_envelope(fed.layout.trust_dir / "bundle.pb", bundle)
    await restart_gateway(fed)
    final = await watch_until(app, op.name, lambda o: o.done)
    for r in response(final).results:
        assert r.outcome in ANSWERED and r.attempts >= 2, (r.platform_id, Outcome.Name(r.outcome))
    for p in ("weibo", "xiaomi"):
        config = str(fed.layout.platform_configs[p])
        code, out, err = await numfed("platform", "replay", "--config", config, "--all")
        assert code == 0 and f"seq {stuck_seq}: applied" in out, out + err
        assert await dead_letters(fed.layout.platform_configs[p]) == []
        assert stuck.event_id in fed.platforms[p].store.applied_event_ids()
    assert not any(fed.platforms["weibo"].store.login_by_sms(other, a) for a in gone)
    assert [d["seq"] for d in await dead_letters(fed.layout.platform_configs["taobao"])] == [
        stuck_seq
    ]  # not replayed there: still listed, never dropped
