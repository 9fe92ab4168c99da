"""Only members are served, in every role (invariant 4), and removing one needs no restart.

A peer holding a certificate from the federation's own CA, but not in the gateway's config (a
stranger, or a removed member), is refused every GatewayService RPC at the edge with
PERMISSION_DENIED / UNKNOWN_MEMBER: nothing is written, no carrier is called, no signed answer
or event leaves the gateway. Platforms and carriers serve no gateway id but the federation's.
Editing the gateway's config file takes effect within about a second, in process and, on
SIGHUP, in a real ``numfed gateway serve`` process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message

from gateway import schema
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.identity import PeerId, Role
from numfed.rpc import error_info
from numfed.scenario import demo_scenario
from numfed.testing import spawn_federation
from numfed.timeutil import to_timestamp
from numfed.v1 import (
    carrier_pb2,
    carrier_pb2_grpc,
    claim_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.helpers.certs import issue_member
from tests.integration.conftest import Federation, start_federation
from tests.integration.holder import PRIOR, response
from tests.integration.members import eventually, outcome, without_member
from tests.integration.test_journey import holder_app

WORLD = demo_scenario()
NUMBER = WORLD.showcase["recycled_once"]  # served by cmcc
CMCC = PeerId(Role.CARRIER, "cmcc")
CUCC = PeerId(Role.CARRIER, "cucc")
WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")
STRANGERS = [
    PeerId(Role.PLATFORM, "evil"),
    PeerId(Role.CARRIER, "evil"),
    PeerId(Role.GATEWAY, "evil"),
]
GATEWAY_RPCS = set(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name)
REFUSED = "PERMISSION_DENIED UNKNOWN_MEMBER"


@pytest.fixture
def fed(sqlite_federation: Federation) -> Federation:
    return sqlite_federation


def cmcc_claim(fed: Federation, purpose: Purpose) -> claim_pb2.Envelope:
    """A good claim of cmcc's, as a stranger might have copied it."""
    now = datetime.now(UTC)
    claim = TenureClaim.new(
        number=NUMBER,
        carrier_id="cmcc",
        tenure_start=WORLD.histories[NUMBER].tenure_start(now),
        purpose=purpose,
        now=now,
    )
    return sign_claim(claim, pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")).to_proto()


def cmcc_events(fed: Federation) -> claim_pb2.Envelope:
    event = LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, datetime.now(UTC))
    signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    return sign_event_batch("cmcc", [event], signer, now=datetime.now(UTC)).to_proto()


