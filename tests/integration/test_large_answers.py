"""One item's failure never takes its batch-mates: a number marked by 90,000 users, real servers.

The reported case: the caller-ID platform ``labels`` keeps one binding per label, and one
recycled number carries 90,000 of them. Its answer used to be larger than the 4 MiB message
cap, so the whole ``BatchQueryBindings`` failed, the other holder batched with it included; the
release of that number was applied, but its answer (and every replay of it) was just as large,
so every job of its batch ended EXPIRED. Now a platform answers each claim with merged
(kind, masked label) summaries, at most ``MAX_SUMMARIES_PER_CLAIM`` of them and
``omitted_bindings`` for the rest, and stores the same bounded answer for replays; and when a
platform's whole call still fails in a way one item may cause, the gateway bisects the batch so
only that item fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import sqlalchemy as sa

from gateway.fanout import release_piece
from gateway.schema import release_tasks
from gateway.server import Gateway
from gateway.store import TASK_DONE
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config, load_platform_config
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES, error_info
from numfed.summaries import MAX_SUMMARIES_PER_CLAIM
from numfed.testing.federation import until_serving
from numfed.v1 import binding_pb2, claim_pb2, gateway_pb2, gateway_pb2_grpc, platform_pb2
from platform_stubs.reference import PlatformHandle, start_platform
from platform_stubs.sdk import PlatformServicer
from platform_stubs.store import applied_releases
from tests.helpers.metrics import total
from tests.integration.holder import metadata, response

Outcome = gateway_pb2.PlatformOutcome
CMCC = PeerId(Role.CARRIER, "cmcc")
CUCC = PeerId(Role.CARRIER, "cucc")
X = datetime(2022, 7, 1, 9, tzinfo=UTC)
MARKED = "+8613800000001"
"""The recycled number 90,000 users marked (served by cmcc)."""
MARKS = 90_000
OTHERS = {"query": "+8618600000002", "release": "+8618600000003", "first": "+8618600000004"}
"""Other holders' numbers (served by cucc), three labels each."""
TEXTS = [f"标记 {i} (mark {i})" for i in range(150)]
"""The label texts the users chose: more distinct (text, year) summaries than the cap."""


