"""Admission per caller: a share of each class per caller, O(1) bookkeeping, nothing kept idle."""

from __future__ import annotations

import asyncio

import pytest

from numfed.config import Limits
from numfed.errors import InvalidArgument, ResourceExhausted
from numfed.rpc import Admission, RpcClass

M = "/numfed.v1.GatewayService/QueryBindings"
A = "spiffe://numfed/carrier/cmcc"
B = "spiffe://numfed/carrier/cucc"


def gate(concurrency: int = 4, queue: int = 4, per_caller: int = 2, wait: float = 5.0):  # type: ignore[no-untyped-def]
    g = Admission([RpcClass("query", concurrency, queue, wait, per_caller)], {M: "query"}).gate(M)
    assert g is not None
    return g


async def test_a_caller_past_its_share_is_refused_while_others_are_admitted() -> None:
    g = gate()
    assert await g.enter(A) == A
    assert await g.enter(A) == A
    with pytest.raises(ResourceExhausted) as err:
        await g.enter(A)  # two slots of four are free, but A holds its share
    assert err.value.reason == "CALLER_OVERLOADED" and err.value.retry_after
    assert err.value.metadata == {"rpc_class": "query", "per_caller": "2"}
    assert g.active == 2 and g.held_by(A) == 2  # the refusal took nothing
    await g.enter(B)
    g.exit(A)
    await g.enter(A)  # room again once one of its own calls is done
    for c in (A, A, B):
        g.exit(c)
    assert g.active == 0 and g.callers == 0  # no counter is kept for an idle caller


async def test_a_caller_cannot_fill_the_queue() -> None:
    g = gate(concurrency=1, queue=4, per_caller=2)
    await g.enter(A)
    waiting = asyncio.create_task(g.enter(A))  # queued
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted) as err:
        await g.enter(A)
    assert err.value.reason == "CALLER_OVERLOADED"
    other = asyncio.create_task(g.enter(B))  # B still finds room in the queue
    await asyncio.sleep(0.01)
    g.exit(A)
    assert await waiting == A
    g.exit(A)
    assert await other == B
    g.exit(B)
    assert g.active == 0 and g.callers == 0


async def test_a_caller_whose_wait_ends_is_charged_nothing() -> None:
    g = gate(concurrency=1, queue=4, per_caller=2, wait=0.05)
    await g.enter(A)
    with pytest.raises(ResourceExhausted) as err:
        await g.enter(B)
    assert err.value.reason == "OVERLOADED_QUEUE_TIMEOUT"
    cancelled = asyncio.create_task(g.enter(B))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert g.held_by(B) == 0 and g.callers == 1
    g.exit(A)
    assert g.active == 0 and g.callers == 0


async def test_calls_without_a_caller_are_bounded_in_total_only() -> None:
    g = gate(concurrency=3, queue=0, per_caller=1)
    for _ in range(3):
        assert await g.enter() is None  # no authenticated peer (a plaintext server)
    with pytest.raises(ResourceExhausted) as err:
        await g.enter()
    assert err.value.reason == "OVERLOADED"
    assert g.callers == 0


def test_per_caller_limits_default_to_a_share_of_each_class() -> None:
    limits = Limits()
    assert limits.max_watches_per_caller == limits.max_watches // 4 == 64
    assert Limits(max_watches=8).max_watches_per_caller == 2
    assert Limits(max_watches=2).max_watches_per_caller == 1
    # Half of a class's running and queued calls: a lone caller can use every running slot.
    q = limits.per_caller(limits.max_concurrent_queries, limits.max_queued_queries)
    assert (
        limits.max_concurrent_queries
        <= q
        < limits.max_concurrent_queries + (limits.max_queued_queries)
    )
    assert Limits.from_mapping({"max_watches_per_caller": 3}).max_watches_per_caller == 3
    for bad in ({"caller_share": 1.5}, {"max_watches": 8, "max_watches_per_caller": 9}):
        with pytest.raises(InvalidArgument) as e:
            Limits.from_mapping(bad)
        assert e.value.reason == "BAD_CONFIG"
