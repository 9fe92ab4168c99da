"""Trust over time, attacked from a hostile network position or a hostile member.

A compromised gateway replica serves the trust files (roots, bundle, audit checkpoint) and states
the versions it holds in the ``numfed-trust-version`` hint; a carrier whose key was revoked
replays what it signed before; members restart in between. Each attack must be refused with its
precise reason and change nothing a member holds, on disk or in memory:

- rollback and mix-and-match of the bundle, also across a restart (platform and carrier adapter:
  both persist their trust in ``state_dir/trust``);
- freeze: an expired bundle is not served on forever, and a hint far ahead costs at most one
  fetch a second and one task (not one per call), a hint below costs nothing;
- roots short of the threshold, one key counted twice, a version skipped;
- an event batch or claim signed by a revoked key (signed before the revocation, replayed
  after), or by a key outside its window;
- an audit checkpoint signed by a key not in the bundle's audit keys, or forking the one held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from carrier_adapters.cmcc import CmccAdapter
from numfed import pki
from numfed.checkpoint import Checkpoint, HeadScheme, audit_origin, sign_checkpoint
from numfed.claims import Purpose
from numfed.config import load_carrier_config
from numfed.envelope import Envelope, SigningKey
from numfed.errors import NumfedError
from numfed.events import EventKind, LifecycleEvent
from numfed.federation import FederationLayout
from numfed.identity import PeerId, Role
from numfed.rpc import ServerHandle, error_info, start_server
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.trust import ROOT_PAYLOAD_TYPE
from numfed.trustfiles import read_roots
from numfed.truststore import TRUST_STORE_DIR
from numfed.v1 import claim_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc, platform_pb2
from platform_stubs.reference import start_platform
from tests.attacks.lying import call_gateway, refused, signed_batch, tenure_claim, write_bundle
from tests.integration.holder import response
from tests.platform_stubs.conftest import (
    GATEWAY_SERVICE,
    Running,
    TrustGateway,
    layout,
    platform_stub,
    running,
)
from tests.platform_stubs.test_trustclient import bundle, bundle_v1, request, root, root_signers

__all__ = ["layout", "running"]  # fixtures, from the platform's own tests

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # served by cmcc
HINT = "numfed-trust-version"


def files(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir())}


async def query_status(running: Running, *, hint: str = "") -> str:
    """A claim judged by the platform, called as the gateway: "OK" or its refusal's reason."""
    metadata = ((HINT, hint),) if hint else None
    async with running.channel() as ch:
        answer = await platform_stub(ch).BatchQueryBindings(
            request(running.layout), timeout=5, metadata=metadata
        )
    info = error_info(answer.results[0].status)
    return "OK" if info is None else info.reason


# --- a compromised gateway replica serving a platform's trust ---------------------------------


async def test_a_platform_refuses_an_older_or_equivocated_bundle_also_after_a_restart(
    running: Running,
) -> None:
    """The gateway served bundle v3 (cmcc's key revoked). It then serves v2 (the key not yet
    revoked): BUNDLE_ROLLBACK; and another v3 without the revocation: the held v3 stays. After
    a restart of the platform the same: the key stays revoked."""
    lay, fake = running.layout, running.trust_gateway
    cmcc = running.signer("cmcc").key_id
    fake.bundle = bundle(lay, 3, revoked_key_ids=frozenset({cmcc}))
    assert await running.platform.trust.refresh()
    assert await query_status(running) == "KEY_REVOKED"
    state_dir = running.platform.config.state_dir / TRUST_STORE_DIR
    before = files(state_dir)

    fake.bundle = bundle(lay, 2)
    with pytest.raises(NumfedError) as e:
        await running.platform.trust.refresh()
    assert e.value.reason == "BUNDLE_ROLLBACK"
    fake.bundle = bundle(lay, 3)  # same version, other content (no revocation)
    assert not await running.platform.trust.refresh()
    assert running.platform.trust.state.versions == (1, 3)
    assert await query_status(running) == "KEY_REVOKED"
    assert files(state_dir) == before

    # A restart of the platform: its trust comes from its own disk, not from the gateway; it
    # answers no claim until the gateway serves what it can take (fail closed).
    fake.bundle = bundle(lay, 2)
    restarted = await _restart(running)
    try:
        with pytest.raises(NumfedError) as e:
            await restarted.platform.trust.refresh()
        assert e.value.reason == "BUNDLE_ROLLBACK"
        assert restarted.platform.trust.state.versions == (1, 3)
        assert not restarted.platform.trust.ready.is_set()
        assert files(state_dir) == before
        fake.bundle = bundle(lay, 3)
        await restarted.platform.trust.refresh()
        assert await query_status(restarted) == "KEY_REVOKED"
        assert files(state_dir) == before
    finally:
        await restarted.platform.stop(0)


