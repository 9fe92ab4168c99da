"""New trust reaches the whole federation while it runs: the gateway takes new trust files
without a restart and only ever moves forward; platforms learn of it from the version hint on
the gateway's calls and answers and refresh at once; a chain with an expired intermediate root
still loads. A real gateway, carriers and platforms, mTLS on loopback, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, RecycledClaim, RecycledQuestion, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.envelope import Envelope, SigningKey
from numfed.errors import FailedPrecondition
from numfed.identity import PeerId, Role
from numfed.rpc import error_info, rpc_error_info
from numfed.trust import TrustBundle, TrustedState, sign_bundle, sign_root
from numfed.trustfiles import read_bundle, read_roots, write_envelope
from numfed.v1 import (
    claim_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
    trust_pb2,
)
from tests.helpers.metrics import figure
from tests.integration.conftest import Federation, start_federation

CMCC = PeerId(Role.CARRIER, "cmcc")
CMCC_NUMBER = "+8613812345678"
CUCC_NUMBER = "+8618611112222"


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    f = await start_federation(
        tmp_path / "fed", platform_knobs={"xiaomi": {"events": "poll"}}, database_url=db_url
    )
    try:
        yield f
    finally:
        await f.stop()


def held_bundle(fed: Federation) -> TrustBundle:
    return TrustBundle.from_proto(
        trust_pb2.TrustBundle.FromString(read_bundle(fed.layout.trust_dir).payload)
    )


def root_keys(fed: Federation) -> list[SigningKey]:
    return pki.load_root_signers(fed.layout.pki_dir)


def write_bundle(fed: Federation, bundle: TrustBundle, signers: list[SigningKey]) -> None:
    write_envelope(fed.layout.trust_dir / "bundle.pb", sign_bundle(bundle, signers))


def claim(fed: Federation, carrier: str, number: str) -> Envelope:
    """A QUERY_PRIOR claim signed by ``carrier``'s key."""
    tenure = TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=datetime(2022, 5, 6, tzinfo=UTC),
        purpose=Purpose.QUERY_PRIOR,
        now=datetime.now(UTC),
        lifetime=timedelta(minutes=10),
    )
    return sign_claim(tenure, pki.load_carrier_signer(fed.layout.pki_dir, carrier))


async def query(fed: Federation, env: Envelope) -> gateway_pb2.QueryBindingsResponse:
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        answer: gateway_pb2.QueryBindingsResponse = await gateway_pb2_grpc.GatewayServiceStub(
            ch
        ).QueryBindings(gateway_pb2.QueryBindingsRequest(claim=env.to_proto()), timeout=10)
    return answer


async def changed_files(fed: Federation, write: Callable[[], None]) -> None:
    """Apply ``write()`` to the trust dir and wait for the gateway to look at it."""
    watcher = fed.gateway.trust_watcher
    assert watcher is not None
    tried = watcher.attempts
    write()
    async with asyncio.timeout(5):
        await watcher.wait_for_attempt(tried)


async def test_a_new_bundle_reaches_every_platform_without_a_restart(fed: Federation) -> None:
    """Bundle v3 (v2 skipped) revokes cucc's key in the running gateway's trust dir: the gateway
    takes it within a second, and every platform, push or poll, refuses the key within a couple
    of seconds of the gateway's next call or answer, through the version hint."""
    cucc_key = pki.load_carrier_signer(fed.layout.pki_dir, "cucc").key_id
    v3 = dataclasses.replace(
        held_bundle(fed),
        version=3,
        issued_at=datetime.now(UTC),
        revoked_key_ids=frozenset({cucc_key}),
    )
    handles = dict(fed.platforms)
    await changed_files(fed, lambda: write_bundle(fed, v3, root_keys(fed)[:2]))
    assert fed.gateway.trust_view.state.versions == (1, 3)
    assert fed.gateway.portability.plan.range_holder(CMCC_NUMBER) == "cmcc"

    # The gateway answers with bundle v3 and says so in its initial metadata.
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        call = gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(), timeout=5
        )
        answer = await call
        assert ("numfed-trust-version", "1/3") in list(await call.initial_metadata())
    assert TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(answer.bundle.payload)) == v3

    # One query fans out to every platform, each call carrying the hint; the poll platform
    # also reads it from its PullEvents answers.
    result = await query(fed, claim(fed, "cmcc", CMCC_NUMBER))
    assert len(result.results) == len(fed.platforms)
    async with asyncio.timeout(3):
        for handle in fed.platforms.values():
            await handle.trust.wait_until(lambda s: s.versions == (1, 3))
    assert fed.platforms == handles  # nobody restarted

    # The gateway refuses the revoked key, and so does every platform asked directly.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await query(fed, claim(fed, "cucc", CUCC_NUMBER))
    info = rpc_error_info(refused.value)
    assert info is not None and info.reason == "KEY_REVOKED"
    item = platform_pb2.QueryItem(item_id="q", claim=claim(fed, "cucc", CUCC_NUMBER).to_proto())
    for platform_id, endpoint in fed.layout.platform_endpoints.items():
        server = PeerId(Role.PLATFORM, platform_id)
        async with pki.secure_channel(
            endpoint, fed.layout.pki_dir, pki.GATEWAY, server=server
        ) as ch:
            reply = await platform_pb2_grpc.PlatformServiceStub(ch).BatchQueryBindings(
                platform_pb2.BatchQueryBindingsRequest(items=[item]), timeout=5
            )
        status_info = error_info(reply.results[0].status)
        assert status_info is not None and status_info.reason == "KEY_REVOKED", platform_id


