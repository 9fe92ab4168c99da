"""A refusal that may be the platform's own staleness is never final (DESIGN.md, flow 6).

One real platform (mTLS, port 0) behind a stand-in gateway that serves the trust bundle a test
chooses. cmcc rotates its key: bundle v2 adds the new key, the platform still holds v1. A claim
or an event batch signed with the new key makes the platform refresh and judge again; a batch it
still cannot judge is held (not acknowledged, nor anything after it), then after the bounded
retries set aside on the dead-letter list, which the operator lists and replays through the
``numfed platform`` CLI (a real process) once the platform can get the right bundle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import status_pb2

from numfed import pki
from numfed.claims import Purpose
from numfed.envelope import Envelope, SigningKey
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout
from numfed.rpc import error_info
from numfed.trust import sign_bundle
from numfed.v1 import claim_pb2, events_pb2, platform_pb2
from platform_stubs.reference import PlatformHandle
from tests.helpers.rotation import dead_letters, numfed, rotated
from tests.platform_stubs.conftest import (
    WEIBO,
    TrustGateway,
    platform_stub,
    signed,
    start_trust_gateway,
    start_weibo,
)

N = "+8613812345678"
X = datetime(2022, 7, 1, tzinfo=UTC)
OLD, MINE = "wb-old", "wb-mine"
ROWS = [
    (OLD, "老王", N, "ACCOUNT_LOGIN", X - timedelta(days=400)),
    (MINE, "小张", N, "ACCOUNT_LOGIN", X + timedelta(days=1)),
]
TIMEOUT = 10
RETRY_LIMIT = 3


@dataclass
class Stale:
    """Weibo holding bundle v1 while bundle v2 (cmcc's new key added) exists."""

    layout: FederationLayout
    platform: PlatformHandle
    gateway: TrustGateway
    new_key: SigningKey
    v2: claim_pb2.Envelope

    def channel(self) -> grpc.aio.Channel:
        return pki.secure_channel(
            f"127.0.0.1:{self.platform.port}", self.layout.pki_dir, pki.GATEWAY, server=WEIBO
        )

    def old_key(self, carrier: str = "cmcc") -> SigningKey:
        return pki.load_carrier_signer(self.layout.pki_dir, carrier)

    async def deliver(self, *batches: tuple[int, claim_pb2.Envelope]) -> int:
        async with self.channel() as ch:
            answer = await platform_stub(ch).DeliverEvents(
                platform_pb2.DeliverEventsRequest(
                    batches=[events_pb2.SequencedBatch(seq=s, batch=b) for s, b in batches]
                ),
                timeout=TIMEOUT,
            )
        return answer.ack_through_seq

    def login(self, account: str = OLD) -> bool:
        return self.platform.store.login_by_sms(N, account)

    def applied(self) -> set[bytes]:
        return set(self.platform.store.applied_event_ids())


@pytest.fixture
async def stale(layout: FederationLayout) -> AsyncIterator[Stale]:
    fake, gw = await start_trust_gateway(layout)
    platform = await start_weibo(
        layout,
        gw.port,
        trust_refresh=3600.0,  # no routine fetch during the test
        event_retry_limit=RETRY_LIMIT,
        event_retry_window=0.0,
    )
    try:
        await asyncio.wait_for(platform.trust.ready.wait(), 10)
        v1 = platform.trust.state.bundle
        assert v1 is not None
        new_key = SigningKey.generate()
        signers = pki.load_root_signers(layout.pki_dir)[:2]
        v2 = sign_bundle(rotated(v1, "cmcc", new_key), signers).to_proto()
        await platform.store.run(platform.store.seed, ROWS)
        yield Stale(layout, platform, fake, new_key, v2)
    finally:
        await platform.stop(0)
        await gw.stop(0)


def reason(status: status_pb2.Status) -> str:
    info = error_info(status)
    return info.reason if info is not None else ""


def batch(key: SigningKey, *events: LifecycleEvent, carrier: str = "cmcc") -> claim_pb2.Envelope:
    return sign_event_batch(carrier, events, key, now=datetime.now(UTC)).to_proto()


def reassigned() -> LifecycleEvent:
    return LifecycleEvent.new(N, EventKind.REASSIGNED, X, tenure_start=X)


def deactivated(number: str = N) -> LifecycleEvent:
    return LifecycleEvent.new(number, EventKind.DEACTIVATED, datetime.now(UTC))


# -- claims ------------------------------------------------------------------------------------


async def test_a_claim_signed_with_a_newer_key_is_judged_after_a_refresh(stale: Stale) -> None:
    stale.gateway.bundle = stale.v2
    calls = stale.gateway.calls
    query = signed(stale.new_key, number=N, tenure_start=X, purpose=Purpose.QUERY_PRIOR)
    release = signed(stale.new_key, number=N, tenure_start=X, purpose=Purpose.RELEASE_PRIOR)
    async with stale.channel() as ch:
        q = await platform_stub(ch).BatchQueryBindings(
            platform_pb2.BatchQueryBindingsRequest(
                items=[platform_pb2.QueryItem(item_id="q", claim=query.to_proto())]
            ),
            timeout=TIMEOUT,
        )
        r = await platform_stub(ch).BatchReleaseBindings(
            platform_pb2.BatchReleaseBindingsRequest(
                items=[platform_pb2.ReleaseItem(item_id="r", claim=release.to_proto())]
            ),
            timeout=TIMEOUT,
        )
    assert q.results[0].status.code == 0, reason(q.results[0].status)
    assert len(q.results[0].bindings) == 1
    assert r.results[0].status.code == 0, reason(r.results[0].status)
    assert len(r.results[0].released) == 1
    assert stale.gateway.calls == calls + 1  # one fetch, then judged again
    held = stale.platform.trust.trusted().bundle
    assert held is not None and held.version == 2
    assert not stale.login(OLD) and stale.login(MINE)


async def query_all(stale: Stale, *claims: Envelope) -> list[platform_pb2.QueryItemResult]:
    """Each claim in its own call, all at once."""
    async with stale.channel() as ch:
        answers = await asyncio.gather(
            *(
                platform_stub(ch).BatchQueryBindings(
                    platform_pb2.BatchQueryBindingsRequest(
                        items=[platform_pb2.QueryItem(item_id="q", claim=c.to_proto())]
                    ),
                    timeout=TIMEOUT,
                )
                for c in claims
            )
        )
    return [a.results[0] for a in answers]


async def test_only_a_refusal_that_may_be_stale_fetches_and_only_once_however_many_ask(
    stale: Stale,
) -> None:
    stranger = SigningKey.generate()
    calls = stale.gateway.calls
    results = await query_all(
        stale,
        *(
            signed(stranger, number=N, tenure_start=X, purpose=Purpose.QUERY_PRIOR)
            for _ in range(5)
        ),
    )
    assert {(r.status.code, reason(r.status)) for r in results} == {
        (grpc.StatusCode.UNAUTHENTICATED.value[0], "UNKNOWN_KEY")
    }
    # Single flight and at most one fetch a second: five refusals cost the gateway one call.
    assert stale.gateway.calls == calls + 1

    # Revocation is final: a claim by a revoked key is refused without a fetch.
    v1 = stale.platform.trust.state.bundle
    assert v1 is not None
    old = stale.old_key()
    signers = pki.load_root_signers(stale.layout.pki_dir)[:2]
    revoked = dataclasses.replace(
        v1, version=2, issued_at=datetime.now(UTC), revoked_key_ids=frozenset({old.key_id})
    )
    stale.gateway.bundle = sign_bundle(revoked, signers).to_proto()
    await stale.platform.trust.refresh()
    calls = stale.gateway.calls
    await asyncio.sleep(1.0)  # past the one-fetch-a-second limit: only the reason holds it back
    [r] = await query_all(stale, signed(old, number=N, tenure_start=X, purpose=Purpose.QUERY_PRIOR))
    assert reason(r.status) == "KEY_REVOKED"
    assert stale.gateway.calls == calls


# -- events ------------------------------------------------------------------------------------


async def test_an_event_batch_signed_with_a_newer_key_is_applied_after_a_refresh(
    stale: Stale,
) -> None:
    stale.gateway.bundle = stale.v2
    assert stale.login(OLD)
    assert await stale.deliver((1, batch(stale.new_key, reassigned()))) == 1
    assert not stale.login(OLD), "REASSIGNED was not applied: an SMS code still opens it"
    assert stale.login(MINE)
    assert stale.platform.store.dead_letters() == []


async def test_a_batch_that_cannot_be_judged_is_held_then_set_aside_and_replayed(
    stale: Stale,
) -> None:
    first, later = deactivated("+8613800000001"), deactivated("+8613800000002")
    b1 = batch(stale.old_key(), first)
    b2 = batch(stale.new_key, reassigned())  # the gateway still serves v1: cannot be judged
    b3 = batch(stale.old_key(), later)
    config = stale.layout.platform_configs["weibo"]
    events = stale.platform.servicer.events

    # Held: neither it nor anything after it is acknowledged or applied.
    for attempt in range(1, RETRY_LIMIT):
        ack = await stale.deliver(*([(1, b1)] if attempt == 1 else []), (2, b2), (3, b3))
        assert ack == (1 if attempt == 1 else 0)
        assert events.held == {2: attempt}
        assert later.event_id not in stale.applied() and stale.login(OLD)
    assert first.event_id in stale.applied()
    assert await dead_letters(config) == []

    # After the bounded retries it is set aside and the stream moves on.
    assert await stale.deliver((2, b2), (3, b3)) == 3
    assert later.event_id in stale.applied()
    assert events.held == {}
    [letter] = await dead_letters(config)
    assert letter["seq"] == 2 and letter["reason"] == "UNKNOWN_KEY"
    assert letter["may_be_stale"] is True and letter["attempts"] == RETRY_LIMIT
    assert letter["carrier"] == "cmcc" and letter["events"] == 1
    assert stale.login(OLD), "a batch nobody could verify was applied"

    # Delivered again (a lost acknowledgement): acknowledged, still on the list.
    assert await stale.deliver((2, b2), (3, b3)) == 3
    assert [d["seq"] for d in await dead_letters(config)] == [2]

    # Once the platform can get the right bundle, the operator replays it.
    stale.gateway.bundle = stale.v2
    code, out, err = await numfed("platform", "replay", "--config", str(config), "--all")
    assert code == 0, out + err
    assert "seq 2: applied" in out
    assert not stale.login(OLD) and stale.login(MINE)
    assert await dead_letters(config) == []
    code, out, _ = await numfed("platform", "replay", "--config", str(config), "--all")
    assert code == 0 and "no dead letters" in out


async def test_a_finally_refused_batch_is_acknowledged_and_listed_at_once(stale: Stale) -> None:
    config = stale.layout.platform_configs["weibo"]
    mismatch = batch(stale.old_key("cmcc"), deactivated(), carrier="cucc")  # cucc's name
    calls = stale.gateway.calls
    assert await stale.deliver((7, mismatch)) == 7
    assert stale.gateway.calls == calls  # a final refusal fetches nothing
    [letter] = await dead_letters(config)
    assert letter["seq"] == 7 and letter["reason"] == "CARRIER_KEY_MISMATCH"
    assert letter["may_be_stale"] is False and letter["attempts"] == 1
    assert stale.platform.servicer.events.refused == [7]
    code, table, _ = await numfed("platform", "dead-letters", "--config", str(config))
    assert code == 0 and "CARRIER_KEY_MISMATCH" in table and "no (final)" in table

    code, out, _ = await numfed("platform", "replay", "--config", str(config), "--seq", "7")
    assert code == 1 and "seq 7: refused again (CARRIER_KEY_MISMATCH)" in out
    [letter] = await dead_letters(config)
    assert letter["attempts"] == 2

    code, _, err = await numfed("platform", "replay", "--config", str(config), "--seq", "8")
    assert code == 2 and "DEAD_LETTER_NOT_FOUND" in err
    assert [d["seq"] for d in await dead_letters(config)] == [7]


async def test_the_admin_socket_is_private_to_the_platforms_user(stale: Stale) -> None:
    from platform_stubs.admin import socket_path

    path = socket_path(stale.platform.config)
    assert path.is_socket()
    assert path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_uid == os.getuid()
