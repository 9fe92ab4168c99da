"""Idle event pushers share one read of the log's head (SQLite and PostgreSQL): many platforms
with nothing to send cost one query a second, and an append by this replica is seen at once,
one by another replica within the interval."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.eventlog import EventLog
from gateway.pusher import LogHead
from gateway.store import Store

T0 = 1_800_000_000_000_000


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


class Counted(EventLog):
    def __init__(self, store: Store) -> None:
        super().__init__(store.engine)
        self.reads = 0

    def head(self) -> int:
        self.reads += 1
        return super().head()


async def test_many_pushers_asking_at_once_share_one_read(store: Store) -> None:
    log = Counted(store)
    head = LogHead(store, log, interval=60.0)
    assert await asyncio.gather(*(head.seq() for _ in range(1000))) == [0] * 1000
    assert log.reads == 1
    assert await head.seq() == 0 and log.reads == 1  # fresh for the interval


async def test_an_append_here_is_seen_at_once_one_elsewhere_after_the_interval(
    store: Store,
) -> None:
    log = Counted(store)
    head = LogHead(store, log, interval=60.0)
    assert await head.seq() == 0
    log.append("cmcc", b"batch", 1, T0)  # another replica's append: not seen within the interval
    assert await head.seq() == 0 and log.reads == 1
    head.changed()  # this replica's append
    assert await head.seq() == 1 and log.reads == 2
    stale = LogHead(store, log, interval=0.0)  # the interval over at once
    log.append("cmcc", b"batch", 1, T0)
    assert await stale.seq() == 2


async def test_a_change_during_a_read_makes_the_next_ask_read_again(store: Store) -> None:
    log = Counted(store)
    head = LogHead(store, log, interval=60.0)
    first = asyncio.ensure_future(head.seq())  # its read starts before the append
    await asyncio.sleep(0)
    log.append("cmcc", b"batch", 1, T0)
    head.changed()
    assert await head.seq() == 1  # a read of its own, not the one in flight
    await first
    assert await head.seq() == 1
