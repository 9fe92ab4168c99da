"""The release job store on SQLite and PostgreSQL: durable jobs, exclusive leases, outcomes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.schema import release_jobs, release_tasks, task_leases
from gateway.store import TASK_DONE, TASK_PENDING, JobRow, Renewal, Store, TaskUpdate
from numfed.errors import FailedPrecondition
from numfed.pgtemp import TempPostgres

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
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def test_migrations_create_every_table(store: Store) -> None:
    names = set(sa.inspect(store.engine).get_table_names())
    assert {
        "release_jobs",
        "release_tasks",
        "number_ports",
        "port_halves",
        "alembic_version",
    } <= names


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
    assert store.release_leases(None, T0 + SECOND) == 1
    assert len(store.claim_due("me", T0 + SECOND, 30 * SECOND, 10)) == 1


def test_two_replicas_leasing_at_once_take_disjoint_tasks(db_url: str) -> None:
    """Replicas leasing in parallel threads never get the same task (SKIP LOCKED / one UPDATE)."""
    import threading

    setup = Store(db_url)
    setup.migrate()
    for i in range(40):
        setup.create_job(job(f"{i:032x}", f"req-{i}"), ["weibo", "taobao", "douyin"])
    replicas = [Store(db_url) for _ in range(3)]
    got: dict[str, list[tuple[str, str]]] = {f"r{i}": [] for i in range(3)}
    start = threading.Barrier(3)

    def lease(name: str, s: Store) -> None:
        start.wait()
        while batch := s.claim_due(name, T0, 30 * SECOND, 7):
            got[name] += [(t.job_id, t.platform_id) for t, _j in batch]

    threads = [threading.Thread(target=lease, args=(f"r{i}", s)) for i, s in enumerate(replicas)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    every = [k for keys in got.values() for k in keys]
    assert len(every) == 120 and len(set(every)) == 120
    with setup.engine.connect() as c:
        grants = c.execute(sa.select(task_leases)).all()
    assert len(grants) == 120 and {g.owner for g in grants} <= set(got)
    for s in [setup, *replicas]:
        s.close()


def test_lease_record_shows_takeover_after_expiry_and_heartbeat(store: Store) -> None:
    store.create_job(job(), ["weibo"])
    store.claim_due("A", T0, 10 * SECOND, 10)
    # A's heartbeat keeps the task: B cannot take it at T0+15s.
    assert store.renew("A", [("a" * 32, "weibo")], T0 + 8 * SECOND, 10 * SECOND) == Renewal(1, 0)
    assert store.claim_due("B", T0 + 15 * SECOND, 10 * SECOND, 10) == []
    # A falls silent; after its lease runs out, B takes over and A's late outcome is refused.
    taken = store.claim_due("B", T0 + 19 * SECOND, 10 * SECOND, 10)
    assert len(taken) == 1
    assert store.renew("A", [("a" * 32, "weibo")], T0 + 20 * SECOND, 10 * SECOND) == Renewal(0, 1)
    late = TaskUpdate("a" * 32, "weibo", True, 1, b"late", T0)
    assert store.record("A", [late], T0 + 21 * SECOND) == set()
    assert store.record("B", [late], T0 + 22 * SECOND) == {"a" * 32}
    with store.engine.connect() as c:
        rows = c.execute(sa.select(task_leases).order_by(task_leases.c.from_us)).all()
    assert [(r.owner, r.from_us, r.until_us, r.finished) for r in rows] == [
        ("A", T0, T0 + 18 * SECOND, False),
        ("B", T0 + 19 * SECOND, T0 + 22 * SECOND, True),
    ]


def test_a_task_finished_between_heartbeats_is_not_a_lost_lease(store: Store) -> None:
    """The dispatcher's heartbeat reads the tasks it holds, then renews them; a batch answered
    in between records its tasks done. Those were finished, not lost: only a task another owner
    took over is (with one replica, every heartbeat after a batch came back warned "N of N
    leases were lost to other replicas")."""
    store.create_job(job(), ["weibo", "taobao", "douyin"])
    store.claim_due("A", T0, 10 * SECOND, 10)
    done = TaskUpdate("a" * 32, "weibo", True, 1, b"found", T0)
    store.record("A", [done], T0 + SECOND)
    # taobao's lease runs out and B takes it over; douyin's is still A's.
    store.renew("A", [("a" * 32, "douyin")], T0 + 8 * SECOND, 10 * SECOND)
    assert [t.platform_id for t, _j in store.claim_due("B", T0 + 11 * SECOND, 10 * SECOND, 10)] == [
        "taobao"
    ]
    keys = [("a" * 32, p) for p in ("weibo", "taobao", "douyin")]
    assert store.renew("A", keys, T0 + 12 * SECOND, 10 * SECOND) == Renewal(held=1, lost=1)


def test_releasing_own_leases_leaves_other_replicas_alone(store: Store) -> None:
    store.create_job(job(), ["weibo", "taobao"])
    store.claim_due("A", T0, 30 * SECOND, 1)
    store.claim_due("B", T0, 30 * SECOND, 1)
    assert store.release_leases("A", T0 + SECOND) == 1
    again = store.claim_due("C", T0 + 2 * SECOND, 30 * SECOND, 10)
    assert len(again) == 1  # only A's task: B's is still held
    with store.engine.connect() as c:
        a = c.execute(sa.select(task_leases).where(task_leases.c.owner == "A")).one()
    assert a.until_us == T0 + SECOND and a.finished


def _wait_for_lock_waiters(engine: sa.Engine, n: int, timeout: float = 10.0) -> None:
    """Until ``n`` sessions of this database wait for a lock (PostgreSQL)."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while conn.execute(query).scalar_one() < n:
            assert time.monotonic() < deadline, f"fewer than {n} sessions came to wait for a lock"
            time.sleep(0.01)


def test_recording_while_giving_back_leases_waits_and_never_deadlocks(
    postgres: TempPostgres,
) -> None:
    """A batch's outcome is recorded while its replica gives back its leases (a stop).

    A third session holds one task row, so both queue behind it and then meet head on; the
    record gets the row first. Both lock the task rows before the lease records, in key order,
    so the lease release waits for the record. (It used to take the lease records first:
    PostgreSQL found a deadlock and aborted one, and the gateway's stop failed with it.)
    """
    url = postgres.create_database(f"lockorder_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    store = Store(url)
    try:
        store.migrate()
        store.create_job(job(), ["taobao", "weibo"])
        store.claim_due("A", T0, 30 * SECOND, 10)
        outcomes: dict[str, object] = {}

        def run(name: str, work: Callable[[], object]) -> threading.Thread:
            def target() -> None:
                try:
                    outcomes[name] = work()
                except Exception as exc:
                    outcomes[name] = exc

            thread = threading.Thread(target=target, name=name)
            thread.start()
            return thread

        outcome = TaskUpdate("a" * 32, "weibo", True, 1, b"r", T0)
        with store.engine.connect() as gate:
            gate.execute(
                sa.select(release_tasks.c.job_id)
                .where(release_tasks.c.platform_id == "weibo")
                .with_for_update()
            )
            threads = [run("record", lambda: store.record("A", [outcome], T0 + SECOND))]
            _wait_for_lock_waiters(store.engine, 1)
            threads.append(run("release", lambda: store.release_leases("A", T0 + 2 * SECOND)))
            _wait_for_lock_waiters(store.engine, 2)
            gate.rollback()
        for thread in threads:
            thread.join(30)
        assert outcomes == {"record": {"a" * 32}, "release": 1}
        found = store.get_job("a" * 32)
        assert found is not None
        assert [(t.platform_id, t.state) for t in found[1]] == [
            ("taobao", TASK_PENDING),
            ("weibo", TASK_DONE),
        ]
        assert store.claim_due("B", T0 + 3 * SECOND, 30 * SECOND, 10)[0][0].platform_id == "taobao"
    finally:
        store.close()


def test_concurrent_create_job_across_replicas_makes_one_job(db_url: str) -> None:
    import threading

    stores = [Store(db_url) for _ in range(2)]
    stores[0].migrate()
    results: list[JobRow] = []
    gate = threading.Barrier(2)

    def create(s: Store, job_id: str) -> None:
        gate.wait()
        results.append(s.create_job(job(job_id), ["weibo"]))

    threads = [
        threading.Thread(target=create, args=(s, c * 32)) for s, c in zip(stores, "ab", strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 2 and results[0].job_id == results[1].job_id
    with stores[0].engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(release_jobs)).scalar() == 1
    for s in stores:
        s.close()


def test_sqlite_refuses_a_second_replica_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    first, second = Store(url), Store(url)
    first.lock_single_replica()
    with pytest.raises(FailedPrecondition) as err:
        second.lock_single_replica()
    assert err.value.reason == "DATABASE_IN_USE"
    first.close()
    second.lock_single_replica()  # the first replica is gone: the file is free again
    second.close()


async def test_an_unreachable_database_is_unavailable_to_callers() -> None:
    from numfed.errors import Unavailable
    from numfed.federation import free_ports

    store = Store(f"postgresql+psycopg://numfed@127.0.0.1:{free_ports(1)[0]}/none")
    try:
        with pytest.raises(Unavailable) as err:
            await store.run(store.find_job, "cmcc", "req-1")
        assert err.value.reason == "DATABASE_UNAVAILABLE"
    finally:
        store.close()
