"""Invariant 1 through the real store: after a prior-holder release, exactly the bindings with
``bound_at < X`` are released, every account remains, and a replay changes nothing."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from platform_stubs.rules import Binding, prior
from platform_stubs.store import PlatformStore

N = "+8613812345678"
X = datetime(2020, 6, 1, 8, 30, tzinfo=UTC)
NOW = datetime(2026, 11, 1, tzinfo=UTC)
NEAR = [-1_000_000, -1, 0, 1, 1_000_000]
"""Offsets from X in microseconds that always deserve a try: X ± 1 s and X ± 1 µs."""

offsets = st.one_of(
    st.sampled_from(NEAR),
    st.integers(-(10**15), 10**14),  # about 30 years before to 3 years after X
)


def select_prior(bs: list[Binding]) -> tuple[list[int], bytes]:
    return [b.binding_id for b in prior(bs, X)], b"result"


@settings(max_examples=200, deadline=None)
@given(st.lists(offsets, min_size=0, max_size=12), st.lists(offsets, max_size=3))
def test_release_prior_releases_exactly_the_bindings_before_x(
    mine: list[int], elsewhere: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = PlatformStore(Path(d) / "p.db")
        try:
            rows = [
                (f"acct{i}", f"nick{i}", N, "ACCOUNT_LOGIN", X + timedelta(microseconds=o))
                for i, o in enumerate(mine)
            ] + [
                (f"other{i}", f"o{i}", "+8613912345678", "PAYMENT", X + timedelta(microseconds=o))
                for i, o in enumerate(elsewhere)
            ]
            store.seed(rows)
            [first] = store.apply_releases([(b"c" * 16, N, select_prior)], NOW)
            after = store.bindings_for([N])[N]
            released = {b.account_id for b in after if not b.active}
            assert released == {f"acct{i}" for i, o in enumerate(mine) if o < 0}
            assert all(b.released_at == NOW for b in after if not b.active)
            assert store.counts()["accounts"] == len(rows)  # no account is ever deleted
            assert store.counts()["released"] == len(released)  # other numbers untouched

            [again] = store.apply_releases([(b"c" * 16, N, select_prior)], NOW + NOW.resolution)
            assert (first.replayed, again.replayed) == (False, True)
            assert store.bindings_for([N])[N] == after
        finally:
            store.close()
