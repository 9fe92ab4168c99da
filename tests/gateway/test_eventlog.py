"""The event log on SQLite and PostgreSQL: ordered appends, forward-only cursors, push leases."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from gateway.audit import AuditRecord, read_chain
from gateway.eventlog import EventLog
from gateway.store import Store
from numfed.pgtemp import TempPostgres

T0 = 1_800_000_000_000_000
SECOND = 1_000_000


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def test_cursor_moves_forward_only(store: Store) -> None:
    log = EventLog(store.engine)
    for i in range(3):
        assert log.append("cmcc", b"batch%d" % i, 1, T0) == i + 1
    assert log.ack("weibo", 2, T0, delivered=3) == 2
    assert log.ack("weibo", 1, T0) == 2  # never back
    assert [s for s, _ in log.after(log.cursor("weibo"), 10)] == [3]


def test_one_replica_at_a_time_pushes_to_a_platform(store: Store) -> None:
    log = EventLog(store.engine)
    assert log.lease("weibo", "A", T0, 10 * SECOND)
    assert not log.lease("weibo", "B", T0 + SECOND, 10 * SECOND)
    assert log.lease("weibo", "A", T0 + 5 * SECOND, 10 * SECOND)  # renewal
    assert not log.lease("weibo", "B", T0 + 14 * SECOND, 10 * SECOND)
    assert log.lease("weibo", "B", T0 + 16 * SECOND, 10 * SECOND)  # A went quiet
    assert log.lease("taobao", "A", T0, 10 * SECOND)  # per platform
    log.unlease("B")
    assert log.lease("weibo", "C", T0 + 17 * SECOND, 10 * SECOND)


def test_concurrent_appends_and_audit_from_replicas_stay_ordered_and_chained(
    postgres: TempPostgres,
) -> None:
    """Three replicas on one PostgreSQL (SQLite serves one replica only)."""
    url = postgres.create_database(f"evlog_{os.getpid()}")
    stores = [Store(url) for _ in range(3)]
    stores[0].migrate()
    seqs: list[int] = []
    gate = threading.Barrier(3)

    def work(s: Store, name: str) -> None:
        from gateway.audit import append

        log = EventLog(s.engine)
        gate.wait()
        for i in range(20):
            seqs.append(log.append(name, b"x", 1, T0 + i))
            with s.engine.begin() as conn:
                append(conn, [AuditRecord(T0 + i, "EVENTS_PUBLISHED", name)])

    threads = [threading.Thread(target=work, args=(s, f"r{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 61))
    report = read_chain(stores[0].engine)
    assert report.ok and report.entries == 60
    for s in stores:
        s.close()
