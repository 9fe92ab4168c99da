"""The platform kit passes against the reference platforms."""

from __future__ import annotations

from numfed.conformance.platform import CHECKS
from tests.conformance.conftest import KitRun, failed


async def test_full_kit_passes_against_weibo(kit: KitRun) -> None:
    results = await kit.run("weibo")
    assert set(results) == {c.name for c in CHECKS}
    assert failed(results) == set(), {n: r.detail for n, r in results.items() if not r.passed}
