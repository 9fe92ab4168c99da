"""Large event batches never make a delivery too large: a poll answer is cut by size too.

A signed batch may be up to 64 KiB (``MAX_ENVELOPE_BYTES``: 500 events with room to spare), and
a platform may pull up to 100 batches at once. Cut by count only, such an answer was 6 MiB, over
the 4 MiB message cap: the same PullEvents failed every time and no later event ever reached
that platform. Now a delivery carries at most ``MAX_DELIVERY_BYTES`` (3 MiB) of batches, the
first always, and what was not sent comes with the next pull.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from numfed import pki
from numfed.envelope import MAX_ENVELOPE_BYTES, sign
from numfed.events import EVENT_BATCH_PAYLOAD_TYPE, EventKind, LifecycleEvent
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES
from numfed.timeutil import to_timestamp
from numfed.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import Federation, start_federation
from tests.integration.test_events import delivered

CMCC = PeerId(Role.CARRIER, "cmcc")
XIAOMI = PeerId(Role.PLATFORM, "xiaomi")
NUMBER = "+8613800000009"


@pytest.fixture
async def fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    f = await start_federation(
        tmp_path / "fed",
        carriers=("cmcc",),
        platforms=("weibo", "xiaomi"),
        platform_knobs={"xiaomi": {"events": "poll"}},
        database_url=db_url,
    )
    try:
        yield f
    finally:
        await f.stop()


def _varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def full_batch(fed: Federation, event: LifecycleEvent) -> gateway_pb2.PublishEventsRequest:
    """A batch of one event signed by cmcc, as large as an envelope may be: a field this
    gateway does not know (number 1000) fills its payload out, inside the signature."""
    batch = events_pb2.EventBatch(
        carrier_id="cmcc", issued_at=to_timestamp(datetime.now(UTC)), events=[event.to_proto()]
    )
    payload = batch.SerializeToString(deterministic=True)
    filler = MAX_ENVELOPE_BYTES - len(payload) - 512  # the signature and framing
    payload += _varint((1000 << 3) | 2) + _varint(filler) + b"x" * filler
    signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    envelope = sign(EVENT_BATCH_PAYLOAD_TYPE, payload, [signer])
    return gateway_pb2.PublishEventsRequest(batch=envelope.to_proto())


async def test_a_poll_of_100_full_batches_is_cut_to_fit_and_loses_none(fed: Federation) -> None:
    await fed.platforms["xiaomi"].stop(0)  # the test pulls as xiaomi itself
    t = datetime(2026, 1, 1, tzinfo=UTC)
    events = [LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, t) for _ in range(100)]
    gw = fed.gateway
    first = await gw.store.run(gw.events.head) + 1
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for e in events:
            await stub.PublishEvents(full_batch(fed, e), timeout=10)
    async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, XIAOMI) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        acked = 0
        seqs: list[int] = []
        answers: list[int] = []
        while not seqs or seqs[-1] < first + 99:
            answer = await stub.PullEvents(
                gateway_pb2.PullEventsRequest(ack_through_seq=acked, max_batches=100), timeout=10
            )
            assert answer.batches, "a pull returned nothing while batches were waiting"
            answers.append(answer.ByteSize())
            seqs += [b.seq for b in answer.batches if b.seq >= first]
            acked = answer.batches[-1].seq
    assert seqs == list(range(first, first + 100))  # every batch once, in order
    assert len(answers) >= 2 and max(answers) < MAX_MESSAGE_BYTES
    # The push platform got them all as well (20 full batches to a call fit anyway).
    assert await delivered(fed, "weibo", 100, within=60) == [e.event_id for e in events]
