"""Times in signed event batches are believed whatever they say.

A tenure claim whose tenure_start follows its issued_at is MALFORMED_CLAIM, and one issued in the
future is CLAIM_FROM_FUTURE (numfed/claims.py). An event batch has no such check: its issued_at,
each event's `at`, a PENDING_RELEASE's as_of and a REASSIGNED's tenure_start may lie anywhere in
the years 1 to 9999 (numfed/events.py checks only that they are UTC).

Impact, by the rules that compare those times:

- A port is ordered by its `at`: a half at or before the number's last completed port is
  "history, no effect" (numfed/portability.py::_add_half). Two carriers that sign a port dated in
  the far future (a colluding pair, or one carrier's clock gone wrong that the other copies)
  freeze the number: every later port, signed by both parties and dated now, is history. It is
  still accepted: PublishEvents answers a seq, logs the batch and fans it out, so the honest
  carriers believe the port went through while no verifier moves the number.
- PENDING_RELEASE(as_of) releases the bindings made before as_of "so a late event never hits a
  new holder"; an as_of after the batch was signed voids that: a platform that applies it late
  (it was down, or joins later) releases the bindings the next holder made meanwhile.
- REASSIGNED(tenure_start) in the future marks stale the bindings the new holder makes until then.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from numfed.events import EventKind, LifecycleEvent
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.v1 import gateway_pb2
from tests.attacks.lying import half, publish, refused, serving_at_platforms, signed_batch

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # served by cmcc, its range holder
FAR = datetime(9000, 1, 1, tzinfo=UTC)


async def test_a_port_dated_in_the_far_future_does_not_freeze_the_number(
    federation: Federation,
) -> None:
    """cmcc and cucc sign N's port at year 9000. Later cucc and ctcc both sign a real port of N,
    dated now: it must move N to ctcc (or the year-9000 port must have been refused)."""
    fed = federation
    for carrier in ("cmcc", "cucc"):
        batch = signed_batch(fed, carrier, half(N, "cmcc", "cucc", FAR))
        # Refusing the half dated ahead is one safe outcome; the port below shows the other.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await publish(fed, carrier, batch)
    now = datetime.now(UTC)
    donor = fed.gateway.portability.carrier_for(N)
    assert donor is not None
    for carrier in (donor, "ctcc"):
        await publish(fed, carrier, signed_batch(fed, carrier, half(N, donor, "ctcc", now)))
    await fed.events_settled()
    assert fed.gateway.portability.carrier_for(N) == "ctcc", (
        f"a port signed by both {donor} and ctcc now was accepted and had no effect: N stays "
        f"with {fed.gateway.portability.carrier_for(N)} behind a port dated year 9000"
    )
    assert set(serving_at_platforms(fed, N).values()) == {"ctcc"}


def _events(now: datetime) -> dict[str, tuple[LifecycleEvent, datetime]]:
    """(event, batch issued_at) pairs whose times cannot be true when the batch is signed."""
    later = now + timedelta(days=3650)
    soon = now + timedelta(days=30)
    return {
        "as_of_after_signing": (
            LifecycleEvent.new(N, EventKind.PENDING_RELEASE, now, as_of=later),
            now,
        ),
        "tenure_start_after_signing": (
            LifecycleEvent.new(N, EventKind.REASSIGNED, now, tenure_start=later),
            now,
        ),
        "at_after_signing": (LifecycleEvent.new(N, EventKind.DEACTIVATED, later), now),
        # Within the signing key's window (a year), so only the batch's own time is wrong.
        "batch_from_the_future": (LifecycleEvent.new(N, EventKind.DEACTIVATED, soon), soon),
    }


@pytest.mark.parametrize("case", sorted(_events(datetime.now(UTC))))
async def test_an_event_dated_after_its_batch_was_signed_is_refused(
    federation: Federation, case: str
) -> None:
    """cmcc, which serves N, signs an event whose time lies ten years after the batch's
    issued_at (or a batch issued a month from now). A claim with the same lie is refused;
    the batch must be refused too (INVALID_ARGUMENT), and nothing logged."""
    fed = federation
    event, issued_at = _events(datetime.now(UTC))[case]
    head = await fed.gateway.store.run(fed.gateway.events.head)
    batch = signed_batch(fed, "cmcc", event, now=issued_at)
    answer = await refused(
        fed,
        PeerId(Role.CARRIER, "cmcc"),
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch),
    )
    assert answer.startswith("INVALID_ARGUMENT") or answer.startswith("UNAUTHENTICATED"), answer
    assert await fed.gateway.store.run(fed.gateway.events.head) == head
