"""Admission per RPC class: bounded concurrency, a bounded FIFO queue, fast rejection."""

from __future__ import annotations

import asyncio

import pytest

from numfed.errors import ResourceExhausted
from numfed.rpc import Admission, RpcClass

M = "/numfed.v1.GatewayService/QueryBindings"


def gate(concurrency: int = 2, queue: int = 2, wait: float = 5.0):  # type: ignore[no-untyped-def]
    g = Admission([RpcClass("query", concurrency, queue, wait)], {M: "query"}).gate(M)
    assert g is not None
    return g


async def test_calls_beyond_concurrency_queue_in_order_and_excess_is_refused_at_once() -> None:
    g = gate()
    await g.enter()
    await g.enter()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await g.enter()
        order.append(i)

    w1 = asyncio.create_task(waiter(1))
    w2 = asyncio.create_task(waiter(2))
    await asyncio.sleep(0.01)
    assert g.active == 2 and not order
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ResourceExhausted) as err:
        await g.enter()  # two running, two queued: no room
    assert loop.time() - t0 < 0.05
    assert err.value.reason == "OVERLOADED" and err.value.retry_after
    assert err.value.metadata["rpc_class"] == "query"
    g.exit()
    await asyncio.sleep(0.01)
    assert order == [1] and g.active == 2
    g.exit()
    await asyncio.gather(w1, w2)
    assert order == [1, 2] and g.active == 2 and g.rejected == 1


async def test_a_queued_call_gives_up_after_the_wait() -> None:
    g = gate(concurrency=1, queue=4, wait=0.05)
    await g.enter()
    with pytest.raises(ResourceExhausted) as err:
        await g.enter()
    assert err.value.reason == "OVERLOADED_QUEUE_TIMEOUT"
    g.exit()
    assert g.active == 0
    await g.enter()  # the slot is free again, nothing leaked
    assert g.active == 1


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    g = gate(concurrency=1, queue=4)
    await g.enter()
    waiting = asyncio.create_task(g.enter())
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    g.exit()
    assert g.active == 0


def test_methods_must_name_known_classes() -> None:
    with pytest.raises(ValueError):
        Admission([RpcClass("query", 1, 1, 1.0)], {M: "nope"})
