"""The release job store on a real SQLite file: durable jobs, exclusive leases, outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.schema import release_jobs, release_tasks
from gateway.store import TASK_DONE, JobRow, Store, TaskUpdate

T0 = 1_800_000_000_000_000
SECOND = 1_000_000


def job(job_id: str = "a" * 32, request_id: str = "req-1") -> JobRow:
    return JobRow(
        job_id=job_id,
        carrier_id="cmcc",
        request_id=request_id,
        request_digest=b"d" * 32,
        number_key="k" * 64,
        purpose=2,
        claim=b"claim-bytes",
        created_us=T0,
        deadline_us=T0 + 3600 * SECOND,
        done_us=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'gw.db'}")
    s.migrate()
    return s


def test_migrations_create_every_table(store: Store) -> None:
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"release_jobs", "release_tasks", "portability", "alembic_version"} <= names


def test_create_job_is_idempotent_on_carrier_and_request_id(store: Store) -> None:
    first = store.create_job(job(), ["weibo", "taobao"])
    again = store.create_job(job(job_id="b" * 32), ["weibo", "taobao"])
    assert again.job_id == first.job_id
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(release_jobs)).scalar() == 1
        assert c.execute(sa.select(sa.func.count()).select_from(release_tasks)).scalar() == 2


def test_a_lease_is_held_by_one_owner_until_it_expires(store: Store) -> None:
    store.create_job(job(), ["weibo", "taobao"])
    got_a = store.claim_due("A", T0, 30 * SECOND, 100)
    got_b = store.claim_due("B", T0 + SECOND, 30 * SECOND, 100)
    assert {t.platform_id for t, _ in got_a} == {"weibo", "taobao"}
    assert got_b == []
    later = store.claim_due("B", T0 + 31 * SECOND, 30 * SECOND, 100)
    assert {t.platform_id for t, _ in later} == {"weibo", "taobao"}
    assert all(j.claim == b"claim-bytes" for _, j in later)


def test_record_by_a_former_owner_is_ignored(store: Store) -> None:
    store.create_job(job(), ["weibo"])
    store.claim_due("A", T0, 30 * SECOND, 10)
    store.claim_due("B", T0 + 31 * SECOND, 30 * SECOND, 10)
    stale = TaskUpdate("a" * 32, "weibo", True, 1, b"r", T0)
    assert store.record("A", [stale], T0 + 32 * SECOND) == set()
    assert store.record("B", [stale], T0 + 32 * SECOND) == {"a" * 32}


def test_job_done_when_every_task_done_and_claim_dropped(store: Store) -> None:
    store.create_job(job(), ["weibo", "taobao"])
    store.claim_due("A", T0, 30 * SECOND, 10)
    store.record("A", [TaskUpdate("a" * 32, "weibo", True, 1, b"r1", T0)], T0 + 1)
    found = store.get_job("a" * 32)
    assert found is not None and found[0].done_us is None and found[0].claim is not None
    retry = TaskUpdate("a" * 32, "taobao", False, 3, b"r2", T0 + 5 * SECOND)
    store.record("A", [retry], T0 + 2)
    assert store.claim_due("A", T0 + SECOND, 30 * SECOND, 10) == []  # not due yet
    due = store.claim_due("A", T0 + 5 * SECOND, 30 * SECOND, 10)
    assert [(t.platform_id, t.attempts) for t, _ in due] == [("taobao", 1)]
    store.record("A", [TaskUpdate("a" * 32, "taobao", True, 2, b"r3", 0)], T0 + 6 * SECOND)
    found = store.get_job("a" * 32)
    assert found is not None
    jobrow, tasks = found
    assert jobrow.done_us == T0 + 6 * SECOND and jobrow.claim is None
    assert [t.state for t in tasks] == [TASK_DONE, TASK_DONE]


def test_release_leases_frees_everything_on_restart(store: Store) -> None:
    store.create_job(job(), ["weibo"])
    store.claim_due("dead-replica", T0, 3600 * SECOND, 10)
    assert store.claim_due("me", T0 + SECOND, 30 * SECOND, 10) == []
    assert store.release_leases(None) == 1
    assert len(store.claim_due("me", T0 + SECOND, 30 * SECOND, 10)) == 1


def test_portability_round_trip(store: Store) -> None:
    store.put_portability([("k1", "cmcc"), ("k2", "cucc")], T0)
    store.put_portability([("k1", "ctcc")], T0 + 1)
    assert store.load_portability() == {"k1": "ctcc", "k2": "cucc"}
