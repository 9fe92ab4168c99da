"""Who serves a number: the plan, then ports that both donor and recipient signed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numfed.errors import InvalidArgument, PermissionDenied
from numfed.events import EventKind, LifecycleEvent
from numfed.portability import (
    MAX_PENDING_HALVES,
    NumberPlan,
    NumberState,
    Port,
    judge,
    serving_carrier,
)
from numfed.timeutil import to_us

T0 = datetime(2025, 1, 1, tzinfo=UTC)
N = "+8613812345678"  # cmcc's range
M = "+8618611112222"  # cucc's range
PLAN = NumberPlan({"+86138": "cmcc", "+86186": "cucc", "+86189": "ctcc", "+8613819": "ctcc"})


def port(number: str, donor: str, recipient: str, at: datetime = T0) -> LifecycleEvent:
    return LifecycleEvent.new(
        number, EventKind.PORTED, at, from_carrier=donor, to_carrier=recipient
    )


def deactivated(number: str) -> LifecycleEvent:
    return LifecycleEvent.new(number, EventKind.DEACTIVATED, T0)


class Ledger:
    """A verifier's state, kept in memory as the gateway and platforms keep it in SQL."""

    def __init__(self) -> None:
        self.states: dict[str, NumberState] = {}

    def publish(self, signer: str, *events: LifecycleEvent) -> None:
        numbers = {e.number for e in events}
        got = judge(signer, events, {n: self.states[n] for n in numbers if n in self.states}, PLAN)
        self.states.update(got.states)

    def serving(self, number: str) -> str | None:
        return serving_carrier(number, self.states.get(number), PLAN)


def test_the_range_holder_serves_a_number_by_the_longest_prefix() -> None:
    assert PLAN.range_holder(N) == "cmcc"
    assert PLAN.range_holder("+8613819999999") == "ctcc"  # +8613819 is longer than +86138
    assert PLAN.range_holder("+8613712345678") is None  # in no range: nobody serves it
    assert NumberPlan.from_bundle(None).range_holder(N) is None
    assert PLAN.range_holder("+86") is None  # shorter than every prefix
    assert PLAN.range_holder("+86138") == "cmcc"  # the prefix itself


def test_the_plan_does_not_follow_the_mapping_it_was_built_from() -> None:
    ranges = {"+86138": "cmcc"}
    plan = NumberPlan(ranges)
    ranges["+8613819"] = "ctcc"
    assert plan.range_holder("+8613819999999") == "cmcc"


def test_the_recipients_word_alone_moves_nothing() -> None:
    ledger = Ledger()
    ledger.publish("cucc", port(N, "cmcc", "cucc"))
    assert ledger.serving(N) == "cmcc"
    with pytest.raises(PermissionDenied) as e:
        ledger.publish("cucc", deactivated(N))
    assert e.value.reason == "NUMBER_NOT_SERVED"


def test_the_donors_word_alone_moves_nothing() -> None:
    ledger = Ledger()
    ledger.publish("cmcc", port(N, "cmcc", "cucc"))
    assert ledger.serving(N) == "cmcc"


@pytest.mark.parametrize("first", ["cmcc", "cucc"])
def test_both_halves_move_the_number_in_either_order(first: str) -> None:
    ledger = Ledger()
    second = "cucc" if first == "cmcc" else "cmcc"
    ledger.publish(first, port(N, "cmcc", "cucc"))
    ledger.publish(second, port(N, "cmcc", "cucc"))
    assert ledger.serving(N) == "cucc"
    assert ledger.states[N] == NumberState(Port(to_us(T0), "cmcc", "cucc"), ())
    ledger.publish("cucc", deactivated(N))  # the new serving carrier speaks for it now
    with pytest.raises(PermissionDenied):
        ledger.publish("cmcc", deactivated(N))


def test_halves_that_disagree_do_not_make_a_port() -> None:
    ledger = Ledger()
    ledger.publish("cmcc", port(N, "cmcc", "cucc", T0))
    ledger.publish("cucc", port(N, "cmcc", "cucc", T0 + timedelta(seconds=1)))  # another moment
    ledger.publish("ctcc", port(N, "cmcc", "ctcc", T0))  # another recipient
    assert ledger.serving(N) == "cmcc"


def test_a_third_carrier_cannot_sign_a_half() -> None:
    ledger = Ledger()
    with pytest.raises(PermissionDenied) as e:
        ledger.publish("ctcc", port(N, "cmcc", "cucc"))
    assert e.value.reason == "NOT_PORT_PARTY"
    assert ledger.states == {}


def test_a_port_to_itself_is_malformed() -> None:
    with pytest.raises(InvalidArgument) as e:
        port(N, "cmcc", "cmcc")
    assert e.value.reason == "MALFORMED_EVENT"


def test_a_refused_event_refuses_the_whole_batch() -> None:
    ledger = Ledger()
    ledger.publish("cmcc", port(N, "cmcc", "cucc"))
    before = dict(ledger.states)
    with pytest.raises(PermissionDenied):
        ledger.publish(
            "cucc", port(N, "cmcc", "cucc"), deactivated(M), deactivated("+8613912345678")
        )
    assert ledger.states == before  # the completing half was not kept either


