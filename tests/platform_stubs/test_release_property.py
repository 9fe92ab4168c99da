"""Invariant 1 as a property: after a prior-holder release, exactly the bindings made before X
are gone, every account remains, and a port never moves X."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numfed.errors import FailedPrecondition
from numfed.history import EventKind, NumberHistory
from platform_stubs.rules import Binding, Masker, own, prior, select_own
from tests.helpers.strategies import binding_times, histories, now_after

MASKER = Masker(b"k" * 32)


def release_prior(bindings: list[Binding], x: datetime, at: datetime) -> list[Binding]:
    """What a platform's store does with a RELEASE_PRIOR claim of tenure start ``x``."""
    chosen = {b.binding_id for b in prior(bindings, x)}
    return [replace(b, released_at=at) if b.binding_id in chosen else b for b in bindings]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[NumberHistory, list[Binding]]:
    history = draw(histories(end_held=True))
    times = draw(binding_times(history))
    bindings = [
        Binding(i, f"acct{i}", f"nick{i}", history.number, "ACCOUNT_LOGIN", t)
        for i, t in enumerate(times)
    ]
    return history, bindings


@settings(max_examples=2000, deadline=None)
@given(worlds())
def test_release_prior_removes_exactly_the_bindings_before_x(
    world: tuple[NumberHistory, list[Binding]],
) -> None:
    history, bindings = world
    now = now_after(history)
    x = history.tenure_start(now)
    assignments = [e for e in history.events if e.kind is EventKind.ASSIGNED]
    assert x == assignments[-1].at  # ports after the last assignment never move X
    after = release_prior(bindings, x, now)
    assert {b.binding_id for b in after if not b.active} == {
        b.binding_id for b in bindings if b.bound_at < x
    }
    assert {b.binding_id for b in after if b.active} == {
        b.binding_id for b in bindings if b.bound_at >= x
    }
    assert {b.account_id for b in after} == {b.account_id for b in bindings}  # accounts remain
    assert prior(after, x) == []  # a second release finds nothing
    assert own(after, x) == own(bindings, x)


@settings(max_examples=300, deadline=None)
@given(worlds(), st.data())
def test_own_release_takes_only_selected_own_bindings(
    world: tuple[NumberHistory, list[Binding]], data: st.DataObject
) -> None:
    history, bindings = world
    x = history.tenure_start(now_after(history))
    mine = own(bindings, x)
    picked = data.draw(st.lists(st.sampled_from(mine), unique=True) if mine else st.just([]))
    chosen = select_own(bindings, [MASKER.ref(b) for b in picked], x, MASKER)
    assert chosen == picked
    for b in prior(bindings, x):  # a prior binding can never be selected as one's own
        with pytest.raises(FailedPrecondition) as e:
            select_own(bindings, [MASKER.ref(b)], x, MASKER)
        assert e.value.reason == "UNKNOWN_BINDING_REF"


def test_masked_labels_leak_nothing() -> None:
    b = Binding(
        7,
        "wb9876543210",
        "王小1",
        "+8613812345678",
        "ACCOUNT_LOGIN",
        datetime(2020, 1, 1, tzinfo=UTC),
    )
    label, ref = MASKER.label(b), MASKER.ref(b)
    for secret in (b.account_id, b.nickname, b.number, "9876", "13812345678"):
        assert secret not in label and secret not in ref
    assert "2020" in label
