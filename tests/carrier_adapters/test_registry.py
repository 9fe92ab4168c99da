"""The subscriber registry: seeded once, WAL, served numbers, X across a port, own data only."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from carrier_adapters import ADAPTERS
from carrier_adapters.registry import SubscriberRegistry, seed_from_scenario, subscribers_of
from numfed.config import load_carrier_config
from numfed.errors import AlreadyExists, InvalidArgument, NotFound
from numfed.federation import FederationLayout
from numfed.history import EventKind, NumberEvent, NumberHistory
from numfed.scenario import Holder, demo_scenario

WORLD = demo_scenario()
PORTED = WORLD.showcase["ported"]
NOW = datetime(2026, 11, 1, tzinfo=UTC)
A, D, P = EventKind.ASSIGNED, EventKind.DEACTIVATED, EventKind.PORTED


def seeded(tmp_path: Path, carrier: str) -> SubscriberRegistry:
    registry = SubscriberRegistry(tmp_path / f"{carrier}.db", carrier)
    seed_from_scenario(registry, WORLD)
    return registry


def rows(registry: SubscriberRegistry, table: str) -> int:
    with registry.engine.connect() as c:
        return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_adapter_seeds_from_the_scenario_only_when_new(
    layout: FederationLayout, tmp_path: Path
) -> None:
    config = load_carrier_config(layout.carrier_configs["cmcc"])
    first = ADAPTERS["cmcc"](config)
    counts = rows(first.registry, "subscribers"), rows(first.registry, "number_events")
    assert counts[0] > 0 and counts[1] > 0
    await first.close()
    again = ADAPTERS["cmcc"](config)  # restart on the same state dir: nothing seeded twice
    assert (rows(again.registry, "subscribers"), rows(again.registry, "number_events")) == counts
    assert again.registry.served_numbers(NOW) == first.registry.served_numbers(NOW)
    await again.close()
    bare = dataclasses.replace(config, state_dir=tmp_path / "bare", seed_scenario=False)
    empty = ADAPTERS["cmcc"](bare)
    assert empty.registry.is_empty() and empty.registry.served_numbers(NOW) == []
    await empty.close()


def test_registry_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    registry = seeded(tmp_path, "cmcc")
    with registry.engine.connect() as c:
        assert c.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    reopened = SubscriberRegistry(tmp_path / "cmcc.db", "cmcc")
    assert reopened.history(PORTED) == registry.history(PORTED)  # durable, exact to the µs


def test_knows_the_numbers_it_ever_served(tmp_path: Path) -> None:
    registry = seeded(tmp_path, "ctcc")
    known = {h.number for h in WORLD.histories_known_to("ctcc")}
    assert known and all(registry.history(n) == WORLD.histories[n] for n in known)
    with pytest.raises(NotFound) as e:
        registry.history(PORTED)  # never at ctcc
    assert e.value.reason == "UNKNOWN_NUMBER"


def test_a_ported_number_is_served_by_its_new_carrier_only(tmp_path: Path) -> None:
    cmcc, cucc = seeded(tmp_path, "cmcc"), seeded(tmp_path, "cucc")
    before_port = datetime(2023, 3, 31, tzinfo=UTC)
    assert PORTED in cucc.served_numbers(before_port)
    assert PORTED not in cmcc.served_numbers(before_port)
    assert PORTED in cmcc.served_numbers(NOW)
    assert PORTED not in cucc.served_numbers(NOW)
    assert cucc.history(PORTED) == cmcc.history(PORTED)  # the old carrier keeps its records
    with pytest.raises(NotFound) as e:
        cucc.current_holder(PORTED, NOW)
    assert e.value.reason == "NUMBER_NOT_SERVED"


def test_x_of_a_ported_number_is_the_assignment_not_the_port(tmp_path: Path) -> None:
    current = seeded(tmp_path, "cmcc").current_holder(PORTED, NOW)
    assert current.tenure_start == datetime(2020, 5, 6, 9, tzinfo=UTC)
    assert current.tenure_start != datetime(2023, 4, 1, 9, tzinfo=UTC)  # the port
    tenure = WORLD.histories[PORTED].current_tenure(NOW)
    assert tenure is not None and current.holder == WORLD.holders[tenure.holder_id]


def test_served_numbers_include_numbers_between_holders(tmp_path: Path) -> None:
    registry = seeded(tmp_path, "cucc")
    served = registry.served_numbers(NOW)
    expected = sorted(h.number for h in WORLD.histories_served_by("cucc", NOW))
    assert served == expected
    idle = [n for n in served if WORLD.histories[n].current_tenure(NOW) is None]
    assert idle
    with pytest.raises(NotFound) as e:
        registry.current_holder(idle[0], NOW)  # served, but nobody to verify or attest for
    assert e.value.reason == "NO_CURRENT_HOLDER"


def test_only_its_own_subscribers_personal_details(tmp_path: Path) -> None:
    cmcc, cucc = seeded(tmp_path, "cmcc"), seeded(tmp_path, "cucc")
    first, current = (t.holder_id for t in WORLD.histories[PORTED].tenures())
    assert subscribers_of("cmcc", WORLD.histories[PORTED]) == {current}
    assert subscribers_of("cucc", WORLD.histories[PORTED]) == {first, current}
    assert cucc.holder(first) == WORLD.holders[first]
    with pytest.raises(NotFound):
        cmcc.holder(first)  # held the number at cucc only, before it was ported
    assert cmcc.holder(current) == WORLD.holders[current]


def _history(
    number: str, gap: timedelta, carrier: str = "cmcc", port_to: str | None = None
) -> NumberHistory:
    """Assigned at ``carrier``, deactivated, reassigned ``gap`` later, maybe ported after."""
    t = datetime(2020, 1, 1, tzinfo=UTC)
    events = [
        NumberEvent(A, t, carrier, f"{number}-a"),
        NumberEvent(D, t + timedelta(days=30), carrier),
        NumberEvent(A, t + timedelta(days=30) + gap, carrier, f"{number}-b"),
    ]
    if port_to is not None:
        events.append(NumberEvent(P, t + timedelta(days=400), port_to))
    return NumberHistory(number, tuple(events))


def test_the_carriers_own_quiet_period(tmp_path: Path) -> None:
    registry = SubscriberRegistry(tmp_path / "r.db", "cmcc", quiet_period=timedelta(days=120))
    with pytest.raises(InvalidArgument) as e:
        registry.seed([], [_history("+8613900000001", timedelta(days=100))])
    assert e.value.reason == "QUIET_PERIOD"
    # Another carrier's reassignment (before the number was ported here) follows its own rule.
    registry.seed([], [_history("+8613900000002", timedelta(days=100), "cucc", "cmcc")])
    registry.seed([], [_history("+8613900000003", timedelta(days=120))])
    assert registry.served_numbers(NOW) == ["+8613900000002", "+8613900000003"]
    with pytest.raises(InvalidArgument):
        SubscriberRegistry(tmp_path / "s.db", "cmcc", quiet_period=timedelta(days=89))


def test_seeding_is_all_or_nothing(tmp_path: Path) -> None:
    registry = SubscriberRegistry(tmp_path / "r.db", "cmcc")
    h = _history("+8613900000004", timedelta(days=90))
    registry.seed([Holder("p1", "钱多", "110101199001011234")], [h])
    with pytest.raises(AlreadyExists):
        registry.seed([Holder("p2", "孙立", "110101199001014321")], [h])
    with pytest.raises(NotFound):
        registry.holder("p2")
    assert rows(registry, "subscribers") == 1
    with pytest.raises(InvalidArgument) as e:
        registry.seed([], [_history("+8618600000005", timedelta(days=90), "cucc")])
    assert e.value.reason == "NOT_OUR_NUMBER"