async def _restart(running: Running) -> Running:
    """Stop the platform and start it again from its config and its state directory."""
    config = running.platform.config
    await running.platform.stop(0)
    platform = await start_platform(config)
    return dataclasses.replace(running, platform=platform)


async def test_roots_short_of_the_threshold_double_counted_or_skipping_change_nothing(
    running: Running,
) -> None:
    """Root v2 signed by one old key (threshold 2), by one old key twice (two signatures under
    one key id), or offered as v3 (v2 skipped): each refused with its reason; the platform keeps
    root v1 and its bundle, in memory and on disk."""
    lay, fake = running.layout, running.trust_gateway
    old = root_signers(lay)
    v1 = read_roots(lay.trust_dir)
    state_dir = running.platform.config.state_dir / TRUST_STORE_DIR
    before = files(state_dir)
    one = Envelope.from_proto(root(lay, 2, [old[0]]))
    twice = claim_pb2.Envelope(
        payload=one.payload,
        payload_type=ROOT_PAYLOAD_TYPE,
        signatures=[one.to_proto().signatures[0]] * 2,
    )
    attempts = {
        "ROOT_THRESHOLD_NOT_MET (one key)": [*v1, one.to_proto()],
        "ROOT_THRESHOLD_NOT_MET (one key twice)": [*v1, twice],
        "ROOT_VERSION_NOT_NEXT": [*v1, root(lay, 3, old)],
    }
    for expected, chain in attempts.items():
        fake.roots = chain
        with pytest.raises(NumfedError) as e:
            await running.platform.trust.refresh()
        assert e.value.reason == expected.split()[0], expected
        assert running.platform.trust.state.versions == (1, 1)
        assert files(state_dir) == before
    assert await query_status(running) == "OK"


async def test_a_platform_does_not_keep_serving_on_an_expired_bundle_the_gateway_withholds(
    running: Running,
) -> None:
    """The gateway hands out bundle v2 that expires in a moment, then withholds any newer one
    (it serves v2 forever): once v2 has expired, every claim is refused BUNDLE_EXPIRED (a freeze
    is noticed), and serving v1 again is still a rollback."""
    lay, fake = running.layout, running.trust_gateway
    now = datetime.now(UTC)
    fake.bundle = bundle(
        lay, 2, issued_at=now - timedelta(seconds=5), expires_at=now + timedelta(seconds=1)
    )
    assert await running.platform.trust.refresh()
    assert await query_status(running) == "OK"
    await asyncio.sleep(
        max(0.0, (now + timedelta(seconds=1.1) - datetime.now(UTC)).total_seconds())
    )
    assert await query_status(running) == "BUNDLE_EXPIRED"
    with pytest.raises(NumfedError) as e:
        await running.platform.trust.refresh()
    assert e.value.reason == "BUNDLE_EXPIRED"
    fake.bundle = bundle(lay, 1)
    with pytest.raises(NumfedError) as e:
        await running.platform.trust.refresh()
    assert e.value.reason == "BUNDLE_ROLLBACK"
    assert await query_status(running) == "BUNDLE_EXPIRED"


async def test_a_lying_version_hint_costs_one_fetch_a_second_and_one_task(
    running: Running,
) -> None:
    """The gateway calls the platform forty times at once, each call saying it holds root and
    bundle 999999/999999 (it holds 1/1). The platform fetches once, and again at most once a
    second while the lie goes on; when the calls stop, the fetches stop (the lie led to no
    backlog of refreshes, one per call, nor to a task per call). A hint below what the platform
    holds starts no fetch at all."""
    fake, trust = running.trust_gateway, running.platform.trust
    low = fake.calls
    for _ in range(5):
        assert await query_status(running, hint="1/0") == "OK"
    assert fake.calls == low

    async with running.channel() as ch:
        stub = platform_stub(ch)
        await asyncio.gather(
            *(
                stub.BatchQueryBindings(
                    request(running.layout), timeout=5, metadata=((HINT, "999999/999999"),)
                )
                for _ in range(40)
            )
        )
    pending = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").startswith("TrustClient.")
        and getattr(t.get_coro(), "__qualname__", "") != "TrustClient.run"
    ]
    # Besides the minute's refresh loop: the one that follows the hints, and its refresh.
    assert len(pending) <= 2, f"{len(pending)} trust tasks outstanding for one lying hint"
    first = fake.calls
    async with asyncio.timeout(5):  # the fetch the hint started, paced after the last
        await trust.wait_until(lambda _: fake.calls > first)
    await asyncio.sleep(2.5)  # room for the one further fetch a second hint may start
    settled = fake.calls
    await asyncio.sleep(2.0)  # and none after that
    assert fake.calls == settled, f"{fake.calls - settled} fetches after the hints stopped"
    assert settled - first <= 2
    assert trust.state.versions == (1, 1)
    assert await query_status(running) == "OK"


