"""The platform store on a real SQLite file: releases applied once per claim_id in one
transaction, accounts never deleted, seeding once, timestamps exact to the microsecond."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from numfed.scenario import demo_scenario
from platform_stubs.reference import seed_from_scenario
from platform_stubs.rules import Binding, prior
from platform_stubs.store import PlatformStore, Selector

N = "+8613812345678"
OTHER = "+8613912345678"
X = datetime(2021, 3, 4, 5, 6, 7, 123457, tzinfo=UTC)
US = timedelta(microseconds=1)
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PlatformStore]:
    s = PlatformStore(tmp_path / "platform.db")
    s.seed(
        [
            ("a-old", "老王1", N, "ACCOUNT_LOGIN", X - timedelta(days=400)),
            ("a-just-before", "阿李2", N, "PAYMENT", X - US),
            ("a-at-x", "小张3", N, "ACCOUNT_LOGIN", X),
            ("a-after", "小刘4", N, "ACCOUNT_RECOVERY", X + US),
            ("a-other", "老陈5", OTHER, "ACCOUNT_LOGIN", X - timedelta(days=1)),
        ]
    )
    try:
        yield s
    finally:
        s.close()


def release_prior(x: datetime, result: bytes = b"first") -> Selector:
    def select(bs: list[Binding]) -> tuple[list[int], bytes]:
        return [b.binding_id for b in prior(bs, x)], result

    return select


def active_accounts(store: PlatformStore, number: str) -> set[str]:
    return {b.account_id for b in store.bindings_for([number])[number] if b.active}


def test_bound_at_round_trips_to_the_microsecond(store: PlatformStore) -> None:
    got = {b.account_id: b.bound_at for b in store.bindings_for([N])[N]}
    assert got["a-just-before"] == X - US
    assert got["a-at-x"] == X
    assert got["a-after"] == X + US
    assert all(t.tzinfo is not None for t in got.values())


def test_bindings_for_answers_each_number_asked_even_unknown_ones(store: PlatformStore) -> None:
    got = store.bindings_for([N, "+8618600000000"])
    assert len(got[N]) == 4
    assert got["+8618600000000"] == []
    assert store.bindings_for([]) == {}


def test_release_prior_releases_strictly_before_x_and_keeps_every_account(
    store: PlatformStore,
) -> None:
    [done] = store.apply_releases([(b"c" * 16, N, release_prior(X))], NOW)
    assert not done.replayed and done.result == b"first"
    assert active_accounts(store, N) == {"a-at-x", "a-after"}
    assert active_accounts(store, OTHER) == {"a-other"}  # another number is untouched
    released = {b.account_id: b.released_at for b in store.bindings_for([N])[N]}
    assert released["a-old"] == NOW and released["a-just-before"] == NOW
    counts = store.counts()
    assert counts["accounts"] == 5 and counts["bindings"] == 5 and counts["released"] == 2


def test_a_replayed_claim_returns_the_first_result_and_changes_nothing(
    store: PlatformStore,
) -> None:
    claim_id = b"r" * 16
    store.apply_releases([(claim_id, N, release_prior(X, b"first"))], NOW)
    before = store.bindings_for([N, OTHER])
    # The replay would select more (a later X) and store another result; neither happens.
    later = NOW + timedelta(hours=1)
    [again] = store.apply_releases([(claim_id, N, release_prior(X + 2 * US, b"second"))], later)
    assert again.replayed and again.result == b"first"
    assert store.bindings_for([N, OTHER]) == before  # released_at not moved, nothing new
    counts = store.counts()
    assert counts["applied"] == 1 and counts["replays"] == 1 and counts["released"] == 2


def test_the_same_claim_twice_in_one_batch_is_applied_once(store: PlatformStore) -> None:
    claim_id = b"d" * 16
    first, second = store.apply_releases(
        [(claim_id, N, release_prior(X)), (claim_id, N, release_prior(X + US, b"other"))], NOW
    )
    assert (first.replayed, second.replayed) == (False, True)
    assert second.result == first.result == b"first"
    assert active_accounts(store, N) == {"a-at-x", "a-after"}


def test_a_later_claim_never_moves_an_earlier_released_at(store: PlatformStore) -> None:
    store.apply_releases([(b"1" * 16, N, release_prior(X))], NOW)
    store.apply_releases([(b"2" * 16, N, release_prior(X))], NOW + timedelta(days=1))
    released = {b.account_id: b.released_at for b in store.bindings_for([N])[N]}
    assert released["a-old"] == NOW


def test_a_failing_batch_applies_nothing(store: PlatformStore) -> None:
    def broken(bs: list[Binding]) -> tuple[list[int], bytes]:
        raise RuntimeError("selector failed")

    with pytest.raises(RuntimeError):
        store.apply_releases([(b"a" * 16, N, release_prior(X)), (b"b" * 16, N, broken)], NOW)
    assert store.counts()["released"] == 0
    assert store.counts()["applied"] == 0
    [retry] = store.apply_releases([(b"a" * 16, N, release_prior(X))], NOW)
    assert not retry.replayed  # the rolled-back claim was not recorded as applied


def test_applied_releases_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    s = PlatformStore(path)
    s.seed([("a", "n", N, "ACCOUNT_LOGIN", X - US)])
    s.apply_releases([(b"k" * 16, N, release_prior(X))], NOW)
    s.close()
    s = PlatformStore(path)
    try:
        [again] = s.apply_releases([(b"k" * 16, N, release_prior(X, b"late"))], NOW)
        assert again.replayed and again.result == b"first"
    finally:
        s.close()


def test_seeding_from_the_scenario_happens_once(tmp_path: Path) -> None:
    expected = demo_scenario().bindings_on("weibo")
    s = PlatformStore(tmp_path / "w.db")
    try:
        assert seed_from_scenario(s, "weibo") == len(expected) > 0
        assert seed_from_scenario(s, "weibo") == 0
        assert s.counts()["accounts"] == len(expected)
        assert s.counts()["bindings"] == len(expected)
        some = expected[0]
        [found] = [
            b for b in s.bindings_for([some.number])[some.number] if b.account_id == some.account_id
        ]
        assert (found.nickname, found.kind, found.bound_at) == (
            some.nickname,
            some.kind,
            some.bound_at,
        )
    finally:
        s.close()


def test_the_database_is_in_wal_mode(store: PlatformStore) -> None:
    with store.engine.connect() as c:
        assert c.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"


async def test_database_work_runs_off_the_event_loop(store: PlatformStore) -> None:
    loop_thread = threading.current_thread()
    worker = await store.run(threading.current_thread)
    assert worker is not loop_thread
    assert worker.name.startswith("platform-db")
    assert len((await store.run(store.bindings_for, [N]))[N]) == 4


def test_replay_releases_answers_applied_claims_only_and_applies_nothing(
    store: PlatformStore,
) -> None:
    store.apply_releases([(b"x" * 16, N, release_prior(X))], NOW)
    before = store.bindings_for([N, OTHER])
    got = store.replay_releases([b"x" * 16, b"y" * 16, b"x" * 16])
    assert got == {b"x" * 16: b"first"}  # the never-applied claim is absent
    assert store.bindings_for([N, OTHER]) == before
    assert store.counts()["applied"] == 1 and store.counts()["replays"] == 1
    assert store.replay_releases([]) == {}
