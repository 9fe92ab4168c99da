"""One release claim, one job, in the store itself: group commits and racing replicas.

Two Store objects on one database stand for two replicas; a barrier starts their group
commits together so both read "no job yet" before either writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

import gateway.store as gateway_store
from gateway.schema import release_jobs, release_tasks
from gateway.store import JobRow, Store, claim_digest
from tests.gateway.test_store import job


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Store, Store]]:
    a, b = Store(db_url), Store(db_url)
    a.migrate()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def with_claim(job_id: str, request_id: str, claim_id: bytes) -> JobRow:
    base = job(job_id=job_id, request_id=request_id)
    return JobRow(**{**base.__dict__, "claim_digest": claim_digest("cmcc", claim_id)})


def counts(store: Store) -> tuple[int, int]:
    with store.engine.connect() as c:
        return (
            c.execute(sa.select(sa.func.count()).select_from(release_jobs)).scalar_one(),
            c.execute(sa.select(sa.func.count()).select_from(release_tasks)).scalar_one(),
        )


def test_one_group_with_a_claim_twice_makes_one_job_and_keeps_the_rest(
    stores: tuple[Store, Store],
) -> None:
    a, _ = stores
    first = with_claim("a" * 32, "req-1", b"C" * 16)
    same_claim = with_claim("b" * 32, "req-2", b"C" * 16)
    other = with_claim("c" * 32, "req-3", b"D" * 16)
    out = a.create_jobs([(first, ["weibo"]), (same_claim, ["weibo"]), (other, ["weibo"])])
    assert [j.job_id for j in out] == ["a" * 32, "a" * 32, "c" * 32]
    assert counts(a) == (2, 2)
    # Later, alone: the stored job, whose request tells the caller it is not its own retry.
    again = a.create_job(with_claim("d" * 32, "req-4", b"C" * 16), ["weibo"])
    assert again.job_id == "a" * 32 and again.request_id == "req-1"
    assert counts(a) == (2, 2)


def commit_together(
    store: Store, side: str, round_: int, claim_id: bytes, barrier: threading.Barrier
) -> list[JobRow]:
    """One replica's group: the contested claim, and an unrelated release beside it."""
    work = [
        (with_claim(f"{side}{round_}".ljust(32, "0"), f"{side}-{round_}", claim_id), ["w"]),
        (
            with_claim(
                f"{side}{round_}x".ljust(32, "0"),
                f"{side}-{round_}-x",
                f"{side}{round_}".encode().ljust(16, b"."),
            ),
            ["w"],
        ),
    ]
    barrier.wait(timeout=10)
    return store.create_jobs(work)


def test_two_replicas_committing_one_claim_at_once_make_one_job(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    for round_ in range(5):
        claim_id = bytes([round_]) * 16
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            fa = pool.submit(commit_together, a, "a", round_, claim_id, barrier)
            fb = pool.submit(commit_together, b, "b", round_, claim_id, barrier)
            got_a, got_b = fa.result(timeout=30), fb.result(timeout=30)
        assert got_a[0].job_id == got_b[0].job_id, "one claim made two jobs"
        # The unrelated release of each group is stored whatever happened to the other entry.
        assert got_a[1].request_id == f"a-{round_}-x" and got_b[1].request_id == f"b-{round_}-x"
        assert counts(a) == (3 * (round_ + 1), 3 * (round_ + 1))


def test_migration_0006_backfills_claim_digests_and_what_was_delivered(db_url: str) -> None:
    """An 0004 database with jobs and cursors upgrades in place: each claim that still has a job
    gets its digest (the oldest job keeps it), and a cursor's delivered position is the log's
    head, so a poll platform holding unacknowledged batches is not refused its acknowledgement.
    """
    from alembic import command
    from alembic.config import Config

    from gateway.schema import event_batches, event_cursors
    from numfed.v1 import claim_pb2

    store = Store(db_url)
    try:
        cfg = Config()
        cfg.set_main_option(
            "script_location", str(Path(gateway_store.__file__).parent / "migrations")
        )
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
        claim_id = b"K" * 16
        envelope = claim_pb2.Envelope(
            payload=claim_pb2.TenureClaim(carrier_id="cmcc", claim_id=claim_id).SerializeToString()
        ).SerializeToString()
        old = {
            k: v for k, v in job().__dict__.items() if k not in ("claim_digest", "trace_context")
        }
        rows = [
            {**old, "job_id": "a" * 32, "request_id": "r-1", "claim": envelope, "created_us": 1},
            {**old, "job_id": "b" * 32, "request_id": "r-2", "claim": envelope, "created_us": 2},
            {**old, "job_id": "c" * 32, "request_id": "r-3", "claim": None, "done_us": 3},
        ]
        with store.engine.begin() as conn:
            conn.execute(sa.insert(release_jobs), rows)
            conn.execute(
                sa.insert(event_batches),
                [{"carrier_id": "cmcc", "received_us": 1, "events": 1, "envelope": b"x"}] * 3,
            )
            conn.execute(
                sa.insert(event_cursors),
                [{"platform_id": "xiaomi", "acked_seq": 1, "updated_us": 1}],
            )
        store.migrate()
        with store.engine.connect() as conn:
            digests = dict(
                conn.execute(sa.select(release_jobs.c.job_id, release_jobs.c.claim_digest)).all()
            )
            cursor = conn.execute(
                sa.select(event_cursors.c.acked_seq, event_cursors.c.delivered_seq)
            ).one()
        assert digests == {"a" * 32: claim_digest("cmcc", claim_id), "b" * 32: None, "c" * 32: None}
        assert tuple(cursor) == (1, 3)
    finally:
        store.close()
