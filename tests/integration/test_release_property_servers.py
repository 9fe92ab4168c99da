"""Invariant 1 through the real carrier, gateway and platform servers, on generated histories.

Each example is a fresh number with a generated history (reassignments, ports) ending at cmcc,
and bindings on two platforms at random moments including X and X ± 1 s. The holder verifies
at the carrier and releases prior bindings; afterwards exactly the bindings with bound_at < X
are released at each platform and every account remains.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numfed.config import Member
from numfed.history import NumberEvent, NumberHistory
from numfed.pgtemp import TempPostgres
from numfed.scenario import Holder
from tests.conftest import BACKENDS
from tests.helpers.loopthread import LoopThread
from tests.helpers.strategies import binding_times, histories
from tests.integration.conftest import Federation, start_federation
from tests.integration.holder import PRIOR, HolderApp

PLATFORMS = ("weibo", "taobao")
START = datetime(2000, 1, 1, tzinfo=UTC)
_numbers = itertools.count(10_000_000)


@pytest.fixture(scope="module", params=BACKENDS)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LoopThread, Federation]]:
    root = tmp_path_factory.mktemp("prop")
    url = f"sqlite:///{root / 'gateway.db'}"
    if request.param == "postgresql":
        server: TempPostgres = request.getfixturevalue("postgres")
        url = server.create_database(f"prop_{os.getpid()}")
    loop = LoopThread("prop-fed")
    try:
        fed = loop.run(start_federation(root / "fed", database_url=url))
        try:
            yield loop, fed
        finally:
            loop.run(fed.stop())
    finally:
        loop.close()


def _ending_at_cmcc(h: NumberHistory, number: str, tag: str) -> NumberHistory:
    last = h.events[-1].carrier_id
    swap = {last: "cmcc", "cmcc": last}
    return NumberHistory(
        number,
        tuple(
            NumberEvent(
                e.kind,
                e.at,
                swap.get(e.carrier_id, e.carrier_id),
                e.holder_id and f"{tag}{e.holder_id}",
            )
            for e in h.events
        ),
    )


async def _release_and_check(
    fed: Federation, history: NumberHistory, holders: list[Holder], times: list[datetime]
) -> None:
    number = history.number
    carrier = fed.carriers["cmcc"]
    carrier.adapter.registry.seed(holders, [history])
    for p in PLATFORMS:
        rows = [
            (f"{p}-{number[1:]}-{i}", f"n{i}", number, "ACCOUNT_LOGIN", t)
            for i, t in enumerate(times)
        ]
        fed.platforms[p].store.seed(rows)
    await fed.gateway.sync_carrier(Member("cmcc", fed.layout.carrier_endpoints["cmcc"]))
    now = datetime.now(UTC)
    tenure = history.current_tenure(now)
    assert tenure is not None
    holder = next(h for h in holders if h.holder_id == tenure.holder_id)
    state = fed.layout.root / "state" / "carrier-cmcc"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{carrier.holder_port}") as ch:
        app = await HolderApp.verified(ch, state, number, holder)
        op = await app.release(PRIOR)
        assert (await app.watch(op.name))[-1].done
    x = tenure.start
    for p in PLATFORMS:
        got = fed.platforms[p].store.bindings_for([number])[number]
        assert len(got) == len(times)  # every account (and its binding row) remains
        assert sorted(b.bound_at for b in got if not b.active) == sorted(t for t in times if t < x)
        assert sorted(b.bound_at for b in got if b.active) == sorted(t for t in times if t >= x)


@st.composite
def examples(draw: st.DrawFn) -> tuple[NumberHistory, list[datetime]]:
    n = next(_numbers)
    number = f"+86139{n:08d}"
    h = draw(histories(number=number, end_held=True, start=START, step=3 * 10**7))
    h = _ending_at_cmcc(h, number, f"p{n}")
    times = draw(binding_times(h))
    return h, times


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(examples())
def test_release_through_servers_touches_only_bindings_before_x(
    running: tuple[LoopThread, Federation], example: tuple[NumberHistory, list[datetime]]
) -> None:
    loop, fed = running
    history, times = example
    holder_ids = sorted({e.holder_id for e in history.events if e.holder_id})
    holders = [
        Holder(hid, f"持有人{i}", f"11010119900101{i:03d}X") for i, hid in enumerate(holder_ids)
    ]
    loop.run(_release_and_check(fed, history, holders, times))
