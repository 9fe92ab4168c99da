"""The platform kit passes against every reference platform and catches each broken one."""

from __future__ import annotations

import pytest

from numfed.conformance.platform import CHECKS
from numfed.scenario import PLATFORMS
from tests.conformance.broken import BROKEN
from tests.conformance.conftest import KitRun, failed


@pytest.mark.parametrize("platform_id", PLATFORMS)
async def test_full_kit_passes_against_each_reference_platform(
    kit: KitRun, platform_id: str
) -> None:
    results = await kit.run(platform_id)
    assert set(results) == {c.name for c in CHECKS}
    assert failed(results) == set(), {n: r.detail for n, r in results.items() if not r.passed}


@pytest.mark.parametrize("name", sorted(BROKEN))
async def test_broken_platform_fails_exactly_its_check(kit: KitRun, name: str) -> None:
    breakage, check = BROKEN[name]
    results = await kit.run("weibo", breakage=breakage)
    assert failed(results) == {check}, {n: r.detail for n, r in results.items() if not r.passed}
    assert results[check].detail