async def test_an_answer_carries_the_hint_unless_the_caller_said_it_holds_as_much(
    fed: Federation,
) -> None:
    """A call may state the versions it holds (numfed-trust-version in its request metadata):
    its answer then carries the gateway's hint only when the caller holds an older root or
    bundle. A call that states nothing, or nothing that parses, gets it on every answer, as
    before. The carrier adapter states what it holds, so its answers carry no hint once it
    holds the gateway's trust; a platform's trust client does the same."""
    key = "numfed-trust-version"
    root, bundle = fed.gateway.trust_view.state.versions
    now = f"{root}/{bundle}"

    async def hint(
        stub: gateway_pb2_grpc.GatewayServiceAsyncStub, stated: str | None
    ) -> list[str | bytes]:
        call = stub.GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(),
            timeout=5,
            metadata=((key, stated),) if stated is not None else None,
        )
        await call
        return [v for k, v in await call.initial_metadata() or () if k == key]

    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        assert await hint(stub, None) == [now]
        assert await hint(stub, "not-a-version") == [now]
        assert await hint(stub, f"{root}/{bundle - 1}") == [now]
        assert await hint(stub, f"{root + 1}/{bundle - 1}") == [now]  # its bundle is older
        assert await hint(stub, f"{root - 1}/{bundle}") == [now]
        assert await hint(stub, now) == []
        assert await hint(stub, f"{root}/{bundle + 1}") == []
        # A query's answer (the fan-out path) follows the same rule.
        call = stub.QueryBindings(
            gateway_pb2.QueryBindingsRequest(claim=claim(fed, "cmcc", CMCC_NUMBER).to_proto()),
            timeout=10,
            metadata=((key, now),),
        )
        assert len((await call).results) == len(fed.platforms)
        assert [v for k, v in await call.initial_metadata() or () if k == key] == []

    adapter = fed.carriers["cmcc"].adapter
    await adapter.keep_checkpoint()
    assert adapter.trust is not None and adapter.trust.versions == (root, bundle)
    assert await hint(adapter.gateway, None) == []  # the adapter's channel stated (1, n)
    for handle in fed.platforms.values():
        assert handle.trust.state.versions == (root, bundle)
        assert await hint(handle.trust.gateway, None) == []


async def test_a_bundle_that_shortens_the_claim_lifetime_shortens_the_carriers_claims(
    fed: Federation,
) -> None:
    """Bundle v2 allows claims of 5 minutes; the carrier's config says 10 (limits.claim_lifetime,
    600 s). Once the adapter has fetched v2 it signs claims of 5 minutes, which the gateway
    takes; signing 10-minute claims, every holder's call would have been refused
    CLAIM_LIFETIME_TOO_LONG (CARR-CLAIM-1: no longer than the bundle's max_claim_lifetime)."""
    adapter = fed.carriers["cmcc"].adapter
    assert adapter.config.limits.claim_lifetime == 600
    v2 = dataclasses.replace(
        held_bundle(fed),
        version=2,
        issued_at=datetime.now(UTC),
        max_claim_lifetime=timedelta(minutes=5),
    )
    await changed_files(fed, lambda: write_bundle(fed, v2, root_keys(fed)[:2]))
    assert fed.gateway.trust_view.state.versions == (1, 2)
    await adapter.keep_checkpoint()
    assert adapter.trust is not None and adapter.trust.versions == (1, 2)
    claim = adapter.issue_claim(CMCC_NUMBER, Purpose.QUERY_PRIOR)
    tenure = TenureClaim.from_proto(claim_pb2.TenureClaim.FromString(claim.payload))
    assert tenure.expires_at - tenure.issued_at == timedelta(minutes=5)
    answer = await adapter.gateway.QueryBindings(
        gateway_pb2.QueryBindingsRequest(claim=claim), timeout=10
    )
    assert len(answer.results) == len(fed.platforms)
    recycled = adapter.answer_recycled(
        CMCC_NUMBER, RecycledQuestion(specified_date=date(2023, 1, 1)), "weibo"
    )
    bit = RecycledClaim.from_proto(claim_pb2.RecycledClaim.FromString(recycled.payload))
    assert bit.expires_at - bit.issued_at == timedelta(minutes=5)