async def test_a_claim_by_a_key_outside_its_window_is_refused_after_a_refresh(
    running: Running,
) -> None:
    """Bundle v2 closes cmcc's key window an hour ago (a rotation whose overlap ran out), v3
    opens it only tomorrow (a key announced ahead): a claim it signs now is refused
    KEY_OUT_OF_WINDOW by the platform, also after the refresh that reason starts (the gateway
    has nothing newer)."""
    lay, fake = running.layout, running.trust_gateway
    now = datetime.now(UTC)
    key_id = running.signer("cmcc").key_id
    for version, (start, end) in enumerate(
        [
            (now - timedelta(days=2), now - timedelta(hours=1)),
            (now + timedelta(days=1), now + timedelta(days=30)),
        ],
        2,
    ):
        keys = dict(bundle_v1(lay).carrier_keys)
        keys[key_id] = dataclasses.replace(keys[key_id], not_before=start, not_after=end)
        fake.bundle = bundle(lay, version, carrier_keys=keys)
        assert await running.platform.trust.refresh()
        asked = fake.calls
        assert await query_status(running) == "KEY_OUT_OF_WINDOW"
        assert fake.calls >= asked + 1  # a reason that may be staleness: fetched again first
        assert running.platform.trust.state.versions == (1, version)


# --- a hostile gateway replica serving a carrier adapter's trust and checkpoints ---------------


@dataclasses.dataclass
class CheckpointingGateway(TrustGateway):
    """Serves trust files and an audit checkpoint of its choosing, to carriers and platforms."""

    checkpoint: claim_pb2.Envelope | None = None

    async def GetTrustBundle(
        self, request: gateway_pb2.GetTrustBundleRequest, context: Any
    ) -> gateway_pb2.GetTrustBundleResponse:
        answer = await super().GetTrustBundle(request, context)
        if self.checkpoint is not None:
            answer.checkpoint.CopyFrom(self.checkpoint)
        return answer


@contextlib.asynccontextmanager
async def hostile_gateway(
    lay: FederationLayout,
) -> AsyncIterator[tuple[CheckpointingGateway, ServerHandle]]:
    fake = CheckpointingGateway(lay.trust_dir)  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
        return GATEWAY_SERVICE

    handle = await start_server(
        register=[register],
        credentials=pki.server_credentials(lay.pki_dir, pki.GATEWAY),
        policy={
            f"/{GATEWAY_SERVICE}/GetTrustBundle": frozenset({Role.PLATFORM, Role.CARRIER}),
        },
        bind="127.0.0.1:0",
    )
    try:
        yield fake, handle
    finally:
        await handle.stop(0)


@contextlib.asynccontextmanager
async def carrier(lay: FederationLayout, port: int) -> AsyncIterator[CmccAdapter]:
    """cmcc's adapter as a (re)start builds it from its config and state directory, talking to
    the gateway on ``port`` (its servers are not started: only its trust matters here)."""
    config = dataclasses.replace(
        load_carrier_config(lay.carrier_configs["cmcc"]), gateway=f"127.0.0.1:{port}"
    )
    adapter = CmccAdapter(config)
    try:
        yield adapter
    finally:
        await adapter.channel.close()


def checkpoint(
    lay: FederationLayout,
    size: int,
    head: bytes,
    key: SigningKey | None = None,
    *,
    ahead: timedelta = timedelta(0),
) -> claim_pb2.Envelope:
    origin = audit_origin(Envelope.from_proto(read_roots(lay.trust_dir)[0]))
    cp = Checkpoint(origin, size, head, HeadScheme.CHAIN_V1, datetime.now(UTC) + ahead)
    return sign_checkpoint(cp, key or pki.load_audit_signer(lay.pki_dir)).to_proto()


