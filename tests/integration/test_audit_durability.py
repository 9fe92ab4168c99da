"""Nothing accepted is lost from the audit log, on SQLite and on PostgreSQL.

A real gateway on port 0 with mTLS (its members are not running: what is audited here is the
gateway's own verdict on each call). The audit table is made to refuse writes from outside, the
way a busy or failing database does: on SQLite another connection holds the write lock longer
than ``busy_timeout``; on PostgreSQL another session locks the table and the writer's backend is
terminated with ``pg_terminate_backend`` while it waits. Then:

- every entry of every call made meanwhile arrives once the database takes writes again, and
  the chain verifies;
- a release job and its ``RELEASE_JOB COMMITTED`` entry commit together or not at all, and an
  event batch with its ``EVENTS_PUBLISHED`` entry, whatever the in-memory writer does;
- with the backlog full, new audited calls are refused UNAVAILABLE ``AUDIT_BACKLOG`` (a release
  is never accepted unaudited) until the backlog is written;
- event delivery pauses while the database refuses its writes, and resumes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from gateway.audit import read_chain
from gateway.schema import audit_checkpoints, audit_log, event_batches, release_jobs
from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.testing import start_federation
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc
from tests.helpers.metrics import figure
from tests.integration.members import eventually

NUMBER = "+8613812345678"  # a cmcc block
X = datetime(2022, 7, 1, 9, tzinfo=UTC)
CMCC = PeerId(Role.CARRIER, "cmcc")

pytestmark = pytest.mark.timeout(180)


@dataclasses.dataclass
class Single:
    layout: FederationLayout
    gateway: Gateway
    url: str

    def stub(self) -> tuple[grpc.aio.Channel, gateway_pb2_grpc.GatewayServiceAsyncStub]:
        ch = pki.secure_channel(f"127.0.0.1:{self.gateway.port}", self.layout.pki_dir, CMCC)
        return ch, gateway_pb2_grpc.GatewayServiceStub(ch)

    def claim(self, purpose: Purpose) -> claim_pb2.Envelope:
        c = TenureClaim.new(
            number=NUMBER,
            carrier_id="cmcc",
            tenure_start=X,
            purpose=purpose,
            now=datetime.now(UTC),
        )
        return sign_claim(c, pki.load_carrier_signer(self.layout.pki_dir, "cmcc")).to_proto()

    def rows(self, *where: Any) -> list[sa.Row[Any]]:
        with self.gateway.store.engine.connect() as c:
            return list(c.execute(sa.select(audit_log).where(*where).order_by(audit_log.c.seq)))

    def jobs(self) -> list[str]:
        with self.gateway.store.engine.connect() as c:
            return list(c.execute(sa.select(release_jobs.c.job_id)).scalars())


Start = Callable[..., Awaitable[Single]]


@pytest.fixture
async def start(tmp_path: Path, db_url: str) -> AsyncIterator[Start]:
    started: list[Gateway] = []

    async def go(**limits: object) -> Single:
        # One carrier, one platform (neither running): on SQLite every background writer of
        # the gateway waits out busy_timeout on the one database thread while the lock is held.
        layout = create_federation(
            tmp_path / "fed",
            database_url=db_url,
            carriers=("cmcc",),
            platforms=("weibo",),
            limits=limits or None,
        )
        config = dataclasses.replace(
            load_gateway_config(layout.gateway_config), listen="127.0.0.1:0"
        )
        gw = await Gateway.start(config)
        started.append(gw)
        return Single(layout, gw, config.database_url)

    try:
        yield go
    finally:
        for gw in started:
            await gw.stop(5.0)


@contextmanager
def audit_table_held(url: str) -> Iterator[None]:
    """Make the audit table refuse writes from outside the gateway until the block ends.

    SQLite: another connection holds the database's write lock (the gateway's writer gives up
    after busy_timeout). PostgreSQL: another session holds an exclusive lock on the table
    (writers wait on it until :func:`terminate` ends them).
    """
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=10)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            c.execute(sa.text("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                c.rollback()
    finally:
        engine.dispose()


def _lock_waiters(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return list(
                c.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def terminate(url: str, pids: list[int]) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            for pid in pids:
                c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        engine.dispose()


class FlushFailed(logging.Handler):
    """Sets ``failed`` when the gateway reports a failed audit flush."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("appending to the audit log failed"):
            self.failed.set()


@pytest.fixture
def flush_failed() -> Iterator[FlushFailed]:
    handler = FlushFailed()
    logger = logging.getLogger("gateway.audit")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def call(coro: Awaitable[Any]) -> str:
    """'OK', or the refusal as 'CODE REASON'."""
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        info = rpc_error_info(err)
        return f"{err.code().name} {info.reason if info else '-'}"
    return "OK"


