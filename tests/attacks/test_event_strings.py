"""A PORTED event's carrier ids are taken as any string.

numfed/events.py checks that from_carrier and to_carrier are set and differ, nothing more: not
the member id pattern every other carrier id in numfed is held to (`[a-z0-9_-]{1,32}`,
numfed/identity.py), nor their length. The donor may name as recipient "cucc\\n", "CUCC",
fullwidth "ｃｕｃｃ", a NUL, or 40 characters. Such a half can never complete (no carrier signs
as that id), yet the gateway accepts it, stores it in `port_halves` (a VARCHAR(32) column) and
logs it for every platform; on PostgreSQL an overlong or NUL-bearing id is not a precise
INVALID_ARGUMENT but the database's own failure, surfacing as an INTERNAL/UNKNOWN error.

Bad input should get a precise error and change nothing (invariant 6): MALFORMED_EVENT.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from gateway.schema import port_halves
from gateway.server import Gateway
from numfed.config import load_gateway_config
from numfed.events import LifecycleEvent
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from numfed.v1 import gateway_pb2
from tests.attacks.lying import half, refused, signed_batch

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # served by cmcc

BAD_IDS = {
    "newline": "cucc\n",
    "nul": "cu\x00cc",
    "upper_case": "CUCC",
    "fullwidth": "\uff43\uff55\uff43\uff43",
    "overlong": "c" * 40,
    "space": "cucc ",
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
async def test_a_port_half_naming_a_malformed_carrier_id_is_refused(
    federation: Federation, case: str
) -> None:
    fed = federation
    head = await fed.gateway.store.run(fed.gateway.events.head)
    batch = signed_batch(fed, "cmcc", half(N, "cmcc", BAD_IDS[case], datetime.now(UTC)))
    answer = await refused(
        fed,
        PeerId(Role.CARRIER, "cmcc"),
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch),
    )
    assert answer == "INVALID_ARGUMENT MALFORMED_EVENT"
    assert await fed.gateway.store.run(fed.gateway.events.head) == head


async def test_a_carriers_malformed_port_half_does_not_stall_the_gateways_sync(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same half handed over at the carriers' sync (ListPortHalves). On PostgreSQL the
    database's DataError is not a NumfedError: it escapes `_take_port_halves`, kills cmcc's sync
    task (`_sync_carrier_forever` catches only RPC errors), and the other carriers' syncs wait
    for cmcc's halves for ever: a restarted gateway never becomes ready (health NOT_SERVING) and
    no carrier is synced again. On SQLite the half is stored. Either way one lying carrier's
    signed page decides. Expected: the page is refused (audited), the gateway gets ready."""
    fed = federation
    adapter = fed.carriers["cmcc"].adapter
    honest = adapter.port_halves

    def lying() -> list[LifecycleEvent]:
        return [*honest(), half(N, "cmcc", BAD_IDS["overlong"], datetime.now(UTC))]

    monkeypatch.setattr(adapter, "port_halves", lying)
    await fed.gateway.stop(0)
    gw = fed.gateway = await Gateway.start(load_gateway_config(fed.layout.gateway_config))
    try:
        async with asyncio.timeout(20):
            await gw.ready.wait()
    except TimeoutError:
        pytest.fail(
            f"the gateway is not ready 20 s after its start: carriers synced {sorted(gw.synced)}"
        )
    with gw.store.engine.connect() as c:
        stored = c.execute(
            sa.select(sa.func.count())
            .select_from(port_halves)
            .where(sa.func.length(port_halves.c.to_carrier) > 32)
        ).scalar_one()
    assert stored == 0, "the malformed half was stored"