def row_counts(fed: Federation) -> dict[str, Any]:
    """Rows per gateway table, and which platforms have an event cursor."""
    with fed.gateway.store.engine.connect() as c:
        counts: dict[str, Any] = {
            t.name: c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in schema.metadata.sorted_tables
        }
        counts["cursors"] = set(
            c.execute(sa.select(schema.event_cursors.c.platform_id)).scalars().all()
        )
    return counts


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[int]:
    """Count calls of ``obj.name`` (looked up per call by the code under test)."""
    calls = [0]
    real: Callable[..., Any] = getattr(obj, name)

    def counting(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(obj, name, counting)
    return calls


async def done_release(fed: Federation) -> str:
    """A release cmcc made, finished on every platform; its operation name."""
    request = gateway_pb2.ReleaseBindingsRequest(
        request_id="r-membership", claim=cmcc_claim(fed, Purpose.RELEASE_PRIOR)
    )
    target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
    async with pki.secure_channel(target, d, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        started = await stub.ReleaseBindings(request, timeout=5)
        watch = gateway_pb2.WatchOperationRequest(name=started.name)
        seen = [op async for op in stub.WatchOperation(watch, timeout=30)]
    assert seen[-1].done
    return str(started.name)


@pytest.mark.parametrize("stranger", STRANGERS, ids=lambda p: p.uri.removeprefix("spiffe://"))
async def test_a_stranger_is_refused_every_gateway_rpc_and_changes_nothing(
    federation: Federation,
    stranger: PeerId,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fed = federation
    theirs = issue_member(fed.layout.pki_dir, stranger, tmp_path / "stranger")
    operation = await done_release(fed)  # a real operation the stranger asks about
    since = to_timestamp(datetime.now(UTC) - timedelta(days=30))
    requests: dict[str, Message] = {
        "GetTrustBundle": gateway_pb2.GetTrustBundleRequest(),
        "QueryBindings": gateway_pb2.QueryBindingsRequest(
            claim=cmcc_claim(fed, Purpose.QUERY_PRIOR)
        ),
        "ReleaseBindings": gateway_pb2.ReleaseBindingsRequest(
            request_id="r-stranger", claim=cmcc_claim(fed, Purpose.RELEASE_PRIOR)
        ),
        "GetOperation": gateway_pb2.GetOperationRequest(name=operation),
        "WatchOperation": gateway_pb2.WatchOperationRequest(name=operation),
        "CheckRecycled": gateway_pb2.CheckRecycledRequest(number=NUMBER, since=since),
        "PublishEvents": gateway_pb2.PublishEventsRequest(batch=cmcc_events(fed)),
        "PullEvents": gateway_pb2.PullEventsRequest(),
    }
    assert set(requests) == GATEWAY_RPCS, "a GatewayService RPC is not tried"
    carrier_calls = [
        count_calls(monkeypatch, handle.adapter, "answer_recycled")
        for handle in fed.carriers.values()
    ]
    platform_calls = [
        count_calls(monkeypatch, handle.servicer.knobs, "fail") for handle in fed.platforms.values()
    ]
    # Every push platform's cursor exists, so the counts below hold still.
    await eventually(lambda: len(row_counts(fed)["cursors"]) == len(fed.platforms))
    await fed.gateway.audit.flush()
    before = row_counts(fed)

    target = fed.layout.gateway_endpoint
    got = {m: await outcome(target, theirs, stranger, m, r) for m, r in requests.items()}
    assert got == dict.fromkeys(requests, REFUSED)

    await fed.gateway.audit.flush()
    assert row_counts(fed) == before, "a refused call wrote to the gateway's database"
    assert "evil" not in before["cursors"]
    assert sum(c[0] for c in carrier_calls) == 0, "a carrier was asked for a signed answer"
    assert sum(c[0] for c in platform_calls) == 0, "a platform was called"
    # The same recycled check from a member does reach the carrier (the counters count).
    check = requests["CheckRecycled"]
    assert await outcome(target, fed.layout.pki_dir, WEIBO, "CheckRecycled", check) == "OK"
    assert sum(c[0] for c in carrier_calls) == 1


async def test_platforms_and_carriers_serve_the_federations_gateway_only(
    fed: Federation, tmp_path: Path
) -> None:
    other = PeerId(Role.GATEWAY, "evil")
    theirs = issue_member(fed.layout.pki_dir, other, tmp_path / "other-gateway")
    query = platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id="i1", claim=cmcc_claim(fed, Purpose.QUERY_PRIOR))]
    )
    platform = f"127.0.0.1:{fed.platforms['weibo'].port}"
    carrier = f"127.0.0.1:{fed.carriers['cmcc'].port}"
    listing = carrier_pb2.ListServedNumbersRequest(page_size=1)
    on_platform = {"stub": platform_pb2_grpc.PlatformServiceStub}
    on_carrier = {"stub": carrier_pb2_grpc.CarrierServiceStub}
    for pki_dir, peer, expected in [
        (theirs, other, REFUSED),
        (fed.layout.pki_dir, pki.GATEWAY, "OK"),
    ]:
        assert (
            await outcome(platform, pki_dir, peer, "BatchQueryBindings", query, **on_platform)
            == expected
        )
        assert (
            await outcome(carrier, pki_dir, peer, "ListServedNumbers", listing, **on_carrier)
            == expected
        )


async def test_removing_members_from_the_config_takes_effect_without_a_restart(
    fed: Federation, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
    pull = gateway_pb2.PullEventsRequest()
    weibo_calls = count_calls(monkeypatch, fed.platforms["weibo"].servicer.knobs, "fail")
    # What the platforms applied at start (the carriers' port halves), before anything here.
    applied = {p: len(h.store.applied_event_ids()) for p, h in fed.platforms.items()}
    app = await holder_app(fed, NUMBER)
    assert {r.platform_id for r in await app.query(PRIOR)} == set(fed.platforms)
    assert weibo_calls[0] == 1
    assert await outcome(target, d, WEIBO, "PullEvents", pull) == "OK"
    assert await outcome(target, d, CUCC, "GetTrustBundle") == "OK"

    # Remove platform weibo and carrier cucc: rewrite the TOML.
    config = fed.layout.gateway_config
    original = config.read_text()
    config.write_text(
        without_member(without_member(original, "platform", "weibo"), "carrier", "cucc")
    )

    async def removed() -> bool:
        return (
            await outcome(target, d, WEIBO, "PullEvents", pull) == REFUSED
            and await outcome(target, d, CUCC, "GetTrustBundle") == REFUSED
        )

    await eventually(removed)
    weibo_calls[0] = 0
    assert await outcome(target, d, TAOBAO, "PullEvents", pull) == "OK"  # others as before
    assert await outcome(target, d, CMCC, "GetTrustBundle") == "OK"
    others = set(fed.platforms) - {"weibo"}
    assert {r.platform_id for r in await app.query(PRIOR)} == others
    op = await app.release(PRIOR)
    done = (await app.watch(op.name))[-1]
    assert {r.platform_id for r in response(done).results} == others
    async with pki.secure_channel(target, d, CMCC) as ch:
        await gateway_pb2_grpc.GatewayServiceStub(ch).PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=cmcc_events(fed)), timeout=5
        )
    taobao = fed.platforms["taobao"].store
    await eventually(lambda: len(taobao.applied_event_ids()) == applied["taobao"] + 1)
    assert weibo_calls[0] == 0, "the removed platform was called"
    assert len(fed.platforms["weibo"].store.applied_event_ids()) == applied["weibo"]

    # A config that does not load changes nothing, and says so once.
    with caplog.at_level(logging.ERROR, logger="gateway.membership"):
        config.write_text(original + "\n[[platform]]\nid = 'Not An Id'\n")
        await eventually(lambda: "not applied" in caplog.text)
    assert await outcome(target, d, WEIBO, "PullEvents", pull) == REFUSED
    assert await outcome(target, d, TAOBAO, "PullEvents", pull) == "OK"

    # Adding them back needs no restart either: weibo is served, asked and sent events again.
    config.write_text(original)

    async def back() -> bool:
        return (
            await outcome(target, d, WEIBO, "PullEvents", pull) == "OK"
            and await outcome(target, d, CUCC, "GetTrustBundle") == "OK"
        )

    await eventually(back)
    assert {r.platform_id for r in await app.query(PRIOR)} == set(fed.platforms)
    weibo = fed.platforms["weibo"].store
    await eventually(lambda: len(weibo.applied_event_ids()) == applied["weibo"] + 1)