async def test_the_gateway_refuses_older_or_changed_trust_files_and_keeps_serving(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """As any verifier would: an older bundle.pb, a changed root-1.pb, an expired bundle and a
    bundle short of the threshold each leave the view in force and log one line; a newer
    bundle after them is taken."""
    keys = root_keys(fed)
    base = held_bundle(fed)
    now = datetime.now(UTC)
    await changed_files(
        fed, lambda: write_bundle(fed, dataclasses.replace(base, version=5), keys[:2])
    )
    assert fed.gateway.trust_view.state.versions == (1, 5)
    root_1 = Envelope.from_proto(read_roots(fed.layout.trust_dir)[0])
    pinned = TrustedState(root_1, now=now).root
    changed_root = sign_root(
        dataclasses.replace(pinned, expires_at=now + timedelta(days=9)), keys[:2]
    )
    past = now - timedelta(days=2)
    refused = {
        "BUNDLE_ROLLBACK": lambda: write_bundle(
            fed, dataclasses.replace(base, version=4), keys[:2]
        ),
        "ROOT_EQUIVOCATION": lambda: write_envelope(
            fed.layout.trust_dir / "root-1.pb", changed_root
        ),
        "BUNDLE_EXPIRED": lambda: write_bundle(
            fed,
            dataclasses.replace(
                base, version=6, issued_at=past, expires_at=past + timedelta(days=1)
            ),
            keys[:2],
        ),
        "BUNDLE_THRESHOLD_NOT_MET": lambda: write_bundle(
            fed, dataclasses.replace(base, version=7), keys[:1]
        ),
    }
    for reason, write in refused.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="gateway.trustview"):
            await changed_files(fed, write)
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.trustview"]
        assert len(lines) == 1 and reason in lines[0], (reason, lines)
        assert fed.gateway.trust_view.state.versions == (1, 5)
        if reason == "ROOT_EQUIVOCATION":
            write_envelope(fed.layout.trust_dir / "root-1.pb", root_1)  # put the pin back
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        served = await gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(), timeout=5
        )
    assert [Envelope.from_proto(r) for r in served.roots] == [root_1]
    await changed_files(
        fed, lambda: write_bundle(fed, dataclasses.replace(base, version=8), keys[:2])
    )
    assert fed.gateway.trust_view.state.versions == (1, 8)


async def test_a_chain_with_an_expired_intermediate_root_loads_and_rotates_everyone(
    fed: Federation,
) -> None:
    """Roots 1 -> 2 (expired) -> 3 (valid): the running gateway takes them (SIGHUP), platforms
    walk them from their pin, and a restarted gateway loads them from root-1.pb."""
    keys = root_keys(fed)
    now = datetime.now(UTC)
    pinned = TrustedState(Envelope.from_proto(read_roots(fed.layout.trust_dir)[0]), now=now).root
    r2 = dataclasses.replace(pinned, version=2, expires_at=now - timedelta(days=1))
    r3 = dataclasses.replace(pinned, version=3, expires_at=now + timedelta(days=365))
    bundle = dataclasses.replace(held_bundle(fed), version=2, issued_at=now)

    def write() -> None:
        write_envelope(fed.layout.trust_dir / "root-2.pb", sign_root(r2, keys[:2]))
        write_envelope(fed.layout.trust_dir / "root-3.pb", sign_root(r3, keys[:2]))
        write_bundle(fed, bundle, keys[:2])
        fed.gateway.reload()  # SIGHUP

    await changed_files(fed, write)
    assert fed.gateway.trust_view.state.versions == (3, 2)
    await query(fed, claim(fed, "cmcc", CMCC_NUMBER))
    async with asyncio.timeout(3):
        for handle in fed.platforms.values():
            await handle.trust.wait_until(lambda s: s.versions == (3, 2))

    await fed.gateway.stop(0)
    fed.gateway = await Gateway.start(load_gateway_config(fed.layout.gateway_config))
    assert fed.gateway.trust_view.state.versions == (3, 2)
    assert len(fed.gateway.trust_view.roots) == 3


