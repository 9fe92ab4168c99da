"""A lying carrier cannot move a number it does not serve, nor speak for it (docs/authority.md).

The attack reported from outside: cucc publishes one signed PORTED(N, cmcc -> cucc) for a cmcc
subscriber's number and, on the strength of its own word, lists the holder's bindings, releases
the bindings the holder made since their real X, and has every platform release N. Each step is
made here as the lying member would, with its own certificate and signing key, against real
servers; each is refused with a precise reason and changes nothing. Platforms refuse the same
things when a lying gateway hands them over directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import event_batches, number_ports, port_halves, release_jobs
from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import create_federation
from numfed.identity import PeerId, Role
from numfed.pgtemp import TempPostgres
from numfed.portability import NumberPlan
from numfed.rpc import error_info, rpc_error_info
from numfed.scenario import demo_scenario
from numfed.v1 import (
    claim_pb2,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
)
from tests.integration.conftest import Federation

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # a cmcc subscriber's number, in cmcc's range
REAL_X = WORLD.histories[N].tenure_start(datetime.now(UTC))


def signed_batch(fed: Federation, carrier: str, *events: LifecycleEvent) -> claim_pb2.Envelope:
    key = pki.load_carrier_signer(fed.layout.pki_dir, carrier)
    return sign_event_batch(carrier, events, key, now=datetime.now(UTC)).to_proto()


def tenure_claim(
    fed: Federation, carrier: str, purpose: Purpose, tenure_start: datetime
) -> claim_pb2.Envelope:
    claim = TenureClaim.new(
        number=N,
        carrier_id=carrier,
        tenure_start=tenure_start,
        purpose=purpose,
        now=datetime.now(UTC),
    )
    return sign_claim(claim, pki.load_carrier_signer(fed.layout.pki_dir, carrier)).to_proto()


async def call_gateway(fed: Federation, carrier: str, method: str, request: object) -> object:
    async with pki.secure_channel(
        fed.layout.gateway_endpoint, fed.layout.pki_dir, PeerId(Role.CARRIER, carrier)
    ) as ch:
        return await getattr(gateway_pb2_grpc.GatewayServiceStub(ch), method)(request, timeout=10)


async def refused(fed: Federation, carrier: str, method: str, request: object) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call_gateway(fed, carrier, method, request)
    info = rpc_error_info(e.value)
    return e.value.code().name, info.reason if info else ""


def gateway_state(fed: Federation) -> str:
    """The gateway's event log, jobs and port state, digested."""
    h = hashlib.sha256()
    with fed.gateway.store.engine.connect() as c:
        for table in (event_batches, release_jobs, number_ports, port_halves):
            for row in c.execute(sa.select(table).order_by(*table.primary_key)).all():
                h.update(repr(tuple(row)).encode())
    return h.hexdigest()


def platform_state(fed: Federation) -> dict[str, list[tuple[int, bool, bool]]]:
    """Every platform's bindings of N: (id, active, stale)."""
    return {
        p: [(b.binding_id, b.active, b.stale) for b in h.store.bindings_for([N])[N]]
        for p, h in fed.platforms.items()
    }


