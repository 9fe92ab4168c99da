"""The gateway's side of audit checkpoints, on SQLite and PostgreSQL: it signs only what is
committed, replicas sign one head per size, and it never anchors a log that no longer matches
its own last checkpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gateway.audit import AuditRecord, append
from gateway.checkpoints import Checkpointer
from gateway.schema import audit_checkpoints, audit_log
from gateway.store import Store
from numfed.checkpoint import Checkpoint
from numfed.envelope import SigningKey
from numfed.v1 import claim_pb2

ORIGIN = "numfed/0123456789abcdef/audit"
KEY = SigningKey.generate()
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def records(n: int, tag: str = "") -> list[AuditRecord]:
    return [
        AuditRecord(1_000 + i, "QUERY", "spiffe://numfed/carrier/cmcc", f"k{tag}{i}", "ACCEPTED")
        for i in range(n)
    ]


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def engine_for(url: str) -> sa.Engine:
    """Another replica's engine; on SQLite it gives up on the write lock after 0.2 s."""
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):

        def short_busy(dbapi_conn: object, _record: object) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=200")  # type: ignore[attr-defined]

        sa.event.listen(engine, "connect", short_busy)
    return engine


def checkpointer(engine: sa.Engine, store: Store, at: datetime = T0) -> Checkpointer:
    return Checkpointer(
        engine, store.run, signer=KEY, origin=ORIGIN, interval=10.0, clock=lambda: at
    )


def signed(env: claim_pb2.Envelope | None) -> Checkpoint:
    assert env is not None
    return Checkpoint.from_payload(env.payload)


def hash_of(engine: sa.Engine, seq: int) -> str:
    with engine.connect() as c:
        return str(
            c.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == seq)).scalar_one()
        )


def stored_sizes(engine: sa.Engine) -> list[int]:
    with engine.connect() as c:
        return [int(s) for s in c.execute(sa.select(audit_checkpoints.c.size)).scalars()]


def test_no_checkpoint_ever_covers_an_uncommitted_entry(store: Store) -> None:
    with store.engine.begin() as c:
        append(c, records(3))
    other = engine_for(store.url)
    try:
        signer = checkpointer(other, store)
        writer = engine_for(store.url)
        with writer.begin() as pending:  # a flush under way: three entries not committed yet
            append(pending, records(3, "pending"))
            try:
                during = signed(signer.sign_if_grown())
            except sa.exc.OperationalError:  # SQLite: the writer holds the one write lock
                assert store.dialect == "sqlite"
                during = None
            assert all(size <= 3 for size in stored_sizes(store.engine))
            if during is not None:
                assert (during.size, during.head.hex()) == (3, hash_of(store.engine, 3))
        writer.dispose()
        after = signed(signer.sign_if_grown())
        assert (after.size, after.head.hex()) == (6, hash_of(store.engine, 6))
        with store.engine.begin() as rolled_back:
            append(rolled_back, records(2, "never"))
            rolled_back.rollback()
        assert signed(signer.sign_if_grown()).size == 6
    finally:
        other.dispose()


def test_two_replicas_signing_the_same_size_produce_the_same_head(store: Store) -> None:
    with store.engine.begin() as c:
        append(c, records(5))
    a, b = sa.create_engine(store.url), sa.create_engine(store.url)
    try:
        # Each replica signs at its own moment, the two at once.
        replicas = [checkpointer(a, store, T0), checkpointer(b, store, T0 + timedelta(seconds=1))]

        async def both() -> list[claim_pb2.Envelope | None]:
            return await asyncio.gather(*(asyncio.to_thread(r.sign_if_grown) for r in replicas))

        try:
            got = asyncio.run(both())
        except sa.exc.OperationalError:  # SQLite: one writer at a time; sign one after another
            assert store.dialect == "sqlite"
            got = [r.sign_if_grown() for r in replicas]
        heads = {(signed(e).size, signed(e).head) for e in got}
        assert heads == {(5, bytes.fromhex(hash_of(store.engine, 5)))}
        assert got[0] == got[1]  # both hand out the one envelope stored for size 5
        assert stored_sizes(store.engine) == [5]
    finally:
        a.dispose()
        b.dispose()


def test_a_log_cut_below_the_last_checkpoint_is_never_anchored_anew(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with store.engine.begin() as c:
        append(c, records(5))
    signer = checkpointer(store.engine, store)
    first = signer.sign_if_grown()
    assert signed(first).size == 5
    with store.engine.begin() as c:  # cut the tail, then let the log grow past it again
        c.execute(sa.delete(audit_log).where(audit_log.c.seq > 3))
        append(c, records(4, "after the cut"))
    with caplog.at_level(logging.ERROR, logger="gateway.checkpoints"):
        assert signer.sign_if_grown() == first
    assert stored_sizes(store.engine) == [5]
    assert "no longer holds entry 5" in caplog.text