class Recording(PlatformServicer):
    """The reference platform, answering each call once the test lets it; records each batch."""

    go: ClassVar[asyncio.Event]
    arrived: ClassVar[asyncio.Queue[str]]
    received: ClassVar[list[tuple[str, int]]]
    """(rpc, items) of every call, as it arrives."""
    batches: ClassVar[list[tuple[str, int, int]]]
    """(rpc, items, answer bytes) of every call answered."""

    async def BatchQueryBindings(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        self.arrived.put_nowait("query")
        self.received.append(("query", len(request.items)))
        await self.go.wait()
        answer = await self.answer_queries(request, context)
        self.batches.append(("query", len(request.items), answer.ByteSize()))
        return answer

    async def answer_queries(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        return await super().BatchQueryBindings(request, context)

    async def BatchReleaseBindings(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        self.arrived.put_nowait("release")
        self.received.append(("release", len(request.items)))
        await self.go.wait()
        answer = await self.answer_releases(request, context)
        self.batches.append(("release", len(request.items), answer.ByteSize()))
        return answer

    async def answer_releases(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        return await super().BatchReleaseBindings(request, context)


@dataclasses.dataclass
class Running:
    layout: FederationLayout
    gateway: Gateway
    platform: PlatformHandle

    def channel(self, peer: PeerId) -> grpc.aio.Channel:
        return pki.secure_channel(f"127.0.0.1:{self.gateway.port}", self.layout.pki_dir, peer)

    def claim(self, number: str, purpose: Purpose) -> claim_pb2.Envelope:
        carrier = "cmcc" if number.startswith("+86138") else "cucc"
        c = TenureClaim.new(
            number=number,
            carrier_id=carrier,
            tenure_start=X,
            purpose=purpose,
            now=datetime.now(UTC),
        )
        return sign_claim(c, pki.load_carrier_signer(self.layout.pki_dir, carrier)).to_proto()


def marks() -> list[tuple[str, str, str, str, datetime]]:
    """(account_id, label text, number, kind, set at): 90,000 labels on MARKED, 3 on the others."""
    rows = [
        (f"m{i:06d}", TEXTS[i % len(TEXTS)], MARKED, "LABEL", X - timedelta(days=1 + i % 1000))
        for i in range(MARKS)
    ]
    for n, number in enumerate(OTHERS.values()):
        rows += [
            (f"o{n}{j}", "骚扰电话 (harassment)", number, "LABEL", X - timedelta(days=30 * (j + 1)))
            for j in range(3)
        ]
    return rows


@contextlib.asynccontextmanager
async def federation(
    root: Path, db_url: str, servicer: type[Recording], rows: list[Any]
) -> AsyncIterator[Running]:
    """A gateway, cmcc and cucc's keys, and ``labels`` served by ``servicer`` with ``rows``."""
    layout = create_federation(
        root,
        carriers=("cmcc", "cucc"),
        platforms=("labels",),
        database_url=db_url,
        # One call out at a time, so the test knows which claims travel together; time enough
        # for 90,000 rows on a busy machine.
        limits={"max_in_flight_per_platform": 1, "platform_call_timeout": 25.0},
    )
    Recording.go = asyncio.Event()
    Recording.arrived = asyncio.Queue()
    Recording.batches = []
    Recording.received = []
    config = dataclasses.replace(
        load_platform_config(layout.platform_configs["labels"]), seed_scenario=False
    )
    platform = await start_platform(config, servicer_class=servicer)
    await platform.store.run(platform.store.seed, rows)
    gw = await Gateway.start(load_gateway_config(layout.gateway_config))
    try:
        await asyncio.wait_for(platform.trust.ready.wait(), 10)
        await until_serving(gw)
        yield Running(layout, gw, platform)
    finally:
        Recording.go.set()
        await gw.stop(0)
        await platform.stop(0)


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[Running]:
    async with federation(tmp_path / "fed", db_url, Recording, marks()) as running:
        yield running


def counted(summaries: Sequence[binding_pb2.BindingSummary], omitted: int) -> int:
    return sum(s.count for s in summaries) + omitted


async def together(running: Running, first: Any, *calls: Any) -> list[Any]:
    """Make the call ``first()`` and hold it at the platform; make ``calls`` meanwhile, so that
    their claims wait for the next call to the platform together; then let the platform answer."""
    Recording.go.clear()
    Recording.arrived = asyncio.Queue()
    head = asyncio.ensure_future(first())
    await asyncio.wait_for(Recording.arrived.get(), 10)
    rest = [asyncio.ensure_future(c()) for c in calls]
    await waiting(running, len(calls))
    Recording.go.set()
    return list(await asyncio.gather(head, *rest))


async def waiting(running: Running, n: int) -> None:
    """Wait until ``n`` claims wait for the next call to the platform."""
    gw = running.gateway
    async with asyncio.timeout(10):
        while True:
            queued = gw.links["labels"].queries.queued
            due = await gw.store.run(due_tasks, gw.store.engine)
            if max(queued, due) >= n:
                return
            await asyncio.sleep(0.02)


def due_tasks(engine: sa.Engine) -> int:
    """Release tasks waiting to be leased."""
    with engine.connect() as c:
        return int(
            c.execute(
                sa.select(sa.func.count())
                .select_from(release_tasks)
                .where(release_tasks.c.lease_owner.is_(None), release_tasks.c.state != TASK_DONE)
            ).scalar_one()
        )


async def test_a_number_marked_by_90000_users_answers_in_bounds_and_takes_no_batch_mate_down(
    running: Running,
) -> None:
    async with running.channel(CMCC) as cmcc_ch, running.channel(CUCC) as cucc_ch:
        cmcc = gateway_pb2_grpc.GatewayServiceStub(cmcc_ch)
        cucc = gateway_pb2_grpc.GatewayServiceStub(cucc_ch)

        def query(stub: Any, number: str) -> Any:
            request = gateway_pb2.QueryBindingsRequest(
                claim=running.claim(number, Purpose.QUERY_PRIOR)
            )
            return lambda: stub.QueryBindings(request, timeout=60)

        # The marked number's query and another holder's travel in one BatchQueryBindings.
        _, big, other = await together(
            running,
            query(cucc, OTHERS["first"]),
            query(cmcc, MARKED),
            query(cucc, OTHERS["query"]),
        )
        assert ("query", 2) in [(rpc, n) for rpc, n, _size in Recording.batches]
        assert all(size < MAX_MESSAGE_BYTES for _rpc, _n, size in Recording.batches)
        (mine,) = other.results
        assert mine.outcome == Outcome.PLATFORM_OUTCOME_FOUND
        assert counted(mine.bindings, mine.omitted_bindings) == 3
        assert [s.count for s in mine.bindings] == [3]  # one label text, one year: merged
        (marked,) = big.results
        assert marked.outcome == Outcome.PLATFORM_OUTCOME_FOUND, marked
        assert len(marked.bindings) == MAX_SUMMARIES_PER_CLAIM
        assert marked.omitted_bindings > 0
        assert counted(marked.bindings, marked.omitted_bindings) == MARKS
        assert len({(s.kind, s.masked_label) for s in marked.bindings}) == len(marked.bindings)

        # The marked number's release and another holder's travel in one BatchReleaseBindings.
        claims = {n: running.claim(n, Purpose.RELEASE_PRIOR) for n in (MARKED, *OTHERS.values())}

        def release(stub: Any, number: str) -> Any:
            async def call() -> str:
                op = await stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=f"r{number[1:]}", claim=claims[number]
                    ),
                    timeout=10,
                )
                return str(op.name)

            return call

        names = await together(
            running,
            release(cucc, OTHERS["first"]),
            release(cmcc, MARKED),
            release(cucc, OTHERS["release"]),
        )

        async def done(stub: Any, name: str) -> gateway_pb2.PlatformResult:
            call = stub.WatchOperation(gateway_pb2.WatchOperationRequest(name=name), timeout=60)
            final = [op async for op in call][-1]
            assert final.done
            (result,) = response(final).results
            return result

        released = await done(cmcc, names[1])
        theirs = await done(cucc, names[2])
    assert ("release", 2) in [(rpc, n) for rpc, n, _size in Recording.batches]
    assert all(size < MAX_MESSAGE_BYTES for _rpc, _n, size in Recording.batches)
    assert theirs.outcome == Outcome.PLATFORM_OUTCOME_FOUND and theirs.attempts == 1
    assert counted(theirs.bindings, theirs.omitted_bindings) == 3
    assert released.outcome == Outcome.PLATFORM_OUTCOME_FOUND, released  # not EXPIRED
    assert released.attempts == 1
    assert len(released.bindings) == MAX_SUMMARIES_PER_CLAIM
    assert counted(released.bindings, released.omitted_bindings) == MARKS
    assert running.platform.store.counts()["released"] == MARKS + 6

    # Its stored first result, and so every replay, is as small as the first answer.
    store = running.platform.store
    with store.engine.connect() as c:
        sizes = [len(r) for r in c.execute(sa.select(applied_releases.c.result)).scalars()]
    assert max(sizes) < 16 * 1024
    item = release_piece("again", claims[MARKED].SerializeToString())
    (again,) = await running.gateway.links["labels"].release([item], 25.0)
    assert again.replayed and again.ByteSize() < 16 * 1024
    assert counted(again.released, again.omitted_bindings) == MARKS
    assert error_info(again.status) is None


POISON = "+8618600000007"
"""Every call carrying this number's claim fails (INTERNAL)."""
HUGE = "+8618600000008"
"""This number's answer is over the message cap (a platform that does not bound answers)."""
FINE = ("+8618600000005", "+8618600000006")


class Broken(Recording):
    """Fails every call carrying POISON's claim, and answers HUGE's claim with 60,000
    summaries (5 MB); otherwise the reference platform."""

    @staticmethod
    def _numbers(items: Sequence[Any]) -> set[str]:
        return {claim_pb2.TenureClaim.FromString(i.claim.payload).number for i in items}

    @staticmethod
    def _huge() -> list[binding_pb2.BindingSummary]:
        return [
            binding_pb2.BindingSummary(
                platform_id="labels",
                kind=binding_pb2.BINDING_KIND_LABEL,
                masked_label=f"caller-ID label ***{i:06d} · set 2020 · {'x' * 40}",
                count=1,
            )
            for i in range(60_000)
        ]

    async def answer_queries(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        if POISON in self._numbers(request.items):
            await context.abort(grpc.StatusCode.INTERNAL, "the platform broke on a claim")
        answer = await super().answer_queries(request, context)
        for item, result in zip(request.items, answer.results, strict=True):
            if HUGE in self._numbers([item]):
                result.bindings.extend(self._huge())
        return answer

    async def answer_releases(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        if POISON in self._numbers(request.items):
            await context.abort(grpc.StatusCode.INTERNAL, "the platform broke on a claim")
        answer = await super().answer_releases(request, context)
        for item, result in zip(request.items, answer.results, strict=True):
            if HUGE in self._numbers([item]):
                result.released.extend(self._huge())
        return answer


WHYS = ("PLATFORM_ITEM_FAILED", "PLATFORM_ANSWER_TOO_LARGE")


def reason(result: gateway_pb2.PlatformResult) -> str:
    info = error_info(result.status)
    return info.reason if info is not None else ""


async def test_a_claim_that_breaks_its_batch_call_fails_alone(tmp_path: Path, db_url: str) -> None:
    numbers = ["+8618600000004", POISON, HUGE, *FINE]
    rows = [
        (f"a{n}{j}", "快递 (courier)", number, "LABEL", X - timedelta(days=30 * (j + 1)))
        for n, number in enumerate(numbers)
        for j in range(3)
    ]
    async with (
        federation(tmp_path / "fed", db_url, Broken, rows) as running,
        running.channel(CUCC) as ch,
    ):
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)

        def query(number: str) -> Any:
            request = gateway_pb2.QueryBindingsRequest(
                claim=running.claim(number, Purpose.QUERY_PRIOR)
            )
            return lambda: stub.QueryBindings(request, timeout=60)

        def failed(method: str, why: str) -> float:
            return total(
                "numfed_platform_items_failed_total",
                platform="labels",
                rpc_method=method,
                reason=why,
            )

        before = {why: failed("BatchQueryBindings", why) for why in WHYS}
        answers = await together(running, *(query(n) for n in numbers))
        # Each claim at fault is counted once, by its reason, for the operator.
        assert {why: failed("BatchQueryBindings", why) - before[why] for why in WHYS} == {
            why: 1 for why in WHYS
        }
        # The four went together and failed; the halves went on their own, one after the
        # other, and the half that failed again was split again.
        assert [n for rpc, n in Recording.received if rpc == "query"] == [1, 4, 2, 1, 1, 2]
        results = {n: a.results[0] for n, a in zip(numbers, answers, strict=True)}
        for n in (*FINE, numbers[0]):
            assert results[n].outcome == Outcome.PLATFORM_OUTCOME_FOUND, results[n]
            assert [s.count for s in results[n].bindings] == [3]
        assert results[POISON].outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
        assert reason(results[POISON]) == "PLATFORM_ITEM_FAILED"
        assert results[HUGE].outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
        assert reason(results[HUGE]) == "PLATFORM_ANSWER_TOO_LARGE"

        def release(number: str) -> Any:
            async def call() -> str:
                op = await stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id=f"r{number[1:]}",
                        claim=running.claim(number, Purpose.RELEASE_PRIOR),
                    ),
                    timeout=10,
                )
                return str(op.name)

            return call

        released_before = {why: failed("BatchReleaseBindings", why) for why in WHYS}
        names = dict(
            zip(numbers, await together(running, *(release(n) for n in numbers)), strict=True)
        )
        for n in FINE:
            final = [
                op
                async for op in stub.WatchOperation(
                    gateway_pb2.WatchOperationRequest(name=names[n]), timeout=30
                )
            ][-1]
            (fine,) = response(final).results
            assert fine.outcome == Outcome.PLATFORM_OUTCOME_FOUND and fine.attempts == 1, fine
        # The two claims at fault are retried on their own, with the reason they failed.
        for n, why in ((POISON, "PLATFORM_ITEM_FAILED"), (HUGE, "PLATFORM_ANSWER_TOO_LARGE")):
            op = await stub.GetOperation(gateway_pb2.GetOperationRequest(name=names[n]), timeout=5)
            assert not op.done
            (pending,) = metadata(op).results
            assert pending.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE, pending
            assert reason(pending) == why
            assert failed("BatchReleaseBindings", why) > released_before[why]
    assert running.platform.store.counts()["applied"] == 4  # all but the poisoned one
