"""Starting and stopping a gateway leaves nothing behind, whenever it happens.

A stop at once while release batches are out, looped, on SQLite and PostgreSQL:
``Gateway.stop(0)`` cancels the batches still out; some of them have their platform's answer
and are being recorded on a database thread at that moment, while the stop goes on to give back
the replica's leases. Each round starts a gateway on the same database, sends a burst of
releases to slow platforms and stops the gateway at a random moment. Every stop must complete
(it once deadlocked on PostgreSQL: the outcome write and the lease release locked the same rows
in opposite orders), leave the stopped replica holding no lease, and leave every recorded
outcome audited. Afterwards one more gateway finishes every job, each applied exactly once.
The same for event pushes: every acknowledgement the cursors record is audited, and the stopped
replica holds no push lease.

A start that fails half way closes what it had opened.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.results import now_us
from gateway.schema import audit_log, event_cursors, release_jobs, release_tasks, task_leases
from gateway.server import Gateway
from gateway.store import TASK_DONE
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.errors import FailedPrecondition
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation, leaks, start_federation
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

WORLD = demo_scenario()
PLATFORMS = ("weibo", "taobao", "douyin", "xiaomi")
ROUNDS = 12
CLAIMS_PER_ROUND = 24


@pytest.fixture
async def federation(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    # Small batches, many out at once, to platforms that all answer after the same delay: when
    # the stop comes, some batches wait for their platform and many are being recorded.
    fed = await start_federation(
        tmp_path / "fed",
        database_url=db_url,
        platforms=PLATFORMS,
        platform_knobs={p: {"latency_ms": 20.0} for p in PLATFORMS},
        limits={"max_batch_items": 2, "max_in_flight_per_platform": 8},
    )
    try:
        yield fed
    finally:
        await fed.stop()


async def release_burst(fed: Federation, count: int) -> None:
    """``count`` release jobs from cmcc at once (new claims for the numbers it serves)."""
    now = datetime.now(UTC)
    layout = fed.layout
    signer = pki.load_carrier_signer(layout.pki_dir, "cmcc")
    served = [h for h in WORLD.histories_served_by("cmcc", now) if h.current_tenure(now)]
    cmcc = PeerId(Role.CARRIER, "cmcc")
    async with pki.secure_channel(layout.gateway_endpoint, layout.pki_dir, cmcc) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)

        async def release(i: int) -> None:
            h = served[i % len(served)]
            claim = TenureClaim.new(
                number=h.number,
                carrier_id="cmcc",
                tenure_start=h.tenure_start(now),
                purpose=Purpose.RELEASE_PRIOR,
                now=now,
            )
            await stub.ReleaseBindings(
                gateway_pb2.ReleaseBindingsRequest(
                    request_id=uuid.uuid4().hex, claim=sign_claim(claim, signer).to_proto()
                ),
                timeout=10,
            )

        await asyncio.gather(*(release(i) for i in range(count)))


def unaudited_outcomes(engine: sa.Engine) -> set[tuple[str, str]]:
    """(job, platform) of the tasks recorded done that have no RELEASE_DELIVERY audit entry."""
    with engine.connect() as c:
        done = {
            (r.job_id, r.platform_id)
            for r in c.execute(
                sa.select(release_tasks.c.job_id, release_tasks.c.platform_id).where(
                    release_tasks.c.state == TASK_DONE
                )
            )
        }
        audited = {
            (json.loads(r.detail)["job"], r.actor.removeprefix("platform:"))
            for r in c.execute(
                sa.select(audit_log.c.actor, audit_log.c.detail).where(
                    audit_log.c.event == "RELEASE_DELIVERY"
                )
            )
        }
    return done - audited


def leases_of(engine: sa.Engine, owner: str, after_us: int) -> tuple[int, int]:
    """Tasks ``owner`` still leases, and its lease records that run on past ``after_us``."""
    with engine.connect() as c:
        tasks = c.execute(
            sa.select(sa.func.count())
            .select_from(release_tasks)
            .where(release_tasks.c.lease_owner == owner)
        ).scalar_one()
        records = c.execute(
            sa.select(sa.func.count())
            .select_from(task_leases)
            .where(
                task_leases.c.owner == owner,
                task_leases.c.finished.is_(False),
                task_leases.c.until_us > after_us,
            )
        ).scalar_one()
    return tasks, records


async def test_stopping_while_batches_are_recorded_completes_and_gives_back_every_lease(
    federation: Federation,
) -> None:
    fed = federation
    config = load_gateway_config(fed.layout.gateway_config)
    engine = sa.create_engine(config.database_url)
    rng = random.Random(11)
    try:
        for _round in range(ROUNDS):
            gw = fed.gateway
            await release_burst(fed, CLAIMS_PER_ROUND)
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            await asyncio.wait_for(gw.stop(0), 30)
            stopped_us = now_us()
            assert leases_of(engine, gw.dispatcher.owner, stopped_us) == (0, 0)
            assert unaudited_outcomes(engine) == set()
            fed.gateway = await Gateway.start(config)
            await asyncio.wait_for(fed.gateway.ready.wait(), 20)
        # The last gateway finishes every job; each platform applied each claim once.
        async with asyncio.timeout(60):
            while True:
                with engine.connect() as c:
                    pending = c.execute(
                        sa.select(sa.func.count())
                        .select_from(release_jobs)
                        .where(release_jobs.c.done_us.is_(None))
                    ).scalar_one()
                if pending == 0:
                    break
                await asyncio.sleep(0.1)
        for p, handle in fed.platforms.items():
            assert handle.store.counts()["applied"] == ROUNDS * CLAIMS_PER_ROUND, p
        await fed.gateway.audit.flush()
        assert unaudited_outcomes(engine) == set()
    finally:
        engine.dispose()


async def publish_burst(fed: Federation, count: int) -> None:
    """``count`` batches of one DEACTIVATED event each, from cmcc, one after another."""
    now = datetime.now(UTC)
    numbers = [h.number for h in WORLD.histories_served_by("cmcc", now)]
    signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    cmcc = PeerId(Role.CARRIER, "cmcc")
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, cmcc) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for i in range(count):
            event = LifecycleEvent.new(numbers[i % len(numbers)], EventKind.DEACTIVATED, now)
            batch = sign_event_batch("cmcc", [event], signer, now=now)
            await stub.PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=batch.to_proto()), timeout=10
            )


def unaudited_acknowledgements(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """Platform -> (acknowledged seq, last one audited as ACKNOWLEDGED) where they differ."""
    with engine.connect() as c:
        acked = {
            r.platform_id: r.acked_seq
            for r in c.execute(sa.select(event_cursors.c.platform_id, event_cursors.c.acked_seq))
        }
        audited: dict[str, int] = {}
        for r in c.execute(
            sa.select(audit_log.c.actor, audit_log.c.detail).where(
                audit_log.c.event == "EVENT_DELIVERY", audit_log.c.outcome == "ACKNOWLEDGED"
            )
        ):
            p = r.actor.removeprefix("platform:")
            audited[p] = max(audited.get(p, 0), int(json.loads(r.detail)["through_seq"]))
    return {p: (a, audited.get(p, 0)) for p, a in acked.items() if a != audited.get(p, 0)}


def push_leases_of(engine: sa.Engine, owner: str) -> list[str]:
    with engine.connect() as c:
        return list(
            c.execute(
                sa.select(event_cursors.c.platform_id).where(event_cursors.c.lease_owner == owner)
            ).scalars()
        )


async def test_stopping_while_events_are_acknowledged_audits_each_and_gives_back_push_leases(
    federation: Federation,
) -> None:
    fed = federation
    config = load_gateway_config(fed.layout.gateway_config)
    engine = sa.create_engine(config.database_url)
    rng = random.Random(12)
    try:
        for _round in range(ROUNDS):
            gw = fed.gateway
            await publish_burst(fed, 10)
            await asyncio.sleep(rng.uniform(0.0, 0.1))
            await asyncio.wait_for(gw.stop(0), 30)
            assert push_leases_of(engine, gw.dispatcher.owner) == []
            assert unaudited_acknowledgements(engine) == {}
            fed.gateway = await Gateway.start(config)
            await asyncio.wait_for(fed.gateway.ready.wait(), 20)
    finally:
        engine.dispose()


async def test_a_start_that_fails_half_way_closes_what_it_opened(tmp_path: Path) -> None:
    """The port is taken: the store, the channels to the members and the server the start
    had opened by then are closed again, so the next start on the same SQLite file works."""
    layout = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    config = load_gateway_config(layout.gateway_config)
    host, port = config.listen.rsplit(":", 1)
    point = leaks.mark()
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        with pytest.raises(FailedPrecondition) as refused:
            await Gateway.start(config)
        assert refused.value.reason == "CANNOT_LISTEN"
    assert [str(o) for o in leaks.open_since(point)] == []
    gw = await Gateway.start(config)
    await gw.stop(0)
