"""Port halves the rules say are refused or replaced are accepted, kept and fanned out.

docs/authority.md promises two limits on what one carrier's lone word costs the federation:

- "A half is accepted only from A or B (NOT_PORT_PARTY), and only while A serves the number
  (PORT_DONOR_NOT_SERVING)"; the gateway.proto comment of PublishEvents names the same reason.
  No code raises PORT_DONOR_NOT_SERVING: `numfed.portability.judge` keeps any half from a party
  as pending, whoever serves the number.
- Pending halves per carrier and number are bounded (MAX_PENDING_HALVES, the newest kept).

Attack: a carrier names itself the recipient of a port from a donor that does not serve the
number (its key covers all of +86, so any number will do), with a new `at` each time. Every such
batch is accepted (PublishEvents answers a seq), stored in the gateway's `port_halves` and in
every platform's, appended to the event log for good and pushed to every platform: up to 8
rows per number at each verifier, for every number of the country, from one member's word, and
a log no one can trim. Nor does the half wait harmlessly: should the named donor ever come to
serve the number, the pre-signed half completes a port the instant it does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from gateway.schema import event_batches, port_halves
from numfed.identity import PeerId, Role
from numfed.portability import MAX_PENDING_HALVES
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.timeutil import to_us
from numfed.v1 import gateway_pb2
from tests.attacks.lying import half, publish, refused, signed_batch

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # served by cmcc, its range holder; never ported


def rows(fed: Federation, table: sa.Table) -> int:
    with fed.gateway.store.engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def test_a_half_whose_donor_does_not_serve_the_number_is_refused(
    federation: Federation,
) -> None:
    """ctcc signs "N moved from cucc to ctcc"; cmcc serves N, so cucc cannot give it away."""
    fed = federation
    assert fed.gateway.portability.carrier_for(N) == "cmcc"
    batches, halves = rows(fed, event_batches), rows(fed, port_halves)
    batch = signed_batch(fed, "ctcc", half(N, "cucc", "ctcc", datetime.now(UTC)))
    answer = await refused(
        fed,
        PeerId(Role.CARRIER, "ctcc"),
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch),
    )
    assert answer == "PERMISSION_DENIED PORT_DONOR_NOT_SERVING"
    assert (rows(fed, event_batches), rows(fed, port_halves)) == (batches, halves)


async def test_a_carrier_keeps_a_bounded_number_of_pending_halves_per_number(
    federation: Federation,
) -> None:
    """cucc, the recipient, asks for N again and again with a new `at`. Each half is plausible
    (cmcc, the donor named, does serve N), so each is taken, but pending halves per carrier and
    number stay bounded, the same at the gateway and at every platform: the newest
    MAX_PENDING_HALVES. (A bound of one would lose history: a round trip A->B->A->B gives a
    carrier two halves of the same direction, and they may arrive before their counterparts.)"""
    fed = federation
    start = datetime.now(UTC)
    sent = MAX_PENDING_HALVES + 4
    for i in range(sent):
        at = start + timedelta(seconds=i)
        await publish(fed, "cucc", signed_batch(fed, "cucc", half(N, "cmcc", "cucc", at)))
    await fed.events_settled()
    with fed.gateway.store.engine.connect() as c:
        kept = sorted(
            c.execute(
                sa.select(port_halves.c.ported_us).where(port_halves.c.signer == "cucc")
            ).scalars()
        )
    at_platforms = {}
    for p, handle in fed.platforms.items():
        with handle.store.engine.connect() as c:
            at_platforms[p] = sorted(h.at_us for h in handle.store.ports.load(c, [N])[N].pending)
    newest = [to_us(start + timedelta(seconds=i)) for i in range(sent - MAX_PENDING_HALVES, sent)]
    assert kept == newest, f"pending at the gateway: {len(kept)}"
    assert all(v == newest for v in at_platforms.values()), at_platforms
    assert fed.gateway.portability.carrier_for(N) == "cmcc"  # none of them moved N
