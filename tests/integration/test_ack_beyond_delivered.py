"""A platform acknowledges only event batches it was delivered, by poll or by push.

Real gateways on port 0 with mTLS, on SQLite and on PostgreSQL (two replicas there); a poll
platform is played by the test through its own certificate; a push platform is a reference
platform whose DeliverEvents answer can be made to claim more than the call carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import audit_log, event_cursors
from gateway.server import Gateway
from numfed import pki
from numfed.config import GatewayConfig, load_gateway_config, load_platform_config
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, platform_pb2
from platform_stubs.reference import PlatformHandle, start_platform
from platform_stubs.sdk import PlatformServicer

NUMBER = "+8613812345678"
CMCC = PeerId(Role.CARRIER, "cmcc")
XIAOMI = PeerId(Role.PLATFORM, "xiaomi")  # polls


@dataclasses.dataclass
class Gateways:
    layout: FederationLayout
    configs: list[GatewayConfig]
    gateways: list[Gateway]

    def channel(self, peer: PeerId, replica: int = 0) -> grpc.aio.Channel:
        port = self.gateways[replica % len(self.gateways)].port
        return pki.secure_channel(f"127.0.0.1:{port}", self.layout.pki_dir, peer)

    async def restart(self) -> None:
        for gw in self.gateways:
            await gw.stop(5.0)
        self.gateways = []
        for c in self.configs:  # one by one, so that a failed start leaves the others to stop
            self.gateways.append(await Gateway.start(c))

    async def stop(self) -> None:
        async with contextlib.AsyncExitStack() as stack:  # each one, even if another fails
            for gw in self.gateways:
                stack.push_async_callback(gw.stop, 5.0)

    def cursor(self, platform: str) -> tuple[int, int] | None:
        """(acked_seq, delivered_seq) of a platform, None before its first delivery."""
        c_ = event_cursors.c
        with self.gateways[0].store.engine.connect() as c:
            row = c.execute(
                sa.select(c_.acked_seq, c_.delivered_seq).where(c_.platform_id == platform)
            ).first()
        return None if row is None else (int(row.acked_seq), int(row.delivered_seq))

    async def deliveries(self) -> list[tuple[str, str]]:
        """(outcome, detail) of every EVENT_DELIVERY audit entry."""
        for gw in self.gateways:
            await gw.audit.flush()
        with self.gateways[0].store.engine.connect() as c:
            return [
                (r.outcome, r.detail)
                for r in c.execute(
                    sa.select(audit_log.c.outcome, audit_log.c.detail)
                    .where(audit_log.c.event == "EVENT_DELIVERY")
                    .order_by(audit_log.c.seq)
                )
            ]


async def start_gateways(layout: FederationLayout) -> Gateways:
    configs = [
        dataclasses.replace(load_gateway_config(cfg), listen="127.0.0.1:0")
        for cfg in layout.replica_configs
    ]
    configs[0] = dataclasses.replace(configs[0], listen=layout.replica_endpoints[0])
    g = Gateways(layout, configs, [])
    try:
        for c in configs:
            g.gateways.append(await Gateway.start(c))
    except BaseException:
        await g.stop()
        raise
    return g


@pytest.fixture
async def poll(tmp_path: Path, db_url: str) -> AsyncIterator[Gateways]:
    replicas = 2 if db_url.startswith("postgresql") else 1
    layout = create_federation(
        tmp_path / "fed",
        database_url=db_url,
        replicas=replicas,
        carriers=("cmcc",),
        platforms=("xiaomi",),
        platform_knobs={"xiaomi": {"events": "poll"}},
    )
    g = await start_gateways(layout)
    try:
        yield g
    finally:
        await g.stop()


async def publish(g: Gateways, count: int) -> None:
    signer = pki.load_carrier_signer(g.layout.pki_dir, "cmcc")
    async with g.channel(CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for _ in range(count):
            event = LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, datetime.now(UTC))
            env = sign_event_batch("cmcc", [event], signer, now=datetime.now(UTC))
            await stub.PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=env.to_proto()), timeout=5
            )


async def pull(
    g: Gateways, ack: int, max_batches: int = 0, replica: int = 0
) -> list[int] | tuple[grpc.StatusCode, str]:
    """The seqs returned, or (code, reason) of the refusal."""
    async with g.channel(XIAOMI, replica) as ch:
        try:
            answer = await gateway_pb2_grpc.GatewayServiceStub(ch).PullEvents(
                gateway_pb2.PullEventsRequest(ack_through_seq=ack, max_batches=max_batches),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            info = rpc_error_info(exc)
            return exc.code(), info.reason if info else ""
    return [b.seq for b in answer.batches]


BEYOND = (grpc.StatusCode.INVALID_ARGUMENT, "ACK_BEYOND_DELIVERED")


async def test_a_poll_platform_cannot_acknowledge_what_it_was_not_delivered(
    poll: Gateways,
) -> None:
    await publish(poll, 3)
    assert await pull(poll, 1) == BEYOND  # nothing was delivered yet
    assert poll.cursor("xiaomi") is None  # not even a cursor was made
    assert await pull(poll, 0, max_batches=2) == [1, 2]
    assert poll.cursor("xiaomi") == (0, 2)
    assert await pull(poll, 3, replica=1) == BEYOND  # in the log, but never delivered to it
    assert poll.cursor("xiaomi") == (0, 2)
    assert await poll.deliveries() == []  # no acknowledgement was recorded
    assert await pull(poll, 2, replica=1) == [3]
    assert poll.cursor("xiaomi") == (2, 3)
    # What was delivered survives a restart, and still bounds what may be acknowledged.
    await publish(poll, 2)
    await poll.restart()
    assert await pull(poll, 5) == BEYOND
    assert poll.cursor("xiaomi") == (2, 3)
    assert await pull(poll, 3, replica=1) == [4, 5]
    assert await pull(poll, 5) == []
    assert poll.cursor("xiaomi") == (5, 5)
    acks = await poll.deliveries()
    assert [o for o, _d in acks] == ["ACKNOWLEDGED"] * 3, acks


class OverclaimingPlatform(PlatformServicer):
    """A platform whose DeliverEvents answer acknowledges more than the call carried."""

    overclaim = True
    calls: list[list[int]]
    called: asyncio.Event

    async def DeliverEvents(
        self,
        request: platform_pb2.DeliverEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.DeliverEventsResponse:
        seqs = [b.seq for b in request.batches]
        self.calls.append(seqs)
        self.called.set()
        return platform_pb2.DeliverEventsResponse(
            ack_through_seq=seqs[-1] + 10 if self.overclaim else seqs[-1]
        )


@pytest.fixture
async def push(tmp_path: Path, db_url: str) -> AsyncIterator[tuple[Gateways, PlatformHandle]]:
    layout = create_federation(
        tmp_path / "fed",
        database_url=db_url,
        carriers=("cmcc",),
        platforms=("weibo",),
        limits={"retry_initial_backoff": 0.05, "retry_max_backoff": 0.2},
    )
    OverclaimingPlatform.calls = []
    OverclaimingPlatform.called = asyncio.Event()
    OverclaimingPlatform.overclaim = True
    async with contextlib.AsyncExitStack() as stack:  # stops what started, last first
        platform = await start_platform(
            load_platform_config(layout.platform_configs["weibo"]),
            servicer_class=OverclaimingPlatform,
        )
        stack.push_async_callback(platform.stop, 0)
        g = await start_gateways(layout)
        stack.push_async_callback(g.stop)
        yield g, platform


async def calls_at_least(n: int, within: float = 20.0) -> list[list[int]]:
    async with asyncio.timeout(within):
        while len(OverclaimingPlatform.calls) < n:
            OverclaimingPlatform.called.clear()
            await OverclaimingPlatform.called.wait()
    return OverclaimingPlatform.calls


async def test_a_push_answer_acknowledging_more_than_was_sent_moves_nothing(
    push: tuple[Gateways, PlatformHandle],
) -> None:
    g, _platform = push
    await publish(g, 2)
    calls = await calls_at_least(3)
    # Every call carried the same batches again: none of them was taken as acknowledged.
    assert all(c[0] == 1 for c in calls), calls
    assert g.cursor("weibo") == (0, 2)  # delivered, not acknowledged
    refused = [d for o, d in await g.deliveries() if o == "ACK_BEYOND_DELIVERED"]
    assert any('"sent_through_seq": "2"' in d for d in refused), refused
    # An honest answer moves the cursor to what it acknowledged.
    OverclaimingPlatform.overclaim = False
    async with asyncio.timeout(20):
        while g.cursor("weibo") != (2, 2):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert [o for o, _d in await g.deliveries()].count("ACKNOWLEDGED") == 1
