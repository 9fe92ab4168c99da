"""The kit is mutation-tested: it fails each broken member on its rule's check and on no other.

Every broken member (``tests/conformance/broken.py``) is the reference member with one rule of
``docs/spec/`` broken; the whole kit runs against it in this process, and the report must fail
exactly the checks that name that rule. ``test_spec.py`` checks that every MUST rule has one.

One check is left out for the members that do not break its rule: ``keepalive_pings_accepted``
pings for 5 s, and no other broken member touches the server's ping policy (each starts the
reference server with its options); the members that break PLAT-OPS-7 and CARR-OPS-7 run it.
"""

from __future__ import annotations

from typing import Any

import pytest

from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE, run_carrier_kit, run_platform_kit
from tests.conformance.broken import BROKEN_CARRIERS, BROKEN_PLATFORMS

SLOW = frozenset({"keepalive_pings_accepted"})


def _checks_of(suite: Any, rule: str) -> list[str]:
    return [c.name for c, _ in suite.checks if rule in c.rule_ids]


def _only(suite: Any, expected: list[str]) -> tuple[str, ...]:
    """Every check (``()``) for a member caught by a slow one; else all but the slow ones."""
    if SLOW & set(expected):
        return ()
    return tuple(n for n in suite.names if n not in SLOW)


@pytest.mark.parametrize("broken", sorted(BROKEN_PLATFORMS))
async def test_broken_platform_fails_exactly_its_check(
    numfed_conformance_platform: Any, broken: str
) -> None:
    member = BROKEN_PLATFORMS[broken]
    expected = _checks_of(PLATFORM_SUITE, member.breaks)
    with member.patches():
        _, target = await numfed_conformance_platform("weibo", servicer_class=member)
    report = await run_platform_kit(target, only=_only(PLATFORM_SUITE, expected))
    assert report.failed == expected, [
        (r.check.name, r.detail) for r in report.results if not r.passed
    ]


@pytest.mark.parametrize("broken", sorted(BROKEN_CARRIERS))
async def test_broken_carrier_fails_exactly_its_check(
    numfed_conformance_carrier: Any, broken: str
) -> None:
    member = BROKEN_CARRIERS[broken]
    expected = _checks_of(CARRIER_SUITE, member.breaks)
    with member.patches():
        _, target = await numfed_conformance_carrier("cmcc", adapter_class=member)
    report = await run_carrier_kit(target, only=_only(CARRIER_SUITE, expected))
    assert report.failed == expected, [
        (r.check.name, r.detail) for r in report.results if not r.passed
    ]
