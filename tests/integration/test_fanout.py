"""Query fan-out over real servers: a slow platform costs only its own deadline; holders'
queries heading to one platform at the same moment share batched calls."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import Federation

Outcome = gateway_pb2.PlatformOutcome
WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")


def query(fed: Federation, number: str) -> gateway_pb2.QueryBindingsRequest:
    now = datetime.now(UTC)
    claim = TenureClaim.new(
        number=number,
        carrier_id="cmcc",
        tenure_start=WORLD.histories[number].tenure_start(now),
        purpose=Purpose.QUERY_PRIOR,
        now=now,
    )
    signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    return gateway_pb2.QueryBindingsRequest(claim=sign_claim(claim, signer).to_proto())


async def test_slow_platform_times_out_alone(federation: Federation) -> None:
    federation.platforms["douyin"].servicer.knobs.latency_ms = 5000
    number = WORLD.showcase["recycled_once"]
    async with pki.secure_channel(
        federation.layout.gateway_endpoint, federation.layout.pki_dir, CMCC
    ) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        started = time.monotonic()
        answer = await stub.QueryBindings(query(federation, number), timeout=2.0)
        elapsed = time.monotonic() - started
    by = {r.platform_id: r for r in answer.results}
    assert by["douyin"].outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
    assert by["weibo"].outcome == Outcome.PLATFORM_OUTCOME_FOUND
    assert all(
        r.outcome in (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
        for p, r in by.items()
        if p != "douyin"
    )
    assert elapsed < 4.0  # within the caller's deadline, long before the slow platform's 5 s


async def test_concurrent_queries_share_batched_calls(federation: Federation) -> None:
    for handle in federation.platforms.values():
        handle.servicer.knobs.latency_ms = 50  # keep calls in flight so that queries coalesce
    now = datetime.now(UTC)
    served = [h.number for h in WORLD.histories_served_by("cmcc", now) if h.current_tenure(now)]
    numbers = (served * 30)[:30]  # thirty holders' queries at once
    links = federation.gateway.links
    before = {p: link.queries.calls for p, link in links.items()}
    async with pki.secure_channel(
        federation.layout.gateway_endpoint, federation.layout.pki_dir, CMCC
    ) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        answers = await asyncio.gather(
            *(stub.QueryBindings(query(federation, n), timeout=10) for n in numbers)
        )
    assert len(numbers) >= 20
    assert all(len(a.results) == len(federation.platforms) for a in answers)
    for p, link in links.items():
        calls = link.queries.calls - before[p]
        assert 1 <= calls < len(numbers), f"{p}: {calls} calls for {len(numbers)} queries"
