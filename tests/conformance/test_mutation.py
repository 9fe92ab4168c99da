"""The kit is mutation-tested: it fails each broken member on its rule's check and on no other.

Every broken member (``tests/conformance/broken.py``) is the reference member with one rule of
``docs/spec/`` broken; the whole kit runs against it in this process, and the report must fail
exactly the checks that name that rule. ``test_spec.py`` checks that every MUST rule has one.
"""

from __future__ import annotations

from typing import Any

import pytest

from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE, run_carrier_kit, run_platform_kit
from tests.conformance.broken import BROKEN_CARRIERS, BROKEN_PLATFORMS


def _checks_of(suite: Any, rule: str) -> list[str]:
    return [c.name for c, _ in suite.checks if rule in c.rule_ids]


@pytest.mark.parametrize("broken", sorted(BROKEN_PLATFORMS))
async def test_broken_platform_fails_exactly_its_check(
    numfed_conformance_platform: Any, broken: str
) -> None:
    member = BROKEN_PLATFORMS[broken]
    expected = _checks_of(PLATFORM_SUITE, member.breaks)
    with member.patches():
        _, target = await numfed_conformance_platform("weibo", servicer_class=member)
    report = await run_platform_kit(target)
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
    report = await run_carrier_kit(target)
    assert report.failed == expected, [
        (r.check.name, r.detail) for r in report.results if not r.passed
    ]
