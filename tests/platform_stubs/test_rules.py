"""The platform's domain rules on their own: the strict ``bound_at < X`` boundary, selection of
own-tenure bindings by ref, and masked labels and refs that say nothing about the account."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numfed.errors import FailedPrecondition
from platform_stubs.rules import Binding, Masker, Summary, own, prior, select_own, summarize

X = datetime(2021, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
US = timedelta(microseconds=1)
S = timedelta(seconds=1)
MASKER = Masker(b"m" * 32)


def binding(i: int, at: datetime, *, released: datetime | None = None) -> Binding:
    return Binding(i, f"acct{i:06d}", f"nick{i}", "+8613812345678", "ACCOUNT_LOGIN", at, released)


@pytest.mark.parametrize(
    ("offset", "is_prior"),
    [(-S, True), (-US, True), (timedelta(0), False), (US, False), (S, False)],
    ids=["X-1s", "X-1us", "X", "X+1us", "X+1s"],
)
def test_prior_is_strictly_before_x_and_own_is_the_rest(offset: timedelta, is_prior: bool) -> None:
    b = binding(1, X + offset)
    assert (prior([b], X) == [b]) is is_prior
    assert (own([b], X) == [b]) is not is_prior


def test_a_binding_at_exactly_x_belongs_to_the_current_holder() -> None:
    at_x = binding(1, X)
    assert prior([at_x], X) == []
    assert own([at_x], X) == [at_x]


def test_released_bindings_are_neither_prior_nor_own() -> None:
    gone = [binding(1, X - S, released=X + S), binding(2, X + S, released=X + 2 * S)]
    assert prior(gone, X) == []
    assert own(gone, X) == []


def test_select_own_returns_the_picked_bindings_in_the_order_named() -> None:
    bs = [binding(1, X - S), binding(2, X), binding(3, X + S)]
    refs = [MASKER.ref(bs[2]), MASKER.ref(bs[1])]
    assert select_own(bs, refs, X, MASKER) == [bs[2], bs[1]]


@pytest.mark.parametrize(
    "case", ["prior", "released", "unknown", "other_secret"], ids=lambda c: str(c)
)
def test_select_own_refuses_any_ref_that_is_not_an_active_own_binding(case: str) -> None:
    mine, before, released = binding(1, X), binding(2, X - US), binding(3, X + S, released=X)
    bs = [mine, before, released]
    bad = {
        "prior": MASKER.ref(before),
        "released": MASKER.ref(released),
        "unknown": "b_" + "0" * 24,
        "other_secret": Masker(b"o" * 32).ref(mine),
    }[case]
    with pytest.raises(FailedPrecondition) as e:
        select_own(bs, [MASKER.ref(mine), bad], X, MASKER)
    assert e.value.reason == "UNKNOWN_BINDING_REF"
    assert e.value.code == "FAILED_PRECONDITION"


def test_masker_needs_a_real_secret() -> None:
    with pytest.raises(ValueError):
        Masker(b"short")


def test_refs_are_keyed_stable_and_distinct() -> None:
    a, b = binding(41, X), binding(42, X)
    assert MASKER.ref(a) == MASKER.ref(replace(a, account_id="other", bound_at=X - S))
    assert MASKER.ref(a) != MASKER.ref(b)
    assert MASKER.ref(a) != Masker(b"n" * 32).ref(a)  # unguessable without the secret
    assert re.fullmatch(r"b_[0-9a-f]{24}", MASKER.ref(a))  # opaque: not the raw binding id


account_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=24)
nicknames = st.text(alphabet="王李张小阿老伟芳娜abcxyz0123456789_", min_size=2, max_size=16)
numbers = st.from_regex(r"\+861[3-9][0-9]{9}", fullmatch=True)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 2**62), account_ids, nicknames, numbers, moments, nicknames, numbers, moments)
def test_a_masked_label_depends_only_on_a_keyed_hash_of_the_account_and_the_year(
    binding_id: int,
    account_id: str,
    nickname: str,
    number: str,
    bound_at: datetime,
    other_nick: str,
    other_number: str,
    other_time: datetime,
) -> None:
    b = Binding(binding_id, account_id, nickname, number, "ACCOUNT_LOGIN", bound_at)
    label, ref = MASKER.label(b), MASKER.ref(b)
    for secret in (account_id, nickname, number, number.removeprefix("+86"), str(binding_id)):
        # Short digit strings turn up in a hex digest (or the year) by chance: 4 digits in a
        # 24-digit ref about once in 3,000 examples. From 10 characters on, never in practice.
        if len(secret) >= 10:
            assert secret not in label
            assert secret not in ref
    # Nothing but the keyed account hash and the year goes into the label, so the nickname
    # and the number cannot leak through it whatever their value.
    same_year = datetime(bound_at.year, 1, 1, tzinfo=UTC) + timedelta(
        seconds=other_time.timestamp() % (365 * 86400)
    )
    twin = replace(b, binding_id=binding_id + 1, nickname=other_nick, number=other_number)
    assert MASKER.label(replace(twin, bound_at=same_year)) == label
    assert label.endswith(f"since {bound_at.year}")
    assert label.startswith("account ***") and len(label.split()[1]) == 6


def label(i: int, text: str, at: datetime) -> Binding:
    return Binding(i, f"user{i:06d}", text, "+8613812345678", "LABEL", at)


def test_identical_caller_id_labels_are_one_summary_whoever_set_them() -> None:
    """A caller-ID label is masked by its text, not its author: 1,000 users' "harassment"
    labels of one year are one summary with count 1,000, and the text never leaves."""
    y2020, y2021 = datetime(2020, 5, 1, tzinfo=UTC), datetime(2021, 5, 1, tzinfo=UTC)
    found = [label(i, "骚扰电话 (harassment)", y2020 + i * S) for i in range(1000)]
    found += [label(1000 + i, "快递 (courier)", y2020) for i in range(3)]
    found += [label(2000, "骚扰电话 (harassment)", y2021)]
    summaries = summarize(found, MASKER, with_refs=False)
    assert [s.count for s in summaries] == [1000, 3, 1]
    assert len({s.masked_label for s in summaries}) == 3
    assert all(s.masked_label.startswith("caller-ID label ***") for s in summaries)
    assert not any("harassment" in s.masked_label or "courier" in s.masked_label for s in summaries)
    assert all(s.binding_ref == "" for s in summaries)


def test_accounts_are_summarized_each_on_its_own_and_own_bindings_keep_their_refs() -> None:
    found = [binding(i, X - S) for i in range(5)]
    prior_summaries = summarize(found, MASKER, with_refs=False)
    assert sum(s.count for s in prior_summaries) == 5
    assert {s.masked_label for s in prior_summaries} == {MASKER.label(b) for b in found}
    mine = summarize(found, MASKER, with_refs=True)
    assert mine == [Summary("ACCOUNT_LOGIN", MASKER.label(b), 1, MASKER.ref(b)) for b in found]