async def test_a_database_that_refuses_audit_writes_for_a_while_loses_no_entry(
    start: Start, flush_failed: FlushFailed
) -> None:
    s = await start()
    ch, stub = s.stub()
    proof = s.claim(Purpose.HOLDER_PROOF)  # refused by QueryBindings: WRONG_PURPOSE, audited
    release = gateway_pb2.ReleaseBindingsRequest(
        request_id="during-the-outage", claim=s.claim(Purpose.RELEASE_PRIOR)
    )
    async with ch:
        with audit_table_held(s.url):
            refused = [
                await call(
                    stub.QueryBindings(gateway_pb2.QueryBindingsRequest(claim=proof), timeout=5)
                )
                for _ in range(3)
            ]
            answered = [
                await call(
                    stub.QueryBindings(
                        gateway_pb2.QueryBindingsRequest(claim=s.claim(Purpose.QUERY_PRIOR)),
                        timeout=5,
                    )
                )
                for _ in range(3)
            ]
            # The release cannot be committed meanwhile: it is refused, never accepted unaudited.
            during = await call(stub.ReleaseBindings(release, timeout=2))
            if s.url.startswith("postgresql"):
                waiting: list[int] = []

                def writers_wait() -> bool:
                    waiting[:] = _lock_waiters(s.url)
                    return bool(waiting)

                await eventually(writers_wait, within=20)
                terminate(s.url, waiting)  # the writer's connection dies mid-flush
            await asyncio.wait_for(flush_failed.failed.wait(), 30)
        assert refused == ["INVALID_ARGUMENT WRONG_PURPOSE"] * 3
        assert answered == ["OK"] * 3
        assert during != "OK"
        # The database takes writes again: the carrier retries its release (AIP-155).
        assert await call(stub.ReleaseBindings(release, timeout=10)) == "OK"
    await s.gateway.audit.flush()
    queries = s.rows(audit_log.c.event == "QUERY")
    assert sorted(r.outcome for r in queries) == ["ACCEPTED"] * 3 + ["WRONG_PURPOSE"] * 3
    committed = s.rows(audit_log.c.event == "RELEASE_JOB", audit_log.c.outcome == "COMMITTED")
    assert len(s.jobs()) == 1 and [r.detail for r in committed] == [
        f'{{"job": "{s.jobs()[0]}", "platforms": "{len(s.layout.platform_configs)}"}}'
    ]
    report = read_chain(s.gateway.store.engine)
    assert report.ok, report


async def test_a_full_audit_backlog_refuses_new_work_until_it_is_written(start: Start) -> None:
    s = await start(audit_max_backlog=4)
    ch, stub = s.stub()
    proof = s.claim(Purpose.HOLDER_PROOF)

    def query() -> Awaitable[Any]:
        return stub.QueryBindings(gateway_pb2.QueryBindingsRequest(claim=proof), timeout=5)

    async with ch:
        with audit_table_held(s.url):
            got = [await call(query()) for _ in range(5)]
            release = await call(
                stub.ReleaseBindings(
                    gateway_pb2.ReleaseBindingsRequest(
                        request_id="while-behind", claim=s.claim(Purpose.RELEASE_PRIOR)
                    ),
                    timeout=5,
                )
            )
            assert got == ["INVALID_ARGUMENT WRONG_PURPOSE"] * 4 + ["UNAVAILABLE AUDIT_BACKLOG"]
            assert release == "UNAVAILABLE AUDIT_BACKLOG"
        await s.gateway.audit.flush()  # the four entries are written ...
        assert await call(query()) == "INVALID_ARGUMENT WRONG_PURPOSE"  # ... and work resumes
    await s.gateway.audit.flush()
    assert len(s.rows(audit_log.c.event == "QUERY")) == 5
    assert s.jobs() == [] and not s.rows(audit_log.c.event == "RELEASE")
    assert read_chain(s.gateway.store.engine).ok


async def test_the_audit_backlog_shows_in_the_gateways_metrics(start: Start) -> None:
    """While the database refuses audit writes a scrape of the gateway shows the records waiting
    in memory and the bound at which work is refused; once they are written the backlog is 0,
    the chain holds them, and the newest signed checkpoint's size and time are those stored."""
    s = await start(audit_max_backlog=4)
    observer = s.gateway.observer
    assert observer is not None
    ch, stub = s.stub()
    proof = s.claim(Purpose.HOLDER_PROOF)
    async with ch:
        with audit_table_held(s.url):
            got = [
                await call(
                    stub.QueryBindings(gateway_pb2.QueryBindingsRequest(claim=proof), timeout=5)
                )
                for _ in range(3)
            ]
            assert got == ["INVALID_ARGUMENT WRONG_PURPOSE"] * 3
            # Read from memory: a scrape need not wait for the refusing database.
            assert await figure(observer, "numfed_audit_backlog", refresh=False) == 3
            assert await figure(observer, "numfed_audit_backlog_limit", refresh=False) == 4
        await s.gateway.audit.flush()
    assert await figure(observer, "numfed_audit_backlog") == 0
    length = len(s.rows())
    await s.gateway.checkpointer.checkpoint()  # signs now, unless it signed this length already
    with s.gateway.store.engine.connect() as c:
        newest = c.execute(
            sa.select(audit_checkpoints.c.size, audit_checkpoints.c.issued_us)
            .order_by(audit_checkpoints.c.size.desc())
            .limit(1)
        ).one()
    assert newest.size == length

    async def checkpoint_shown() -> bool:
        size = await figure(observer, "numfed_audit_last_checkpoint_size")
        at = await figure(observer, "numfed_audit_last_checkpoint_timestamp_seconds")
        return size == length and at == newest.issued_us / 1e6

    await eventually(checkpoint_shown, within=10)  # the database figures: once a second
    assert await figure(observer, "numfed_audit_chain_length") == length


