"""The gateway sends a platform traffic only while the platform's health reports SERVING.

A platform reports numfed.v1.PlatformService SERVING only while it holds a verified trust bundle
(rule PLAT-OPS-1, docs/joining.md). The gateway watches that status: a platform that reports
NOT_SERVING is not called. Its query result is UNAVAILABLE PLATFORM_NOT_SERVING, its release
tasks wait (retried, never REFUSED) and its events are not pushed, until it reports SERVING again.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from numfed.events import EventKind, LifecycleEvent
from numfed.rpc import error_info
from numfed.scenario import demo_scenario
from numfed.testing import until_serving
from numfed.v1 import gateway_pb2, holder_pb2
from tests.integration.conftest import Federation
from tests.integration.holder import PRIOR, metadata, response
from tests.integration.test_events import publish, served_by_cmcc
from tests.integration.test_journey import holder_app

Outcome = gateway_pb2.PlatformOutcome
WORLD = demo_scenario()


async def _not_serving(fed: Federation, platform_id: str, *, outage: bool = True) -> None:
    """The platform loses its trust bundle (as a root rotation that does not sign it would), so
    it reports NOT_SERVING; a call that still reached it would be answered PLATFORM_OUTAGE.

    Until :func:`_serving_again` its fetches find nothing it can take, as they would while that
    rotation lasts: otherwise a retry of its own (its refresh loop may still be backing off from
    its start) takes the bundle again, and it serves before the test is over."""
    handle = fed.platforms[platform_id]
    handle.servicer.knobs.outage = outage

    async def finds_nothing(*, wait_for_ready: bool = False) -> bool:
        return False

    vars(handle.trust)["refresh"] = finds_nothing
    await handle.trust.reset()
    await fed.gateway.links[platform_id].until_health("NOT_SERVING", 10)


async def _serving_again(fed: Federation, platform_id: str) -> None:
    handle = fed.platforms[platform_id]
    handle.servicer.knobs.outage = False
    vars(handle.trust).pop("refresh")
    await handle.trust.refresh()  # it takes its bundle again, and reports SERVING


def health_gauge(fed: Federation, platform_id: str) -> set[str]:
    """The statuses ``numfed_platform_health`` shows as 1 for the platform, from its link (the
    process-wide registry may still hold links of gateways that other tests stopped)."""
    families = fed.gateway.links[platform_id].collect_metrics()
    family = next(f for f in families if f.name == "numfed_platform_health")
    return {s.labels["status"] for s in family.samples if s.value == 1}


async def test_a_platform_not_serving_is_not_sent_queries(sqlite_federation: Federation) -> None:
    fed = sqlite_federation
    await _not_serving(fed, "weibo")
    app = await holder_app(fed, WORLD.showcase["recycled_once"])
    results = {r.platform_id: r for r in await app.query(PRIOR)}
    weibo = results.pop("weibo")
    assert weibo.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
    info = error_info(weibo.status)
    assert info is not None and info.reason == "PLATFORM_NOT_SERVING", weibo.status
    assert info.metadata["health"] == "NOT_SERVING"
    assert all(r.outcome != Outcome.PLATFORM_OUTCOME_UNAVAILABLE for r in results.values())
    assert fed.gateway.links["weibo"].breaker.state.value == "closed"  # not a failure of it
    assert health_gauge(fed, "weibo") == {"NOT_SERVING"}  # what an operator sees

    await _serving_again(fed, "weibo")
    await until_serving(fed.gateway, ["weibo"], timeout=10)
    assert health_gauge(fed, "weibo") == {"SERVING"}
    again = {r.platform_id: r for r in await app.query(PRIOR)}
    assert again["weibo"].outcome == Outcome.PLATFORM_OUTCOME_FOUND


async def test_a_release_waits_for_a_platform_until_it_serves_again(
    sqlite_federation: Federation,
) -> None:
    fed = sqlite_federation
    await _not_serving(fed, "weibo")
    app = await holder_app(fed, WORLD.showcase["recycled_once"])
    op = await app.release(PRIOR)
    call = app.stub.WatchHolderRelease(
        holder_pb2.WatchHolderReleaseRequest(session_token=app.token, name=op.name), timeout=60
    )
    final: list[gateway_pb2.ReleaseResponse] = []
    shown_not_serving = False
    async with asyncio.timeout(60):
        async for update in call:
            for r in metadata(update).results:
                info = error_info(r.status)
                if r.platform_id == "weibo" and info and info.reason == "PLATFORM_NOT_SERVING":
                    assert not update.done  # the job waits for weibo, shown not serving
                    if not shown_not_serving:
                        shown_not_serving = True
                        await _serving_again(fed, "weibo")
            if update.done:
                final.append(response(update))
    assert shown_not_serving and final
    weibo = next(r for r in final[0].results if r.platform_id == "weibo")
    assert weibo.outcome == Outcome.PLATFORM_OUTCOME_FOUND and weibo.attempts >= 2


async def _acked_through(fed: Federation, platforms: list[str], seq: int) -> None:
    gw = fed.gateway
    async with asyncio.timeout(20):  # cursors live in the database: looked at, as events_settled
        while any([await gw.store.run(gw.events.cursor, p) < seq for p in platforms]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_events_wait_for_a_platform_not_serving(sqlite_federation: Federation) -> None:
    fed = sqlite_federation
    await _not_serving(fed, "weibo", outage=False)
    event = LifecycleEvent.new(served_by_cmcc()[0], EventKind.DEACTIVATED, datetime.now(UTC))
    seq = await publish(fed, [event])
    await _acked_through(fed, [p for p in fed.platforms if p != "weibo"], seq)
    gw = fed.gateway
    assert await gw.store.run(gw.events.cursor, "weibo") < seq
    weibo = fed.platforms["weibo"]
    assert weibo.servicer.events.held == {}  # never sent: it would hold what it cannot judge
    assert event.event_id not in weibo.store.applied_event_ids()
    await _serving_again(fed, "weibo")
    await _acked_through(fed, ["weibo"], seq)
    assert event.event_id in fed.platforms["weibo"].store.applied_event_ids()


class _ReadHeld:
    """The event log as one pusher sees it, whose read of new batches waits until released:
    the moment between the pusher's health check and its call, held open."""

    def __init__(self, log: Any, read: asyncio.Event, go_on: threading.Event) -> None:
        self._log, self._read, self._go_on = log, read, go_on
        self._loop = asyncio.get_running_loop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = self._log.after(seq, limit)
        if rows:  # on a database thread
            self._loop.call_soon_threadsafe(self._read.set)
            self._go_on.wait(10)
        return rows