async def test_a_recipients_lone_port_half_gives_it_nothing(federation: Federation) -> None:
    fed = federation
    now = datetime.now(UTC)
    half = LifecycleEvent.new(N, EventKind.PORTED, now, from_carrier="cmcc", to_carrier="cucc")
    await call_gateway(
        fed,
        "cucc",
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, "cucc", half)),
    )
    await fed.events_settled()
    assert fed.gateway.portability.carrier_for(N) == "cmcc"  # the donor still serves it
    bindings = platform_state(fed)
    before = gateway_state(fed)

    # 1. List the holder's bindings as if cucc's subscriber had held N since now.
    query = gateway_pb2.QueryBindingsRequest(
        claim=tenure_claim(fed, "cucc", Purpose.QUERY_PRIOR, now)
    )
    assert await refused(fed, "cucc", "QueryBindings", query) == (
        "PERMISSION_DENIED",
        "NUMBER_NOT_SERVED",
    )
    # 2. Release what the holder bound since their real X.
    release = gateway_pb2.ReleaseBindingsRequest(
        request_id=uuid.uuid4().hex, claim=tenure_claim(fed, "cucc", Purpose.RELEASE_PRIOR, now)
    )
    assert await refused(fed, "cucc", "ReleaseBindings", release) == (
        "PERMISSION_DENIED",
        "NUMBER_NOT_SERVED",
    )
    # 3. Have every platform release N.
    pending = LifecycleEvent.new(N, EventKind.PENDING_RELEASE, now, as_of=now)
    publish = gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, "cucc", pending))
    assert await refused(fed, "cucc", "PublishEvents", publish) == (
        "PERMISSION_DENIED",
        "NUMBER_NOT_SERVED",
    )
    # 4. A port half and the event it would license, in one batch: refused whole.
    both = gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, "cucc", half, pending))
    assert await refused(fed, "cucc", "PublishEvents", both) == (
        "PERMISSION_DENIED",
        "NUMBER_NOT_SERVED",
    )
    # The carriers' sync does not reopen the window either.
    for member in fed.gateway.config.carriers:
        await fed.gateway.sync_carrier(member)
    assert fed.gateway.portability.carrier_for(N) == "cmcc"
    assert gateway_state(fed) == before, "a refused request changed the gateway"
    assert platform_state(fed) == bindings, "a refused request reached a platform"

    # The real holder's carrier still speaks for N.
    answer = await call_gateway(
        fed,
        "cmcc",
        "QueryBindings",
        gateway_pb2.QueryBindingsRequest(
            claim=tenure_claim(fed, "cmcc", Purpose.QUERY_PRIOR, REAL_X)
        ),
    )
    assert len(answer.results) == len(fed.platforms)  # type: ignore[attr-defined]


async def test_only_the_donor_and_the_recipient_sign_port_halves(federation: Federation) -> None:
    fed = federation
    before = gateway_state(fed)
    half = LifecycleEvent.new(
        N, EventKind.PORTED, datetime.now(UTC), from_carrier="cmcc", to_carrier="cucc"
    )
    request = gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, "ctcc", half))
    assert await refused(fed, "ctcc", "PublishEvents", request) == (
        "PERMISSION_DENIED",
        "NOT_PORT_PARTY",
    )
    assert gateway_state(fed) == before


async def test_both_halves_move_the_number_and_the_donor_falls_silent(
    federation: Federation,
) -> None:
    fed = federation
    at = datetime.now(UTC)
    for carrier in ("cucc", "cmcc"):  # recipient first, then the donor completes it
        half = LifecycleEvent.new(N, EventKind.PORTED, at, from_carrier="cmcc", to_carrier="cucc")
        await call_gateway(
            fed,
            carrier,
            "PublishEvents",
            gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, carrier, half)),
        )
    assert fed.gateway.portability.carrier_for(N) == "cucc"
    late = LifecycleEvent.new(N, EventKind.DEACTIVATED, datetime.now(UTC))
    request = gateway_pb2.PublishEventsRequest(batch=signed_batch(fed, "cmcc", late))
    assert await refused(fed, "cmcc", "PublishEvents", request) == (
        "PERMISSION_DENIED",
        "NUMBER_NOT_SERVED",
    )
    # Platforms learnt the port from the log and now take cucc's word on N, X unchanged.
    await fed.events_settled()
    for handle in fed.platforms.values():
        plan = NumberPlan.from_bundle(handle.trust.trusted().bundle)
        assert handle.store.serving_carriers([N], plan) == {N: "cucc"}
    answer = await call_gateway(
        fed,
        "cucc",
        "QueryBindings",
        gateway_pb2.QueryBindingsRequest(
            claim=tenure_claim(fed, "cucc", Purpose.QUERY_PRIOR, REAL_X)
        ),
    )
    outcomes = {r.platform_id: r.outcome for r in answer.results}  # type: ignore[attr-defined]
    assert gateway_pb2.PLATFORM_OUTCOME_REFUSED not in outcomes.values()


async def platform_call(fed: Federation, platform: str, method: str, request: object) -> object:
    """Call a platform directly with the gateway's identity: what a lying gateway can do."""
    async with pki.secure_channel(
        fed.layout.platform_endpoints[platform],
        fed.layout.pki_dir,
        pki.GATEWAY,
        server=PeerId(Role.PLATFORM, platform),
    ) as ch:
        return await getattr(platform_pb2_grpc.PlatformServiceStub(ch), method)(request, timeout=10)