async def test_a_restarted_carrier_refuses_an_older_bundle_and_a_forked_root(
    layout: FederationLayout,
) -> None:
    """cmcc's adapter took root v2 and bundle v3. Restarted, it is offered bundle v2 (older,
    still signed and unexpired): BUNDLE_ROLLBACK. And a second root v2 (the old root keys
    signed two): the held v2 stays, the fork's bundle does not verify under it."""
    lay = layout
    old = root_signers(lay)
    new = [SigningKey.generate() for _ in range(3)]
    v2 = root(lay, 2, old + new[:2], keys=new)
    async with hostile_gateway(lay) as (fake, gw):
        fake.roots = [*read_roots(lay.trust_dir), v2]
        fake.bundle = bundle(lay, 3, signers=new[:2])
        async with carrier(lay, gw.port) as adapter:
            await adapter.keep_checkpoint()
            assert adapter.trust is not None and adapter.trust.versions == (2, 3)

        fake.bundle = bundle(lay, 2, signers=new[:2])
        async with carrier(lay, gw.port) as adapter:
            with pytest.raises(NumfedError) as e:
                await adapter.keep_checkpoint()
            assert e.value.reason == "BUNDLE_ROLLBACK"
            assert adapter.trust is not None and adapter.trust.versions == (2, 3)

        forked = [SigningKey.generate() for _ in range(3)]
        fake.roots = [*read_roots(lay.trust_dir), root(lay, 2, old + forked[:2], keys=forked)]
        fake.bundle = bundle(lay, 4, signers=forked[:2])
        async with carrier(lay, gw.port) as adapter:
            with pytest.raises(NumfedError) as e:
                await adapter.keep_checkpoint()
            assert e.value.reason == "BUNDLE_THRESHOLD_NOT_MET"
            assert adapter.trust is not None and adapter.trust.versions == (2, 3)
            assert adapter.trust.root_envelope.to_proto() == v2


async def test_a_checkpoint_by_a_stranger_or_forking_the_held_one_is_refused(
    layout: FederationLayout,
) -> None:
    """The carrier keeps checkpoint size 5. A checkpoint of size 9 signed by a key not among the
    bundle's audit keys: UNKNOWN_KEY; one of size 5 with another head: AUDIT_EQUIVOCATION; one of
    size 9 dated a day ahead (within the audit key's window; a week of them would push every
    real day's checkpoint out of the seven the keeper keeps per day): ISSUED_IN_FUTURE. The one
    held stays, and a smaller one is not taken."""
    lay = layout
    async with hostile_gateway(lay) as (fake, gw), carrier(lay, gw.port) as adapter:
        fake.checkpoint = checkpoint(lay, 5, b"\1" * 32)
        held = await adapter.keep_checkpoint()
        assert held is not None and held.size == 5
        for cp, reason in [
            (checkpoint(lay, 9, b"\2" * 32, SigningKey.generate()), "UNKNOWN_KEY"),
            (checkpoint(lay, 5, b"\3" * 32), "AUDIT_EQUIVOCATION"),
            (checkpoint(lay, 9, b"\5" * 32, ahead=timedelta(days=1)), "ISSUED_IN_FUTURE"),
        ]:
            fake.checkpoint = cp
            with pytest.raises(NumfedError) as e:
                await adapter.keep_checkpoint()
            assert e.value.reason == reason
            assert adapter.checkpoints is not None and adapter.checkpoints.latest == held
        fake.checkpoint = checkpoint(lay, 4, b"\4" * 32)
        assert await adapter.keep_checkpoint() == held


# --- a carrier with a revoked or retired key, against the whole federation -------------------


