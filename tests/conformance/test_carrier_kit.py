"""The carrier kit passes the three reference carriers, and any other carrier id."""

from __future__ import annotations

from typing import Any

import pytest

from numfed.conformance import CARRIER_SUITE, run_carrier_kit
from numfed.scenario import CARRIERS


@pytest.mark.parametrize("carrier_id", CARRIERS)
async def test_reference_carrier_passes(numfed_conformance_carrier: Any, carrier_id: str) -> None:
    _, target = await numfed_conformance_carrier(carrier_id)
    report = await run_carrier_kit(target)
    assert [r.check.name for r in report.results] == CARRIER_SUITE.names
    assert report.passed, [(r.check.name, r.detail) for r in report.results if not r.passed]


async def test_carrier_checked_under_another_federations_bundle_fails(
    numfed_conformance_carrier: Any,
) -> None:
    _, ours = await numfed_conformance_carrier("ctcc")
    _, theirs = await numfed_conformance_carrier("ctcc")
    mixed = type(ours)(ours.target, "ctcc", ours.pki_dir, theirs.trust_dir)
    report = await run_carrier_kit(mixed, only=("claim_verifies_under_bundle",))
    assert report.failed == ["claim_verifies_under_bundle"]
    assert "UNKNOWN_KEY" in report.results[1].detail