@pytest.mark.timeout(120)
async def test_a_platform_removed_while_a_query_waits_for_it_is_answered_for_at_once(
    tmp_path: Path,
) -> None:
    """weibo answers after 60 s; while a query waits for it, weibo is removed from the
    gateway's config. The query is answered as soon as the gateway lets weibo go: weibo
    UNAVAILABLE, its call cancelled (reason PLATFORM_UNAVAILABLE, code CANCELLED), every other
    platform as usual. Before, the query waited out its 30 s budget and said PLATFORM_TIMEOUT
    for weibo."""
    fed = await start_federation(
        tmp_path / "fed", limits={"platform_call_timeout": 30.0, "default_call_timeout": 40.0}
    )
    try:
        fed.platforms["weibo"].servicer.knobs.latency_ms = 60_000
        target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
        request = gateway_pb2.QueryBindingsRequest(claim=cmcc_claim(fed, Purpose.QUERY_PRIOR))
        async with pki.secure_channel(target, d, CMCC) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            query = asyncio.ensure_future(stub.QueryBindings(request, timeout=40))
            await eventually(lambda: fed.gateway.links["weibo"].queries.in_flight == 1)
            config = fed.layout.gateway_config
            config.write_text(without_member(config.read_text(), "platform", "weibo"))
            async with asyncio.timeout(20):  # the 30 s budget would fail this
                answer = await query
        by_id = {r.platform_id: r for r in answer.results}
        assert set(by_id) | set(answer.none_platform_ids) == set(fed.platforms)
        weibo = by_id["weibo"]
        assert weibo.outcome == gateway_pb2.PLATFORM_OUTCOME_UNAVAILABLE
        info = error_info(weibo.status)
        assert info is not None and info.reason == "PLATFORM_UNAVAILABLE", weibo
        assert info.metadata["code"] == "CANCELLED"
        others = [r for p, r in by_id.items() if p != "weibo"]
        assert all(r.outcome != gateway_pb2.PLATFORM_OUTCOME_UNAVAILABLE for r in others)
    finally:
        await fed.stop()


@pytest.mark.timeout(180)
async def test_sighup_makes_a_gateway_process_apply_its_config(tmp_path: Path) -> None:
    fed = await spawn_federation(tmp_path / "fed", carriers=["cmcc"], platforms=["weibo", "taobao"])
    try:
        target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
        pull = gateway_pb2.PullEventsRequest()
        assert await outcome(target, d, WEIBO, "PullEvents", pull) == "OK"
        config = fed.layout.gateway_config
        original = config.read_text()
        before = config.stat()
        # Edited in place to the same size and mtime (as `cp -p` or a config tool that keeps
        # times may leave it): only SIGHUP tells the gateway to look.
        edited = without_member(original, "platform", "weibo")
        edited += "#" * (len(original) - len(edited) - 1) + "\n"
        with config.open("r+") as f:
            f.write(edited)
        os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert config.stat().st_size == before.st_size
        fed.processes["gateway"].send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return await outcome(target, d, WEIBO, "PullEvents", pull) == REFUSED

        await eventually(refused, within=20)
        assert await outcome(target, d, TAOBAO, "PullEvents", pull) == "OK"
        assert fed.processes["gateway"].poll() is None
        log = (fed.layout.root / "logs" / "gateway.log").read_text()
        assert "reloaded (SIGHUP): -platform weibo" in log
    finally:
        fed.stop_all()
    assert fed.processes["gateway"].returncode == 0