async def test_committed_actions_carry_their_audit_entry_in_their_own_transaction(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await start()

    def refuse(*_args: object) -> None:
        raise sa.exc.OperationalError("INSERT INTO audit_log", {}, Exception("refused"))

    # The in-memory writer cannot write at all: what is committed must carry its own entry.
    monkeypatch.setattr(s.gateway.audit, "_append", refuse)
    ch, stub = s.stub()
    claim = s.claim(Purpose.RELEASE_PRIOR)
    events = [LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, datetime.now(UTC))]
    batch = sign_event_batch(
        "cmcc", events, pki.load_carrier_signer(s.layout.pki_dir, "cmcc"), now=datetime.now(UTC)
    )
    foreign = [LifecycleEvent.new("+8618611112222", EventKind.DEACTIVATED, datetime.now(UTC))]
    refused_batch = sign_event_batch(
        "cmcc", foreign, pki.load_carrier_signer(s.layout.pki_dir, "cmcc"), now=datetime.now(UTC)
    )
    async with ch:
        op = await stub.ReleaseBindings(
            gateway_pb2.ReleaseBindingsRequest(request_id="one", claim=claim), timeout=10
        )
        again = await call(
            stub.ReleaseBindings(
                gateway_pb2.ReleaseBindingsRequest(request_id="two", claim=claim), timeout=10
            )
        )
        published = await stub.PublishEvents(
            gateway_pb2.PublishEventsRequest(batch=batch.to_proto()), timeout=10
        )
        not_published = await call(
            stub.PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=refused_batch.to_proto()), timeout=10
            )
        )
    assert again == "ALREADY_EXISTS CLAIM_ALREADY_USED"
    assert not_published.startswith("PERMISSION_DENIED")
    job_id = op.name.removeprefix("operations/")
    assert s.jobs() == [job_id]
    committed = s.rows(audit_log.c.event == "RELEASE_JOB")
    assert [(r.outcome, r.detail) for r in committed] == [
        ("COMMITTED", f'{{"job": "{job_id}", "platforms": "{len(s.layout.platform_configs)}"}}')
    ]
    with s.gateway.store.engine.connect() as c:
        seqs = list(c.execute(sa.select(event_batches.c.seq)).scalars())
    assert published.seq in seqs
    logged = s.rows(audit_log.c.event == "EVENTS_PUBLISHED")
    assert [r.detail for r in logged if r.actor == CMCC.uri][-1] == (
        f'{{"events": "1", "seq": "{published.seq}"}}'
    )
    assert len(logged) == len(seqs)  # one entry per batch in the log, none for the refused one
    assert read_chain(s.gateway.store.engine).ok


async def test_event_delivery_survives_a_database_that_refuses_writes_for_a_while(
    tmp_path: Path,
) -> None:
    """The same kind of fault elsewhere: a push loop whose lease renewal the database refuses
    pauses and resumes; it used to end for good, and the platform got no event again."""
    fed = await start_federation(
        tmp_path / "fed",
        carriers=("cmcc",),
        platforms=("weibo",),
        limits={"lease_seconds": 1.5},  # the push lease is renewed every half second
    )
    paused = asyncio.Event()

    class Paused(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("event delivery to weibo paused"):
                paused.set()

    handler = Paused()
    logging.getLogger("gateway.pusher").addHandler(handler)
    try:
        pusher = fed.gateway.member_tasks[PeerId(Role.PLATFORM, "weibo")]
        url = fed.gateway.config.database_url
        with audit_table_held(url):  # on SQLite: the whole database's write lock
            await eventually(lambda: paused.is_set() or pusher.done(), within=60)
        assert not pusher.done(), f"the push loop ended: {pusher.exception()!r}"
        event = LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, datetime.now(UTC))
        signer = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
        batch = sign_event_batch("cmcc", [event], signer, now=datetime.now(UTC))
        async with pki.secure_channel(fed.layout.gateway_endpoint, fed.layout.pki_dir, CMCC) as ch:
            await gateway_pb2_grpc.GatewayServiceStub(ch).PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=batch.to_proto()), timeout=10
            )
        store = fed.platforms["weibo"].store
        await eventually(lambda: event.event_id in store.applied_event_ids(), within=30)
    finally:
        logging.getLogger("gateway.pusher").removeHandler(handler)
        await fed.stop()