def test_a_batch_may_complete_a_port_then_speak_as_the_new_carrier() -> None:
    ledger = Ledger()
    ledger.publish("cmcc", port(N, "cmcc", "cucc"))
    ledger.publish("cucc", port(N, "cmcc", "cucc"), deactivated(N))
    assert ledger.serving(N) == "cucc"


def test_history_arriving_in_any_order_converges() -> None:
    """cmcc -> cucc in 2020, then cucc -> ctcc in 2023; each carrier sends its halves once."""
    a = port(N, "cmcc", "cucc", T0)
    b = port(N, "cucc", "ctcc", T0 + timedelta(days=900))
    ledger = Ledger()
    ledger.publish("ctcc", b)  # the later port's recipient first: donor cucc does not serve yet
    ledger.publish("cucc", a, b)  # cucc's two halves
    assert ledger.serving(N) == "cmcc"  # a still lacks the donor's half
    ledger.publish("cmcc", a)
    assert ledger.serving(N) == "ctcc"  # a completed, which let b complete
    ledger.publish("cmcc", a)  # history sent again changes nothing
    assert ledger.serving(N) == "ctcc"
    assert ledger.states[N].pending == ()


def test_pending_halves_per_signer_are_bounded() -> None:
    ledger = Ledger()
    for i in range(3 * MAX_PENDING_HALVES):
        ledger.publish("cucc", port(N, "cmcc", "cucc", T0 + timedelta(seconds=i)))
    assert len(ledger.states[N].pending) == MAX_PENDING_HALVES


CARRIERS = ("cmcc", "cucc", "ctcc")
NUMBERS = (N, M)
_at = st.integers(0, 3).map(lambda d: T0 + timedelta(days=d))
_port = st.builds(
    lambda n, pair, at: port(n, pair[0], pair[1], at),
    st.sampled_from(NUMBERS),
    st.permutations(CARRIERS).map(lambda c: (c[0], c[1])),
    _at,
)
_other = st.builds(
    lambda n, kind: LifecycleEvent.new(n, kind, T0),
    st.sampled_from(NUMBERS),
    st.just(EventKind.DEACTIVATED),
)
_batch = st.tuples(
    st.sampled_from(CARRIERS), st.lists(st.one_of(_port, _port, _other), min_size=1, max_size=4)
)


@given(st.lists(_batch, max_size=25))
def test_a_number_moves_only_when_donor_and_recipient_have_both_signed(
    batches: list[tuple[str, list[LifecycleEvent]]],
) -> None:
    """For any sequence of batches from any member, a number's serving carrier changes only
    from A to B, and only once A and B have each signed that port and A served the number."""
    ledger = Ledger()
    signed: set[tuple[str, str, str, int, str]] = set()  # accepted halves: number, from, to, at, by
    for signer, events in batches:
        before = {n: ledger.serving(n) for n in NUMBERS}
        try:
            ledger.publish(signer, *events)
        except PermissionDenied:
            assert {n: ledger.serving(n) for n in NUMBERS} == before  # refused: nothing moved
            continue
        for e in events:
            if e.kind is EventKind.PORTED:
                signed.add((e.number, e.from_carrier, e.to_carrier, to_us(e.at), signer))
            else:
                assert before[e.number] == signer or any(
                    e2.kind is EventKind.PORTED and e2.number == e.number for e2 in events
                )
        for n in NUMBERS:
            after = ledger.serving(n)
            if after != before[n]:
                state = ledger.states[n]
                assert state.port is not None and state.port.to_carrier == after
                p = state.port
                assert (n, p.from_carrier, p.to_carrier, p.at_us, p.from_carrier) in signed
                assert (n, p.from_carrier, p.to_carrier, p.at_us, p.to_carrier) in signed


def test_a_live_half_is_taken_only_while_its_donor_serves_the_number() -> None:
    """PublishEvents judges halves as published now: nobody leaves pre-signed halves for a
    number its named donor does not serve. History (a sync, a platform replaying the log) may
    still arrive in any order."""
    with pytest.raises(PermissionDenied) as e:
        judge("ctcc", [port(N, "cucc", "ctcc")], {}, PLAN, live=True)
    assert e.value.reason == "PORT_DONOR_NOT_SERVING"
    assert judge("ctcc", [port(N, "cucc", "ctcc")], {}, PLAN).changed  # as history: pending
    done = judge("cmcc", [port(N, "cmcc", "cucc")], {}, PLAN, live=True)
    done = judge("cucc", [port(N, "cmcc", "cucc")], done.states, PLAN, live=True)
    assert serving_carrier(N, done.states[N], PLAN) == "cucc"
    again = judge("cmcc", [port(N, "cmcc", "cucc")], done.states, PLAN, live=True)
    assert not again.changed  # a repeat of the completed port is harmless, even live
