"""The platform kit passes every reference platform and catches each broken one by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from numfed.config import load_platform_config
from numfed.conformance import PLATFORM_SUITE, PlatformTarget, run_platform_kit
from numfed.errors import InvalidArgument
from numfed.federation import create_federation
from numfed.scenario import PLATFORMS
from platform_stubs.reference import start_platform
from tests.conformance.broken import BROKEN_PLATFORMS


def test_every_reference_platform_is_listed() -> None:
    assert len(PLATFORMS) == 8 and "labels" in PLATFORMS


@pytest.mark.parametrize("platform_id", PLATFORMS)
async def test_reference_platform_passes(
    numfed_conformance_platform: Any, platform_id: str
) -> None:
    _, target = await numfed_conformance_platform(platform_id)
    report = await run_platform_kit(target)
    assert [r.check.name for r in report.results] == PLATFORM_SUITE.names
    assert report.passed, [(r.check.name, r.detail) for r in report.results if not r.passed]


@pytest.mark.parametrize("broken", sorted(BROKEN_PLATFORMS))
async def test_broken_platform_fails_exactly_its_check(
    numfed_conformance_platform: Any, broken: str
) -> None:
    servicer_class, check = BROKEN_PLATFORMS[broken]
    _, target = await numfed_conformance_platform("weibo", servicer_class=servicer_class)
    report = await run_platform_kit(target)
    assert not report.passed
    assert report.failed == [check], [(r.check.name, r.detail) for r in report.results]


async def test_only_runs_the_named_checks(numfed_conformance_platform: Any) -> None:
    _, target = await numfed_conformance_platform("labels")
    only = ("bundle_rollback_refused", "release_keeps_binding_at_x")
    report = await run_platform_kit(target, only=only)
    assert [r.check.name for r in report.results] == [
        "release_keeps_binding_at_x",
        "bundle_rollback_refused",
    ]
    assert report.passed


async def test_a_second_run_against_the_same_platform_passes(
    numfed_conformance_platform: Any,
) -> None:
    """The platform still holds the first run's bundle (v3: the probe v1 it took, the kit's
    base v2, the revoking v3): the kit continues one past it."""
    _, target = await numfed_conformance_platform("douyin")
    first = await run_platform_kit(target, only=("revoked_key_refused",))
    second = await run_platform_kit(target)
    assert first.passed and second.passed, second.failed
    assert "v4" in second.results[0].detail


async def test_the_wrong_member_at_the_target_fails_setup(
    numfed_conformance_platform: Any,
) -> None:
    """The kit checks the server's certificate names the platform it was told to check."""
    _, target = await numfed_conformance_platform("weibo")
    wrong = replace(target, platform_id="taobao")
    report = await run_platform_kit(wrong, timeout=5)
    assert report.failed == PLATFORM_SUITE.names
    assert "conformance service failed: UNAVAILABLE" in report.results[0].detail


async def test_a_platform_without_conformance_mode_fails_every_check(tmp_path: Path) -> None:
    layout = create_federation(tmp_path / "fed", carriers=(), platforms=("weibo",))
    handle = await start_platform(load_platform_config(layout.platform_configs["weibo"]))
    try:
        target = PlatformTarget(
            f"127.0.0.1:{handle.port}", "weibo", layout.pki_dir, layout.gateway_endpoint
        )
        report = await run_platform_kit(target, timeout=5)
    finally:
        await handle.stop(0)
    assert report.failed == PLATFORM_SUITE.names
    assert "UNIMPLEMENTED" in report.results[0].detail


async def test_unknown_check_names_are_refused(numfed_conformance_platform: Any) -> None:
    _, target = await numfed_conformance_platform("weibo")
    with pytest.raises(InvalidArgument) as err:
        await run_platform_kit(target, only=("no_such_check",))
    assert err.value.reason == "UNKNOWN_CHECK"
