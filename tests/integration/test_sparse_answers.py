"""Answers shaped for the common case, over real servers with mTLS: most platforms have nothing
for most numbers. The gateway asks every platform for sparse answers (only the claims found or
refused; silence means nothing is bound), and a carrier that opts in (compact_none) gets the
platforms with nothing as one list of ids instead of a PlatformResult each. Old members keep
working: a platform that ignores sparse_answers answers every claim, and a carrier that does not
opt in gets one result per platform."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.identity import PeerId, Role
from numfed.rpc import error_info
from numfed.scenario import PLATFORMS, demo_scenario
from numfed.testing import Federation, start_federation
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, holder_pb2, platform_pb2
from platform_stubs.sdk import PlatformServicer
from tests.integration.holder import PRIOR, HolderApp

Outcome = gateway_pb2.PlatformOutcome
WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")
OLD = "toutiao"
"""A platform built before sparse answers: it ignores the flag and answers every claim."""
DOWN = "xiaomi"
"""A platform that is down for these tests."""
Call = tuple[str, platform_pb2.BatchQueryBindingsRequest, platform_pb2.BatchQueryBindingsResponse]
Alter = Callable[[platform_pb2.BatchQueryBindingsResponse], object]


@dataclass
class Tap:
    """Every platform's query calls as they were sent and answered; ``alter`` changes one
    platform's answers from now on (a broken platform, without restarting it)."""

    seen: list[Call] = field(default_factory=list)
    alter: dict[str, Alter] = field(default_factory=dict)


@pytest.fixture
async def federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Federation, Tap]]:
    """The demo federation, its platforms' query calls tapped; OLD ignores sparse_answers."""
    tap = Tap()
    answer = PlatformServicer.BatchQueryBindings

    async def tapped(
        self: PlatformServicer, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        sent = platform_pb2.BatchQueryBindingsRequest()
        sent.CopyFrom(request)
        if self.platform_id == OLD:
            request.ClearField("sparse_answers")
        response = await answer(self, request, context)
        if self.platform_id in tap.alter:
            tap.alter[self.platform_id](response)
        tap.seen.append((self.platform_id, sent, response))
        return response

    monkeypatch.setattr(PlatformServicer, "BatchQueryBindings", tapped)
    fed = await start_federation(tmp_path / "fed")
    try:
        yield fed, tap
    finally:
        await fed.stop()


def query_claim(fed: Federation, number: str) -> Any:
    now = datetime.now(UTC)
    claim = TenureClaim.new(
        number=number,
        carrier_id="cmcc",
        tenure_start=WORLD.histories[number].tenure_start(now),
        purpose=Purpose.QUERY_PRIOR,
        now=now,
    )
    return sign_claim(claim, pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")).to_proto()


async def test_the_platforms_with_nothing_are_one_list_for_a_carrier_that_asks(
    federation: tuple[Federation, Tap],
) -> None:
    fed, tap = federation
    fed.platforms[DOWN].servicer.knobs.outage = True
    claim = query_claim(fed, WORLD.showcase["recycled_once"])
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        compact = await stub.QueryBindings(
            gateway_pb2.QueryBindingsRequest(claim=claim, compact_none=True), timeout=10
        )
        whole = await stub.QueryBindings(gateway_pb2.QueryBindingsRequest(claim=claim), timeout=10)

    # A carrier that does not opt in: one result per platform, as before.
    assert [r.platform_id for r in whole.results] == sorted(PLATFORMS)
    assert not whole.none_platform_ids
    by = {r.platform_id: r for r in whole.results}
    nothing = sorted(p for p, r in by.items() if r.outcome == Outcome.PLATFORM_OUTCOME_NONE)
    found = sorted(p for p, r in by.items() if r.outcome == Outcome.PLATFORM_OUTCOME_FOUND)
    assert OLD in nothing and len(nothing) >= 2 and found  # the showcase: some found, most not
    assert by[DOWN].outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
    for p in nothing:
        assert by[p].attempts == 1 and by[p].HasField("answered_at") and not by[p].bindings

    # One that does: the same answers, the platforms with nothing as one sorted list of ids.
    assert list(compact.none_platform_ids) == nothing
    assert [r.platform_id for r in compact.results] == sorted({*found, DOWN})
    for r in compact.results:
        assert r == by[r.platform_id] or (
            r.answered_at != by[r.platform_id].answered_at
            and r.bindings == by[r.platform_id].bindings
            and r.outcome == by[r.platform_id].outcome
        )

    # Every platform was asked for sparse answers; those with nothing answered with silence,
    # except the old one, which answered every claim (and was understood all the same).
    assert tap.seen and all(request.sparse_answers for _p, request, _r in tap.seen)
    for platform_id, request, response in tap.seen:
        if platform_id == OLD:
            assert not response.sparse and len(response.results) == len(request.items)
        elif platform_id in nothing:
            assert response.sparse and not response.results
        else:
            assert response.sparse and len(response.results) == len(request.items)


async def test_a_sparse_answer_naming_claims_it_was_not_asked_is_a_bad_answer(
    federation: tuple[Federation, Tap],
) -> None:
    fed, tap = federation
    tap.alter["weibo"] = lambda response: response.results.add(item_id="never-sent")
    # A sparse answer that leaves out a claim it found is indistinguishable from "nothing" by
    # design (the kit's sparse_answers_honoured catches it); naming a claim never sent is not.
    claim = query_claim(fed, WORLD.showcase["recycled_once"])
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        compact = await stub.QueryBindings(
            gateway_pb2.QueryBindingsRequest(claim=claim, compact_none=True), timeout=10
        )
    weibo = next(r for r in compact.results if r.platform_id == "weibo")
    info = error_info(weibo.status)
    assert weibo.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
    assert info is not None and info.reason == "PLATFORM_BAD_ANSWER", weibo
    assert "weibo" not in compact.none_platform_ids  # a broken answer never reads as nothing
    assert "toutiao" in compact.none_platform_ids  # the others are answered


async def test_the_holder_app_chooses_the_shape_of_its_answer(
    federation: tuple[Federation, Tap],
) -> None:
    fed, _tap = federation
    now = datetime.now(UTC)
    number = WORLD.showcase["recycled_once"]
    tenure = WORLD.histories[number].current_tenure(now)
    assert tenure is not None
    state = fed.layout.root / "state" / "carrier-cmcc"
    app = await HolderApp.verified(
        fed.holder_channel("cmcc"), state, number, WORLD.holders[tenure.holder_id]
    )
    whole = await app.query(PRIOR)
    compact = await app.stub.QueryHolderBindings(
        holder_pb2.QueryHolderBindingsRequest(
            session_token=app.token, scope=PRIOR, compact_none=True
        ),
        timeout=10,
    )
    nothing = [r.platform_id for r in whole if r.outcome == Outcome.PLATFORM_OUTCOME_NONE]
    assert len(whole) == len(PLATFORMS) and nothing
    assert list(compact.none_platform_ids) == nothing
    assert sorted(
        [*compact.none_platform_ids, *(r.platform_id for r in compact.results)]
    ) == sorted(PLATFORMS)
