"""Who serves a number: the numbering plan, then ports both carriers signed (docs/authority.md).

Plain rules with no storage and no I/O. The gateway and every platform keep the state each in
their own database and ask :func:`judge` what one signed batch of lifecycle events may change,
in log order, so that every verifier that applied the same prefix of the event log agrees on
every number's serving carrier.

- A number's serving carrier is its **range holder** (:class:`NumberPlan`, from the signed trust
  bundle) until a port moves it.
- A port from A to B is made of two **halves**: a PORTED event signed by A (the donor) and one
  signed by B (the recipient), with the same number, A, B and moment ``at``. It completes when
  both halves are in *and* A serves the number then; until it completes, A serves the number. A
  half may arrive before the port before it has completed (history arrives in any order), so
  pending halves wait, and completing one port may complete the next.
- Every other lifecycle event comes only from the number's serving carrier at that point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from numfed.errors import PermissionDenied
from numfed.events import EventKind, LifecycleEvent
from numfed.timeutil import to_us
from numfed.trust import TrustBundle

__all__ = [
    "MAX_PENDING_HALVES",
    "Judgement",
    "NumberPlan",
    "NumberState",
    "Port",
    "PortHalf",
    "judge",
    "numbers_of",
    "serving_carrier",
]

MAX_PENDING_HALVES = 8
"""Pending halves kept per (number, signing carrier); a newer one pushes out the oldest, so a
carrier that signs halves nobody completes costs a bounded amount of storage per number."""


@dataclass(frozen=True)
class NumberPlan:
    """The numbering plan from the trust bundle: E.164 prefix -> the block's range holder."""

    ranges: Mapping[str, str] = field(default_factory=dict)
    _lengths: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The lengths of the plan's prefixes, longest first: the only ones worth looking up."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))
        object.__setattr__(self, "_lengths", tuple(sorted({len(p) for p in self.ranges}))[::-1])

    @classmethod
    def from_bundle(cls, bundle: TrustBundle | None) -> NumberPlan:
        return cls(dict(bundle.number_ranges) if bundle is not None else {})

    def range_holder(self, number: str) -> str | None:
        """The carrier holding the longest range that matches ``number``, if any."""
        for end in self._lengths:
            if end <= len(number):
                holder = self.ranges.get(number[:end])
                if holder is not None:
                    return holder
        return None


@dataclass(frozen=True, order=True)
class PortHalf:
    """One carrier's word that a number moved from ``from_carrier`` to ``to_carrier`` at
    ``at_us`` (µs since the epoch, UTC); ``signer`` is the carrier that signed it."""

    at_us: int
    from_carrier: str
    to_carrier: str
    signer: str

    @property
    def port(self) -> tuple[int, str, str]:
        return (self.at_us, self.from_carrier, self.to_carrier)


@dataclass(frozen=True)
class Port:
    """The last port of a number that completed: it now serves ``to_carrier``."""

    at_us: int
    from_carrier: str
    to_carrier: str


@dataclass(frozen=True)
class NumberState:
    """What a verifier holds about one number beyond the plan."""

    port: Port | None = None
    pending: tuple[PortHalf, ...] = ()
    """Halves whose port has not completed, sorted."""


def serving_carrier(number: str, state: NumberState | None, plan: NumberPlan) -> str | None:
    """Who serves ``number``: the recipient of its last completed port, else its range holder."""
    if state is not None and state.port is not None:
        return state.port.to_carrier
    return plan.range_holder(number)


@dataclass(frozen=True)
class Judgement:
    """What a batch changes: the new state of each number it changed, and the ports it
    completed, in order."""

    states: dict[str, NumberState]
    completed: list[tuple[str, Port]]

    @property
    def changed(self) -> bool:
        return bool(self.states)


def _add_half(state: NumberState, half: PortHalf) -> NumberState:
    """``state`` with ``half`` pending, unless it is history or already there."""
    if state.port is not None and half.at_us <= state.port.at_us:
        return state  # the completed port itself, or a port before it: history, no effect
    if half in state.pending:
        return state
    mine = sorted(h for h in state.pending if h.signer == half.signer)
    drop = set(mine[: max(len(mine) + 1 - MAX_PENDING_HALVES, 0)])
    pending = tuple(sorted([*(h for h in state.pending if h not in drop), half]))
    return replace(state, pending=pending)


def _complete(number: str, state: NumberState, plan: NumberPlan) -> tuple[NumberState, list[Port]]:
    """Complete, earliest first, every port whose two halves are in and whose donor serves."""
    done: list[Port] = []
    while True:
        serving = serving_carrier(number, state, plan)
        signers: dict[tuple[int, str, str], set[str]] = {}
        for h in state.pending:
            signers.setdefault(h.port, set()).add(h.signer)
        ready = sorted(p for p, who in signers.items() if who >= {p[1], p[2]} and p[1] == serving)
        if not ready:
            return state, done
        at_us, donor, recipient = ready[0]
        port = Port(at_us, donor, recipient)
        state = NumberState(port, tuple(h for h in state.pending if h.at_us > at_us))
        done.append(port)


def judge(
    signer: str,
    events: Sequence[LifecycleEvent],
    states: Mapping[str, NumberState],
    plan: NumberPlan,
    *,
    live: bool = False,
) -> Judgement:
    """Judge a batch signed by carrier ``signer``, event by event in order.

    ``states`` holds what the verifier knows of the batch's numbers (absent: nothing beyond the
    plan). Returns the new state of every number the batch changes; raises PermissionDenied
    (``NOT_PORT_PARTY``, ``NUMBER_NOT_SERVED``, ``PORT_DONOR_NOT_SERVING``) at the first event
    ``signer`` may not publish, in which case nothing of the batch may be applied.

    ``live`` is the gateway's rule for a carrier publishing now (PublishEvents): a new port half
    is taken only while its donor serves the number, so no carrier can leave pre-signed halves
    for numbers nobody offered it. History (a sync's halves, the event log replayed by a
    platform) may arrive in any order, so there a half waits for the port before it.
    """
    current = dict(states)
    changed: dict[str, NumberState] = {}
    completed: list[tuple[str, Port]] = []
    for e in events:
        state = current.get(e.number, NumberState())
        if e.kind is EventKind.PORTED:
            if signer not in (e.from_carrier, e.to_carrier):
                raise PermissionDenied(
                    "NOT_PORT_PARTY",
                    f"carrier {signer!r} is neither the donor nor the recipient of a port",
                    metadata={"carrier": signer},
                )
            half = PortHalf(to_us(e.at), e.from_carrier, e.to_carrier, signer)
            history = state.port is not None and half.at_us <= state.port.at_us
            if live and not history and serving_carrier(e.number, state, plan) != e.from_carrier:
                raise PermissionDenied(
                    "PORT_DONOR_NOT_SERVING",
                    f"carrier {e.from_carrier!r} does not serve the number it would give away",
                    metadata={"carrier": e.from_carrier},
                )
            new = _add_half(state, half)
            if new is state:
                continue
            new, ports = _complete(e.number, new, plan)
            completed += [(e.number, p) for p in ports]
            current[e.number] = changed[e.number] = new
        elif serving_carrier(e.number, state, plan) != signer:
            raise PermissionDenied(
                "NUMBER_NOT_SERVED",
                f"carrier {signer!r} does not serve a number in the batch",
                metadata={"carrier": signer, "kind": e.kind.name},
            )
    return Judgement(changed, completed)


def numbers_of(batches: Iterable[Sequence[LifecycleEvent]]) -> set[str]:
    """Every number the batches name (what a verifier loads before judging them)."""
    return {e.number for events in batches for e in events}