class _Deliveries:
    """A link's stub that notes the platform's health as the link saw it at each
    DeliverEvents call."""

    def __init__(self, link: Any) -> None:
        self._link, self._stub = link, link.stub
        self.health_at_calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def DeliverEvents(self, *args: Any, **kw: Any) -> Any:
        self.health_at_calls.append(self._link.health)
        return self._stub.DeliverEvents(*args, **kw)


async def test_events_read_while_serving_are_not_sent_once_it_stops(
    sqlite_federation: Federation,
) -> None:
    """The pusher asks the link before it reads the log; health that changes during the read
    must still keep the batches from a platform that no longer serves."""
    fed = sqlite_federation
    read, go_on = asyncio.Event(), threading.Event()
    pusher, link = fed.gateway.pushers["weibo"], fed.gateway.links["weibo"]
    vars(pusher)["_events"] = _ReadHeld(vars(pusher)["_events"], read, go_on)
    deliveries = _Deliveries(link)
    link.stub = deliveries  # type: ignore[assignment]
    try:
        event = LifecycleEvent.new(served_by_cmcc()[0], EventKind.DEACTIVATED, datetime.now(UTC))
        seq = await publish(fed, [event])
        await asyncio.wait_for(read.wait(), 10)  # weibo's pusher read it while weibo served
        await _not_serving(fed, "weibo", outage=False)
    finally:
        go_on.set()
    await _acked_through(fed, [p for p in fed.platforms if p != "weibo"], seq)
    await _serving_again(fed, "weibo")
    await _acked_through(fed, ["weibo"], seq)
    assert event.event_id in fed.platforms["weibo"].store.applied_event_ids()
    assert deliveries.health_at_calls and set(deliveries.health_at_calls) == {"SERVING"}