async def test_platforms_keep_the_rules_when_the_gateway_lies(federation: Federation) -> None:
    """A gateway that lets cucc's lone half and its events through finds every platform
    applying the same rules: the events are not applied, the claims are refused per item."""
    fed = federation
    now = datetime.now(UTC)
    bindings = platform_state(fed)
    half = LifecycleEvent.new(N, EventKind.PORTED, now, from_carrier="cmcc", to_carrier="cucc")
    pending = LifecycleEvent.new(N, EventKind.PENDING_RELEASE, now, as_of=now)
    stale = LifecycleEvent.new(N, EventKind.REASSIGNED, now, tenure_start=now)
    head = await fed.gateway.store.run(fed.gateway.events.head)
    batches = [
        events_pb2.SequencedBatch(seq=head + 1, batch=signed_batch(fed, "cucc", half)),
        events_pb2.SequencedBatch(seq=head + 2, batch=signed_batch(fed, "cucc", pending, stale)),
    ]
    for p in fed.platforms:
        answer = await platform_call(
            fed, p, "DeliverEvents", platform_pb2.DeliverEventsRequest(batches=batches)
        )
        # NUMBER_NOT_SERVED may be the platform's own staleness (a numbering plan newer than its
        # bundle): the batch is held, not acknowledged, and never applied (numfed/staleness.py).
        assert answer.ack_through_seq == head + 1  # type: ignore[attr-defined]
        assert head + 2 in fed.platforms[p].servicer.events.held
    claim = tenure_claim(fed, "cucc", Purpose.RELEASE_PRIOR, now)
    for p in fed.platforms:
        answer = await platform_call(
            fed,
            p,
            "BatchReleaseBindings",
            platform_pb2.BatchReleaseBindingsRequest(
                items=[platform_pb2.ReleaseItem(item_id="1", claim=claim)]
            ),
        )
        (result,) = answer.results  # type: ignore[attr-defined]
        info = error_info(result.status)
        assert result.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert info is not None and info.reason == "NUMBER_NOT_SERVED"
    assert platform_state(fed) == bindings, "a platform applied a non-serving carrier's word"


async def test_a_port_completed_through_one_replica_counts_at_once_on_another(
    tmp_path: Path, postgres: TempPostgres
) -> None:
    """Two replicas on one PostgreSQL, the follower that mirrors completed ports slowed to an
    hour: a port completed through replica 1 must still let the new carrier speak through
    replica 2 at once. A replica reads the ports again before a NUMBER_NOT_SERVED is final."""
    layout = create_federation(
        tmp_path / "fed",
        database_url=postgres.create_database("authority_replicas"),
        replicas=2,
        limits={"portability_refresh": 3600.0},
    )
    gateways: list[Gateway] = []
    try:
        for cfg in layout.replica_configs:
            config = dataclasses.replace(load_gateway_config(cfg), listen="127.0.0.1:0")
            gateways.append(await Gateway.start(config))

        async def call(replica: int, carrier: str, method: str, request: object) -> object:
            target = f"127.0.0.1:{gateways[replica].port}"
            peer = PeerId(Role.CARRIER, carrier)
            async with pki.secure_channel(target, layout.pki_dir, peer) as ch:
                stub = gateway_pb2_grpc.GatewayServiceStub(ch)
                return await getattr(stub, method)(request, timeout=10)

        at = datetime.now(UTC)
        for carrier in ("cmcc", "cucc"):
            key = pki.load_carrier_signer(layout.pki_dir, carrier)
            half = LifecycleEvent.new(
                N, EventKind.PORTED, at, from_carrier="cmcc", to_carrier="cucc"
            )
            batch = sign_event_batch(carrier, [half], key, now=datetime.now(UTC)).to_proto()
            await call(0, carrier, "PublishEvents", gateway_pb2.PublishEventsRequest(batch=batch))
        assert gateways[0].portability.carrier_for(N) == "cucc"
        assert gateways[1].portability.carrier_for(N) == "cmcc"  # its mirror is behind
        claim = TenureClaim.new(
            number=N,
            carrier_id="cucc",
            tenure_start=REAL_X,
            purpose=Purpose.QUERY_PRIOR,
            now=datetime.now(UTC),
        )
        env = sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cucc")).to_proto()
        answer = await call(1, "cucc", "QueryBindings", gateway_pb2.QueryBindingsRequest(claim=env))
        assert len(answer.results) == len(layout.platform_configs)  # type: ignore[attr-defined]
        assert gateways[1].portability.carrier_for(N) == "cucc"
    finally:
        for gw in gateways:
            await gw.stop(5.0)
