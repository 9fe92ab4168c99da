"""A batch's request built from its items' bytes, serialised once each, is the request a
platform would have got had the gateway built the message: same items, same order, same flag."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fanout import NOTHING, SPARSE_ANSWERS, Fan, batch_request, query_piece, release_piece
from numfed.v1 import claim_pb2, platform_pb2


def envelope(n: int) -> claim_pb2.Envelope:
    return claim_pb2.Envelope(payload=f"claim {n}".encode() * 40, payload_type="numfed.v1.Claim")


def test_a_query_batch_from_pieces_is_the_batch_as_a_message() -> None:
    claims = [envelope(n) for n in range(3)]
    pieces = [query_piece(f"q{n}", c) for n, c in enumerate(claims)]
    raw = batch_request(pieces, SPARSE_ANSWERS)
    expected = platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id=f"q{n}", claim=c) for n, c in enumerate(claims)],
        sparse_answers=True,
    )
    assert platform_pb2.BatchQueryBindingsRequest.FromString(raw) == expected
    assert sum(p.size for p in pieces) + len(SPARSE_ANSWERS) == len(raw)
    # The one piece goes into every platform's batch as it is, not serialised again.
    assert batch_request(pieces[:1]) == pieces[0].raw


def test_a_release_batch_from_pieces_is_the_batch_as_a_message() -> None:
    claims = [envelope(n) for n in range(2)]
    pieces = [release_piece(f"r{n}", c.SerializeToString()) for n, c in enumerate(claims)]
    expected = platform_pb2.BatchReleaseBindingsRequest(
        items=[platform_pb2.ReleaseItem(item_id=f"r{n}", claim=c) for n, c in enumerate(claims)]
    )
    assert platform_pb2.BatchReleaseBindingsRequest.FromString(batch_request(pieces)) == expected


async def test_a_fan_settles_when_every_slot_has_or_its_time_is_up() -> None:
    fan = Fan(3)
    slots = [fan.slot(i) for i in range(3)]
    slots[0].set_result(NOTHING)
    slots[2].set_exception(RuntimeError("broken"))
    with pytest.raises(TimeoutError):  # one slot still pending: the fan waits for it
        await asyncio.wait_for(asyncio.shield(fan.wait(60)), 0.05)
    slots[1].set_result(NOTHING)
    await asyncio.wait_for(fan.wait(60), 5)
    assert fan.answers[0] is NOTHING and fan.answers[1] is NOTHING
    assert isinstance(fan.answers[2], RuntimeError)
    late = Fan(1)
    await late.wait(0.01)  # time is up: returns with the slot unsettled
    assert late.answers == [None] and late.slot(0).cancel()