async def test_new_trust_files_show_in_the_gateways_metrics_without_a_restart(
    fed: Federation,
) -> None:
    """What a scrape reads follows the trust in force: the gateway's bundle version and expiry
    step up as soon as it takes new files, a platform's once it has refreshed; files that do not
    verify change nothing."""
    observer = fed.gateway.observer
    assert observer is not None
    assert await figure(observer, "numfed_trust_bundle_version") == 1
    base = held_bundle(fed)
    now = datetime.now(UTC)
    v2 = dataclasses.replace(base, version=2, issued_at=now, expires_at=now + timedelta(days=90))
    await changed_files(fed, lambda: write_bundle(fed, v2, root_keys(fed)[:2]))
    assert await figure(observer, "numfed_trust_bundle_version") == 2
    left = await figure(observer, "numfed_trust_bundle_expires_in_seconds")
    assert left is not None and left > 89 * 86400
    short = dataclasses.replace(v2, version=3)  # one root key of the two it needs
    await changed_files(fed, lambda: write_bundle(fed, short, root_keys(fed)[:1]))
    assert await figure(observer, "numfed_trust_bundle_version") == 2
    assert await figure(observer, "numfed_trust_root_version") == 1

    weibo = fed.platforms["weibo"]
    assert weibo.observer is not None
    await query(fed, claim(fed, "cmcc", CMCC_NUMBER))  # its call carries the version hint
    async with asyncio.timeout(3):
        await weibo.trust.wait_until(lambda s: s.versions == (1, 2))
    assert await figure(weibo.observer, "numfed_trust_bundle_version") == 2


async def test_a_restarted_gateway_refuses_trust_files_older_than_it_held(
    fed: Federation,
) -> None:
    """The gateway never steps back across a restart either: trust files put back to an older
    bundle, another bundle at the version in force, or a root chain cut short make the start
    fail with the reason and serve nothing; the files in force start it again (the floor is the
    gateway's own ``state_dir/trust``)."""
    keys = root_keys(fed)
    trust_dir = fed.layout.trust_dir
    v1_bytes = (trust_dir / "bundle.pb").read_bytes()
    now = datetime.now(UTC)
    pinned = TrustedState(Envelope.from_proto(read_roots(trust_dir)[0]), now=now).root
    v2 = dataclasses.replace(held_bundle(fed), version=2, issued_at=now)
    await changed_files(fed, lambda: write_bundle(fed, v2, keys[:2]))
    assert fed.gateway.trust_view.state.versions == (1, 2)
    await fed.gateway.stop(0)
    config = load_gateway_config(fed.layout.gateway_config)

    def other_bundle_v2() -> None:
        write_bundle(fed, dataclasses.replace(v2, issued_at=now - timedelta(seconds=1)), keys[:2])

    refused = {
        "BUNDLE_ROLLBACK": lambda: (trust_dir / "bundle.pb").write_bytes(v1_bytes),
        "BUNDLE_EQUIVOCATION": other_bundle_v2,
    }
    for reason, write in refused.items():
        write()
        with pytest.raises(FailedPrecondition) as refusal:
            await Gateway.start(config)
        assert refusal.value.reason == reason, refusal.value

    # Root v2 taken, then the files put back to root 1 alone and its bundle.
    write_bundle(fed, v2, keys[:2])
    fed.gateway = await Gateway.start(config)
    r2 = dataclasses.replace(pinned, version=2, expires_at=now + timedelta(days=365))
    v3 = dataclasses.replace(v2, version=3)

    def rotate() -> None:
        write_envelope(trust_dir / "root-2.pb", sign_root(r2, keys[:2]))
        write_bundle(fed, v3, keys[:2])

    await changed_files(fed, rotate)
    assert fed.gateway.trust_view.state.versions == (2, 3)
    await fed.gateway.stop(0)
    (trust_dir / "root-2.pb").unlink()
    write_bundle(fed, dataclasses.replace(v2, version=4), keys[:2])
    with pytest.raises(FailedPrecondition) as refusal:
        await Gateway.start(config)
    assert refusal.value.reason == "ROOT_ROLLBACK", refusal.value

    write_envelope(trust_dir / "root-2.pb", sign_root(r2, keys[:2]))
    write_bundle(fed, v3, keys[:2])
    fed.gateway = await Gateway.start(config)
    assert fed.gateway.trust_view.state.versions == (2, 3)
