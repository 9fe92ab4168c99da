"""The carriers say which numbers exist, not a phone-number library's snapshot.

libphonenumber's metadata refused every number of +86 149 (MALFORMED_NUMBER) while ctcc gives
them out; the signed numbering plan lists 149 for ctcc, so such a number goes through the whole
federation. A number in no range of the plan is refused with NUMBER_NOT_IN_PLAN by the gateway
and by each platform on its own (a lying gateway cannot slip it past them).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.history import EventKind as HistoryKind
from numfed.history import NumberEvent, NumberHistory
from numfed.rpc import error_info
from numfed.scenario import Holder
from numfed.v1 import (
    claim_pb2,
    events_pb2,
    gateway_pb2,
    platform_pb2,
)
from tests.integration.conftest import Federation
from tests.integration.holder import OWN, PRIOR, HolderApp, counts, response
from tests.integration.test_authority import call_gateway, platform_call, refused

NEW_BLOCK = "+8614900138000"
"""In ctcc's 149 block, which libphonenumber's metadata does not know."""
OUTSIDE = "+8617012345678"
"""A number of a possible length in +86 170, a block in no range of the federation's plan."""
X = datetime(2024, 3, 1, 2, tzinfo=UTC)
HOLDER = Holder("ctcc-h149", "赵敏", "110105198804127031")
Outcome = gateway_pb2.PlatformOutcome


def claim(fed: Federation, carrier: str, number: str, purpose: Purpose) -> claim_pb2.Envelope:
    c = TenureClaim.new(
        number=number, carrier_id=carrier, tenure_start=X, purpose=purpose, now=datetime.now(UTC)
    )
    return sign_claim(c, pki.load_carrier_signer(fed.layout.pki_dir, carrier)).to_proto()


def batch(fed: Federation, carrier: str, event: LifecycleEvent) -> claim_pb2.Envelope:
    key = pki.load_carrier_signer(fed.layout.pki_dir, carrier)
    return sign_event_batch(carrier, [event], key, now=datetime.now(UTC)).to_proto()


async def test_a_number_of_a_block_the_library_does_not_know_goes_end_to_end(
    federation: Federation,
) -> None:
    fed = federation
    fed.carriers["ctcc"].adapter.registry.seed(
        [HOLDER],
        [
            NumberHistory(
                NEW_BLOCK, (NumberEvent(HistoryKind.ASSIGNED, X, "ctcc", HOLDER.holder_id),)
            )
        ],
    )
    weibo = fed.platforms["weibo"].store
    weibo.seed(
        [
            ("wb149prior", "前任", NEW_BLOCK, "ACCOUNT_LOGIN", X - timedelta(days=400)),
            ("wb149own", "赵", NEW_BLOCK, "ACCOUNT_LOGIN", X + timedelta(days=10)),
        ]
    )
    state = fed.layout.root / "state" / "carrier-ctcc"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fed.carriers['ctcc'].holder_port}") as ch:
        app = await HolderApp.verified(ch, state, NEW_BLOCK, HOLDER)
        found = await app.query(PRIOR)
        assert {r.platform_id for r in found} == set(fed.platforms)
        assert all(
            r.outcome in (Outcome.PLATFORM_OUTCOME_FOUND, Outcome.PLATFORM_OUTCOME_NONE)
            for r in found
        ), [(r.platform_id, r.outcome) for r in found]
        assert counts(found) == {"weibo": 1}
        op = await app.release(PRIOR)
        done = response((await app.watch(op.name))[-1])
        assert counts(list(done.results)) == {"weibo": 1}
        assert counts(await app.query(PRIOR)) == {}
        assert counts(await app.query(OWN)) == {"weibo": 1}  # the holder's own binding stays

    event = LifecycleEvent.new(NEW_BLOCK, EventKind.DEACTIVATED, datetime.now(UTC))
    await call_gateway(
        fed,
        "ctcc",
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch(fed, "ctcc", event)),
    )
    async with asyncio.timeout(20):
        for p, handle in fed.platforms.items():
            while event.event_id not in handle.store.applied_event_ids():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert not handle.servicer.events.refused, p


async def test_a_number_in_no_range_of_the_plan_is_refused_by_the_gateway_and_each_platform(
    federation: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = federation
    for method, request in (
        (
            "QueryBindings",
            gateway_pb2.QueryBindingsRequest(
                claim=claim(fed, "cmcc", OUTSIDE, Purpose.QUERY_PRIOR)
            ),
        ),
        (
            "ReleaseBindings",
            gateway_pb2.ReleaseBindingsRequest(
                request_id="outside", claim=claim(fed, "cmcc", OUTSIDE, Purpose.RELEASE_PRIOR)
            ),
        ),
        (
            "PublishEvents",
            gateway_pb2.PublishEventsRequest(
                batch=batch(
                    fed,
                    "cmcc",
                    LifecycleEvent.new(OUTSIDE, EventKind.DEACTIVATED, datetime.now(UTC)),
                )
            ),
        ),
    ):
        assert await refused(fed, "cmcc", method, request) == (
            "PERMISSION_DENIED",
            "NUMBER_NOT_IN_PLAN",
        ), method

    # What a lying gateway would hand the platforms directly.
    query = platform_pb2.BatchQueryBindingsRequest(
        items=[
            platform_pb2.QueryItem(
                item_id="1", claim=claim(fed, "cmcc", OUTSIDE, Purpose.QUERY_PRIOR)
            )
        ]
    )
    head = await fed.gateway.store.run(fed.gateway.events.head)
    event = LifecycleEvent.new(OUTSIDE, EventKind.DEACTIVATED, datetime.now(UTC))
    deliver = platform_pb2.DeliverEventsRequest(
        batches=[events_pb2.SequencedBatch(seq=head + 1, batch=batch(fed, "cmcc", event))]
    )
    caplog.set_level(logging.INFO, logger="platform_stubs.events")
    for p, handle in fed.platforms.items():
        answer = await platform_call(fed, p, "BatchQueryBindings", query)
        (result,) = answer.results  # type: ignore[attr-defined]
        info = error_info(result.status)
        assert result.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], p
        assert info is not None and info.reason == "NUMBER_NOT_IN_PLAN", p
        # A number in no range may be the platform's staleness (a range added in a newer
        # bundle, numfed/staleness.py): the batch is held, never applied nor acknowledged.
        delivered = await platform_call(fed, p, "DeliverEvents", deliver)
        assert delivered.ack_through_seq < head + 1, p  # type: ignore[attr-defined]
        assert event.event_id not in handle.store.applied_event_ids()
    held = [r.getMessage() for r in caplog.records if "NUMBER_NOT_IN_PLAN" in r.getMessage()]
    assert len(held) >= len(fed.platforms), held
