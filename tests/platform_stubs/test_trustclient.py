"""The platform's trust client: nothing is verified before a bundle is accepted, start-up waits for
the gateway, a bundle the pinned root did not sign is refused, a refresh takes effect; and TUF's
client workflow with persisted state, each refresh through a new client built from disk (as
tuf-conformance runs each refresh as a new process), with python-tuf's test names."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from numfed import pki
from numfed.claims import Purpose
from numfed.envelope import Envelope, SigningKey, sign
from numfed.errors import NumfedError, Unauthenticated
from numfed.federation import FederationLayout, free_ports
from numfed.rpc import ServerHandle, error_info, rpc_error_info
from numfed.trust import Root, TrustBundle, sign_bundle, sign_root
from numfed.trustfiles import read_bundle, read_roots
from numfed.truststore import TrustStore
from numfed.v1 import claim_pb2, platform_pb2, trust_pb2
from platform_stubs.reference import SERVICE, PlatformHandle
from platform_stubs.trustclient import TrustClient
from tests.platform_stubs.conftest import (
    WEIBO,
    Running,
    TrustGateway,
    platform_stub,
    signed,
    start_trust_gateway,
    start_weibo,
)

N = "+8613812345678"
X = datetime(2022, 5, 6, tzinfo=UTC)


def request(layout: FederationLayout) -> platform_pb2.BatchQueryBindingsRequest:
    env = signed(
        pki.load_carrier_signer(layout.pki_dir, "cmcc"),
        number=N,
        tenure_start=X,
        purpose=Purpose.QUERY_PRIOR,
    )
    return platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id="q", claim=env.to_proto())]
    )


def channel(layout: FederationLayout, platform: PlatformHandle) -> grpc.aio.Channel:
    return pki.secure_channel(
        f"127.0.0.1:{platform.port}", layout.pki_dir, pki.GATEWAY, server=WEIBO
    )


async def serving_status(layout: FederationLayout, platform: PlatformHandle) -> int:
    async with channel(layout, platform) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
    return int(reply.status)


async def wait_serving(layout: FederationLayout, platform: PlatformHandle) -> None:
    async with channel(layout, platform) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
        )
        async for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise AssertionError("the platform never reported SERVING")


async def test_no_claim_is_answered_before_a_bundle_and_start_up_waits_for_the_gateway(
    layout: FederationLayout,
) -> None:
    [port] = free_ports(1)
    platform = await start_weibo(layout, port)  # nothing listens on the gateway's port yet
    gateway = None
    try:
        async with channel(layout, platform) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == "NO_TRUST_BUNDLE"
        assert await serving_status(layout, platform) == health_pb2.HealthCheckResponse.NOT_SERVING

        fake, gateway = await start_trust_gateway(layout, port=port)
        await asyncio.wait_for(platform.trust.ready.wait(), 10)
        await wait_serving(layout, platform)
        assert fake.calls >= 1
        async with channel(layout, platform) as ch:
            answer = await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert answer.results[0].status.code == 0
    finally:
        await platform.stop(0)
        if gateway is not None:
            await gateway.stop(0)


async def test_a_bundle_not_signed_by_the_pinned_root_is_refused(layout: FederationLayout) -> None:
    fake, gateway = await start_trust_gateway(layout)
    platform = None
    try:
        real = read_bundle(layout.trust_dir)
        strangers = [SigningKey.generate(), SigningKey.generate()]
        fake.bundle = sign(real.payload_type, real.payload, strangers).to_proto()
        platform = await start_weibo(layout, gateway.port)
        with pytest.raises(Unauthenticated) as e:
            await platform.trust.refresh()
        assert e.value.reason == "BUNDLE_THRESHOLD_NOT_MET"
        assert not platform.trust.ready.is_set()
        async with channel(layout, platform) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await platform_stub(ch).BatchQueryBindings(request(layout), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if platform is not None:
            await platform.stop(0)
        await gateway.stop(0)


async def test_a_refreshed_bundle_takes_effect(running: Running) -> None:
    """Bundle v2 revokes cmcc's key; after a refresh the platform refuses cmcc's claims."""
    state = running.platform.trust.state
    assert state.bundle is not None
    cmcc_key = running.signer("cmcc").key_id
    v2 = dataclasses.replace(
        state.bundle, version=state.bundle.version + 1, revoked_key_ids=frozenset({cmcc_key})
    )
    signers = pki.load_root_signers(running.layout.pki_dir)[:2]
    running.trust_gateway.bundle = sign_bundle(v2, signers).to_proto()

    await running.platform.trust.refresh()
    assert running.platform.trust.trusted().bundle == v2
    async with running.channel() as ch:
        answer = await platform_stub(ch).BatchQueryBindings(request(running.layout), timeout=5)
    info = error_info(answer.results[0].status)
    assert answer.results[0].status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert info is not None and info.reason == "KEY_REVOKED"


# --- TUF's client workflow, each refresh through a new TrustClient built from disk ----------------


def root_signers(layout: FederationLayout) -> list[SigningKey]:
    return pki.load_root_signers(layout.pki_dir)[:2]


def bundle_v1(layout: FederationLayout) -> TrustBundle:
    return TrustBundle.from_proto(
        trust_pb2.TrustBundle.FromString(read_bundle(layout.trust_dir).payload)
    )


def bundle(
    layout: FederationLayout, version: int, signers: list[SigningKey] | None = None, **changes: Any
) -> claim_pb2.Envelope:
    b = dataclasses.replace(bundle_v1(layout), version=version, **changes)
    return sign_bundle(b, signers or root_signers(layout)).to_proto()


def root(
    layout: FederationLayout,
    version: int,
    signers: list[SigningKey],
    *,
    keys: list[SigningKey] | None = None,
    expires: timedelta = timedelta(days=365),
) -> claim_pb2.Envelope:
    keys = (
        keys
        if keys is not None
        else root_signers(layout) + pki.load_root_signers(layout.pki_dir)[2:]
    )
    r = Root(version, datetime.now(UTC) + expires, {k.key_id: k.public for k in keys}, 2)
    return sign_root(r, signers).to_proto()


def chain_v1(layout: FederationLayout) -> list[claim_pb2.Envelope]:
    return read_roots(layout.trust_dir)


@contextlib.asynccontextmanager
async def from_disk(
    layout: FederationLayout, gateway: ServerHandle, state_dir: Path
) -> AsyncIterator[TrustClient]:
    """A platform's trust client as a fresh start builds it: pin from the trust dir, the rest
    from what it persisted in ``state_dir``."""
    client = TrustClient(
        trust_dir=layout.trust_dir,
        pki_dir=layout.pki_dir,
        peer=WEIBO,
        gateway=f"127.0.0.1:{gateway.port}",
        state_dir=state_dir,
    )
    try:
        yield client
    finally:
        await client.close()


def files(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir())}


@pytest.fixture
async def gateway(layout: FederationLayout) -> AsyncIterator[tuple[TrustGateway, ServerHandle]]:
    fake, handle = await start_trust_gateway(layout)
    try:
        yield fake, handle
    finally:
        await handle.stop(0)


GatewayFixture = tuple[TrustGateway, ServerHandle]


async def test_rollback_after_restart(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    """A restarted platform still refuses a bundle older than one that revoked a key."""
    fake, handle = gateway
    cmcc = pki.load_carrier_signer(layout.pki_dir, "cmcc").key_id
    fake.bundle = bundle(layout, 2, revoked_key_ids=frozenset({cmcc}))
    async with from_disk(layout, handle, tmp_path / "trust") as first:
        assert await first.refresh()
    fake.bundle = read_bundle(layout.trust_dir)  # v1 again, from a gateway that lies
    async with from_disk(layout, handle, tmp_path / "trust") as restarted:
        with pytest.raises(Unauthenticated) as e:
            await restarted.refresh()
        assert e.value.reason == "BUNDLE_ROLLBACK"
        with pytest.raises(Unauthenticated) as e:
            restarted.state.carrier_key(cmcc, now=datetime.now(UTC))
        assert e.value.reason == "KEY_REVOKED"


async def test_skip_accepted(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    """A platform holding v1 is offered v3: it takes it (it was refused as BUNDLE_FAST_FORWARD
    on every poll until a restart)."""
    fake, handle = gateway
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        await client.refresh()
        fake.bundle = bundle(layout, 3)
        assert await client.refresh()
        assert client.state.versions == (1, 3)


@pytest.mark.parametrize(
    "offer",
    ["older", "unsigned", "expired", "root_not_next", "equal_version_other_bytes"],
)
async def test_files_unchanged_after_a_refused_update(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path, offer: str
) -> None:
    fake, handle = gateway
    fake.bundle = bundle(layout, 5)
    async with from_disk(layout, handle, tmp_path / "trust") as first:
        await first.refresh()
    before = files(tmp_path / "trust")
    strangers = [SigningKey.generate(), SigningKey.generate()]
    if offer == "older":
        fake.bundle = bundle(layout, 4)
    elif offer == "unsigned":
        fake.bundle = bundle(layout, 6, strangers)
    elif offer == "expired":
        past = datetime.now(UTC) - timedelta(days=2)
        fake.bundle = bundle(layout, 6, issued_at=past, expires_at=past + timedelta(days=1))
    elif offer == "root_not_next":
        fake.roots = [*chain_v1(layout), root(layout, 3, root_signers(layout))]
    else:
        fake.bundle = bundle(layout, 5, expires_at=datetime.now(UTC) + timedelta(days=3))
    async with from_disk(layout, handle, tmp_path / "trust") as restarted:
        if offer == "equal_version_other_bytes":
            assert not await restarted.refresh()  # the held one stays; not an error
        else:
            with pytest.raises(NumfedError):
                await restarted.refresh()
        assert restarted.state.versions == (1, 5)
    assert files(tmp_path / "trust") == before


async def test_final_root_expired(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    """The root advances to the newest and is persisted; its expiry refuses the bundle."""
    fake, handle = gateway
    r2 = root(layout, 2, root_signers(layout), expires=-timedelta(days=1))
    fake.roots = [*chain_v1(layout), r2]
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        with pytest.raises(Unauthenticated) as e:
            await client.refresh()
        assert e.value.reason == "ROOT_EXPIRED"
        assert not client.ready.is_set()
    assert TrustStore(tmp_path / "trust").load().root == Envelope.from_proto(r2)
    async with from_disk(layout, handle, tmp_path / "trust") as restarted:
        assert restarted.state.root.version == 2


async def test_intermediate_root_expired(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    """Roots 1 -> 2 (expired) -> 3 (valid): a platform starting from root-1.pb takes them."""
    fake, handle = gateway
    signers = root_signers(layout)
    fake.roots = [
        *chain_v1(layout),
        root(layout, 2, signers, expires=-timedelta(days=1)),
        root(layout, 3, signers),
    ]
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        assert await client.refresh()
        assert client.state.versions == (3, 1)


@pytest.mark.parametrize("bad_at", [2, 3])
async def test_root_incorrectly_signed(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path, bad_at: int
) -> None:
    """python-tuf's test_intermediate_root_incorrectly_signed (2 of 3) and
    test_final_root_incorrectly_signed (3): the last good root is the one on disk."""
    fake, handle = gateway
    signers = root_signers(layout)
    good = [root(layout, v, signers) for v in (2, 3)]
    good[bad_at - 2] = root(layout, bad_at, signers[:1])
    fake.roots = [*chain_v1(layout), *good]
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        with pytest.raises(Unauthenticated) as e:
            await client.refresh()
        assert e.value.reason == "ROOT_THRESHOLD_NOT_MET"
    stored = TrustStore(tmp_path / "trust").load().root
    if bad_at == 2:
        assert stored is None  # nothing beyond the pin was accepted
    else:
        assert stored == Envelope.from_proto(good[0])


async def test_fast_forward_recovery_after_key_rotation(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    """Bundle v99999 held; the root keys rotate; bundle v1 under the new keys is taken, and a
    restart keeps it."""
    fake, handle = gateway
    fake.bundle = bundle(layout, 99999)
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        await client.refresh()
    new = [SigningKey.generate() for _ in range(3)]
    fake.roots = [*chain_v1(layout), root(layout, 2, root_signers(layout) + new[:2], keys=new)]
    fake.bundle = bundle(layout, 1, new[:2])
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        assert await client.refresh()
        assert client.state.versions == (2, 1)
    async with from_disk(layout, handle, tmp_path / "trust") as restarted:
        assert restarted.state.versions == (2, 1)


async def test_a_persisted_bundle_the_newest_root_does_not_sign_is_dropped(
    layout: FederationLayout, tmp_path: Path
) -> None:
    """Root v2 (new keys) saved, then a crash before its bundle: the old bundle is dropped at
    the next start, as the rotation would have dropped it."""
    new = [SigningKey.generate() for _ in range(3)]
    store = TrustStore(tmp_path / "trust")
    store.save_root(Envelope.from_proto(root(layout, 2, root_signers(layout) + new[:2], keys=new)))
    store.save_bundle(Envelope.from_proto(bundle(layout, 7)))
    [port] = free_ports(1)
    client = TrustClient(
        trust_dir=layout.trust_dir,
        pki_dir=layout.pki_dir,
        peer=WEIBO,
        gateway=f"127.0.0.1:{port}",
        state_dir=tmp_path / "trust",
    )
    try:
        assert client.state.versions == (2, 0)
    finally:
        await client.close()


async def test_refresh_if_behind_fetches_only_when_behind_and_never_trusts_the_hint(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    fake, handle = gateway
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        await client.refresh()
        calls = fake.calls
        assert not await client.refresh_if_behind((1, 1))  # not behind: no fetch
        assert fake.calls == calls
        assert not await client.refresh_if_behind((1, 40))  # the gateway has nothing newer
        assert fake.calls == calls + 1
        assert client.state.versions == (1, 1)  # the hint changed nothing
        fake.bundle = bundle(layout, 2)
        assert await client.refresh_if_behind((1, 2))
        assert client.state.versions == (1, 2)


async def test_refresh_if_behind_runs_one_refresh_at_a_time_at_most_once_a_second(
    layout: FederationLayout, gateway: GatewayFixture, tmp_path: Path
) -> None:
    fake, handle = gateway
    async with from_disk(layout, handle, tmp_path / "trust") as client:
        await client.refresh()
        fake.bundle = bundle(layout, 2)
        first = fake.calls
        results = await asyncio.gather(*(client.refresh_if_behind((1, 2)) for _ in range(10)))
        assert fake.calls == first + 1  # ten callers, one fetch
        assert results == [True] * 10
        await client.refresh_if_behind()  # no hint: a fetch regardless, paced
        assert fake.calls == first + 2
        assert fake.asked_at[-1] - fake.asked_at[-2] >= 1.0


async def test_a_platform_refreshes_when_the_gateways_call_says_it_holds_newer_trust(
    running: Running,
) -> None:
    """The gateway's request metadata (numfed-trust-version) makes the platform fetch at once:
    a key revoked in the newer bundle is refused within a moment, with no restart."""
    cmcc = running.signer("cmcc").key_id
    v2 = dataclasses.replace(
        bundle_v1(running.layout), version=2, revoked_key_ids=frozenset({cmcc})
    )
    running.trust_gateway.bundle = sign_bundle(v2, root_signers(running.layout)).to_proto()
    hint = (("numfed-trust-version", "1/2"),)
    async with running.channel() as ch:
        await platform_stub(ch).BatchQueryBindings(
            request(running.layout), timeout=5, metadata=hint
        )
        async with asyncio.timeout(5):
            await running.platform.trust.wait_until(lambda s: s.versions == (1, 2))
        answer = await platform_stub(ch).BatchQueryBindings(request(running.layout), timeout=5)
    info = error_info(answer.results[0].status)
    assert info is not None and info.reason == "KEY_REVOKED"
