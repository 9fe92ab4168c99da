"""The outcomes of release batches answered while another batch's are being stored share the
next transaction (a group commit), on SQLite and PostgreSQL, and each is still recorded once
and audited: one release to every platform costs two transactions for its outcomes, not one
per platform. A real gateway, carrier and platforms, mTLS on loopback."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.schema import release_tasks
from gateway.store import TASK_DONE, TaskUpdate
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import start_federation
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.test_gateway_stop import unaudited_outcomes

WORLD = demo_scenario()
CMCC = PeerId(Role.CARRIER, "cmcc")


@pytest.mark.timeout(120)
async def test_outcomes_answered_during_a_transaction_share_the_next_one(
    tmp_path: Path, db_url: str
) -> None:
    fed = await start_federation(tmp_path / "fed", database_url=db_url)
    try:
        store, dispatcher = fed.gateway.store, fed.gateway.dispatcher
        platforms = len(fed.platforms)
        sizes: list[int] = []
        first_in, go_on = threading.Event(), threading.Event()
        record_tasks = store.record_tasks

        def slow_first(owner: str, updates: Iterable[TaskUpdate], now_us: int) -> object:
            """The first transaction waits until the other platforms have answered."""
            todo = list(updates)
            sizes.append(len(todo))
            if len(sizes) == 1:
                first_in.set()
                go_on.wait(30)
            return record_tasks(owner, todo, now_us)

        store.record_tasks = slow_first  # type: ignore[method-assign,assignment]
        now = datetime.now(UTC)
        history = next(h for h in WORLD.histories_served_by("cmcc", now) if h.current_tenure(now))
        claim = TenureClaim.new(
            number=history.number,
            carrier_id="cmcc",
            tenure_start=history.tenure_start(now),
            purpose=Purpose.RELEASE_PRIOR,
            now=now,
        )
        signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
        async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            op = await stub.ReleaseBindings(
                gateway_pb2.ReleaseBindingsRequest(
                    request_id=uuid.uuid4().hex, claim=sign_claim(claim, signer).to_proto()
                ),
                timeout=10,
            )
            async with asyncio.timeout(30):
                while not first_in.is_set() or dispatcher.outcomes_waiting < platforms - 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            go_on.set()
            async with asyncio.timeout(30):
                while not op.done:
                    await asyncio.sleep(0.05)
                    op = await stub.GetOperation(
                        gateway_pb2.GetOperationRequest(name=op.name), timeout=5
                    )
        assert sizes == [1, platforms - 1]  # the first platform's batch, then all the others'
        with store.engine.connect() as c:
            done = c.execute(
                sa.select(sa.func.count())
                .select_from(release_tasks)
                .where(release_tasks.c.state == TASK_DONE)
            ).scalar_one()
        assert done == platforms
        async with asyncio.timeout(10):  # the audit writer takes what it is handed in turn
            while unaudited_outcomes(store.engine):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        go_on.set()
        await fed.stop()


async def test_a_task_in_two_batches_of_one_transaction_is_recorded_and_audited_once(
    tmp_path: Path, db_url: str
) -> None:
    """A task whose lease ran out while its batch was out, and which went out again, can come
    back in two batches that share one transaction: it is recorded once (one attempt more),
    and only the first batch is told it was, so its delivery is audited once."""
    from gateway.dispatcher import Dispatcher
    from gateway.store import JobRow, Store
    from numfed.config import Limits

    store = Store(db_url)
    store.migrate()
    try:
        t0 = 1_800_000_000_000_000
        job = JobRow(
            job_id="a" * 32,
            carrier_id="cmcc",
            request_id="req-1",
            request_digest=b"d" * 32,
            number_key="k" * 64,
            purpose=2,
            claim=b"claim-bytes",
            created_us=t0,
            deadline_us=t0 + 3600 * 1_000_000,
            done_us=None,
        )
        store.create_job(job, ["weibo", "taobao"])
        dispatcher = Dispatcher(
            store=store, links={}, limits=Limits(), owner="gw", on_change=lambda _jobs: None
        )
        assert len(await store.run(store.claim_due, "gw", t0, 30_000_000, 10)) == 2
        weibo = TaskUpdate(job.job_id, "weibo", True, 1, b"r", t0)
        taobao = TaskUpdate(job.job_id, "taobao", True, 1, b"r", t0)
        told = await dispatcher._record_together([[weibo], [weibo, taobao]], 10.0)
        assert told == [{(job.job_id, "weibo")}, {(job.job_id, "taobao")}]
        with store.engine.connect() as c:
            attempts = dict(
                c.execute(sa.select(release_tasks.c.platform_id, release_tasks.c.attempts)).all()
            )
        assert attempts == {"weibo": 1, "taobao": 1}
    finally:
        store.close()