async def test_what_a_revoked_key_signed_before_the_revocation_is_refused_after_it(
    federation: Federation,
) -> None:
    """cmcc signs an event batch and a claim, then its key is revoked (bundle v2). Replayed
    afterwards, the batch is refused by the gateway (UNAUTHENTICATED KEY_REVOKED) and the log
    does not grow; the claim is refused by a platform, asked directly as the gateway; and the
    batch, delivered to that platform directly as the log's next entry, is set aside there."""
    fed = federation
    batch = signed_batch(
        fed, "cmcc", LifecycleEvent.new(N, EventKind.DEACTIVATED, datetime.now(UTC))
    )
    claim = tenure_claim(fed, "cmcc", N, Purpose.QUERY_PRIOR, datetime(2020, 1, 1, tzinfo=UTC))
    await _revoke_cmcc(fed)
    head = await fed.gateway.store.run(fed.gateway.events.head)
    reason = await refused(
        fed,
        PeerId(Role.CARRIER, "cmcc"),
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch),
    )
    assert reason == "UNAUTHENTICATED KEY_REVOKED"
    assert await fed.gateway.store.run(fed.gateway.events.head) == head

    weibo = fed.platforms["weibo"]
    async with pki.secure_channel(
        f"127.0.0.1:{weibo.port}",
        fed.layout.pki_dir,
        pki.GATEWAY,
        server=PeerId(Role.PLATFORM, "weibo"),
    ) as ch:
        req = platform_pb2.BatchQueryBindingsRequest(
            items=[platform_pb2.QueryItem(item_id="q", claim=claim)]
        )
        await platform_stub(ch).BatchQueryBindings(req, timeout=5, metadata=((HINT, "1/2"),))
        async with asyncio.timeout(10):
            await weibo.trust.wait_until(lambda s: s.versions == (1, 2))
        answer = await platform_stub(ch).BatchQueryBindings(req, timeout=5)
        info = error_info(answer.results[0].status)
        assert info is not None and info.reason == "KEY_REVOKED"
        # A hostile gateway replica delivers the refused batch to weibo itself, as the log's
        # next seq: weibo sets it aside (KEY_REVOKED) and applies nothing of it.
        applied = await weibo.store.run(weibo.store.applied_event_ids)
        delivered = await platform_stub(ch).DeliverEvents(
            platform_pb2.DeliverEventsRequest(
                batches=[events_pb2.SequencedBatch(seq=head + 1, batch=batch)]
            ),
            timeout=10,
        )
    assert delivered.ack_through_seq == head + 1
    [dead] = await weibo.store.run(weibo.store.dead_letters, [head + 1])
    assert dead.reason == "KEY_REVOKED"
    assert await weibo.store.run(weibo.store.applied_event_ids) == applied


async def _revoke_cmcc(fed: Federation) -> None:
    """Publish bundle v2 revoking cmcc's key, and wait for the gateway to serve it."""
    watcher = fed.gateway.trust_watcher
    assert watcher is not None
    tried = watcher.attempts
    write_bundle(
        fed, version=2, revoked={"cmcc": pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")}
    )
    os.utime(fed.layout.trust_dir / "bundle.pb")
    async with asyncio.timeout(10):
        while fed.gateway.trust_view.state.versions != (1, 2):
            await watcher.wait_for_attempt(tried)
            tried = watcher.attempts


async def test_a_release_queued_before_a_revocation_releases_nothing_after_it(
    federation: Federation,
) -> None:
    """weibo is down when cmcc's release of N's prior bindings is accepted, so it waits in the
    gateway's queue; then cmcc's key is revoked. When weibo is back (it takes bundle v2), the
    retried release is refused there (REFUSED, KEY_REVOKED) and N's bindings at weibo stay."""
    fed = federation
    x = WORLD.histories[N].tenure_start(datetime.now(UTC))
    weibo = fed.platforms["weibo"]
    before = await weibo.store.run(weibo.store.bindings_for, [N])
    assert any(b.bound_at < x for b in before[N])  # there is something to release
    await weibo.stop(0)
    request = gateway_pb2.ReleaseBindingsRequest(
        request_id="r-queued",
        claim=tenure_claim(fed, "cmcc", N, Purpose.RELEASE_PRIOR, x),
        platform_ids=["weibo"],
    )
    cmcc = PeerId(Role.CARRIER, "cmcc")
    started: Any = await call_gateway(fed, cmcc, "ReleaseBindings", request)
    await _revoke_cmcc(fed)
    weibo = await fed.restart_platform("weibo")
    async with asyncio.timeout(10):
        await weibo.trust.wait_until(lambda s: s.versions == (1, 2))
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, cmcc) as ch:
        watch = gateway_pb2_grpc.GatewayServiceStub(ch).WatchOperation(
            gateway_pb2.WatchOperationRequest(name=started.name), timeout=60
        )
        async for op in watch:
            if op.done:
                break
    assert op.done
    [result] = response(op).results
    info = error_info(result.status)
    assert (result.outcome, info.reason if info else None) == (
        gateway_pb2.PLATFORM_OUTCOME_REFUSED,
        "KEY_REVOKED",
    )
    assert await weibo.store.run(weibo.store.bindings_for, [N]) == before
