"""The platform kit passes every reference platform, and behaves well when it cannot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from numfed.config import load_platform_config
from numfed.conformance import PLATFORM_SUITE, PlatformTarget, run_platform_kit
from numfed.conformance.report import Status
from numfed.errors import InvalidArgument
from numfed.federation import create_federation
from numfed.scenario import PLATFORMS
from numfed.v1 import platform_pb2
from platform_stubs.reference import start_platform
from platform_stubs.sdk import PlatformServicer


def test_every_reference_platform_is_listed() -> None:
    assert len(PLATFORMS) == 8 and "labels" in PLATFORMS


@pytest.mark.parametrize("platform_id", PLATFORMS)
async def test_reference_platform_passes(
    numfed_conformance_platform: Any, platform_id: str
) -> None:
    _, target = await numfed_conformance_platform(platform_id)
    report = await run_platform_kit(target)
    assert [r.check.name for r in report.results] == PLATFORM_SUITE.names
    assert report.passed and report.conformant, [
        (r.check.name, r.detail) for r in report.results if not r.passed
    ]


async def test_only_runs_the_named_checks_after_the_gate(
    numfed_conformance_platform: Any,
) -> None:
    _, target = await numfed_conformance_platform("labels")
    only = ("bundle_rollback_refused", "release_keeps_current_holder")
    report = await run_platform_kit(target, only=only)
    assert [r.check.name for r in report.results] == [
        "target_reachable",
        "release_keeps_current_holder",
        "bundle_rollback_refused",
    ]
    assert report.passed


async def test_a_second_run_starts_from_the_pin_again(numfed_conformance_platform: Any) -> None:
    """The first run leaves the platform on a root and bundle of its own making; ResetTrust
    takes it back to its pin, so a second kit (new keys) passes as well."""
    _, target = await numfed_conformance_platform("douyin")
    first = await run_platform_kit(target, only=("root_rotation_followed",))
    assert first.passed
    second = await run_platform_kit(target)
    assert second.passed, second.failed


async def test_the_wrong_member_at_the_target_is_one_clear_failure(
    numfed_conformance_platform: Any,
) -> None:
    """The kit checks that the server's certificate names the platform it was told to check;
    that failure is the only one reported (the gate), not one per check."""
    _, target = await numfed_conformance_platform("weibo")
    report = await run_platform_kit(replace(target, platform_id="taobao"), timeout=5)
    assert report.failed == ["target_reachable"]
    assert [r.check.name for r in report.results] == ["target_reachable"]
    assert "is not spiffe://numfed/platform/taobao" in report.results[0].detail


async def test_nobody_at_the_target_is_one_clear_failure(tmp_path: Path) -> None:
    from numfed import pki
    from numfed.federation import free_ports

    pki.init_pki(tmp_path / "pki", carriers=(), platforms=("weibo",))
    (port,) = free_ports(1)
    target = PlatformTarget(f"127.0.0.1:{port}", "weibo", tmp_path / "pki", "127.0.0.1:1")
    report = await run_platform_kit(target, timeout=5)
    assert report.failed == ["target_reachable"]
    assert report.results[0].detail.startswith("cannot reach spiffe://numfed/platform/weibo")


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
    assert report.failed == PLATFORM_SUITE.names[1:]  # reachable, but nothing to test with
    assert "UNIMPLEMENTED" in report.results[1].detail
    assert all(r.status is Status.FAIL for r in report.results[1:])


async def test_unknown_check_names_are_refused(numfed_conformance_platform: Any) -> None:
    _, target = await numfed_conformance_platform("weibo")
    with pytest.raises(InvalidArgument) as err:
        await run_platform_kit(target, only=("no_such_check",))
    assert err.value.reason == "UNKNOWN_CHECK"


class IgnoresSparseAnswers(PlatformServicer):
    """A platform built before sparse answers: it answers every item, whatever it is asked."""

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        request.ClearField("sparse_answers")
        return await super().BatchQueryBindings(request, context)


async def test_a_platform_that_answers_every_item_passes_too(
    numfed_conformance_platform: Any,
) -> None:
    """Both shapes are conformant: sparse answers are an offer, not an obligation."""
    _, target = await numfed_conformance_platform("weibo", servicer_class=IgnoresSparseAnswers)
    report = await run_platform_kit(target, only=("sparse_answers_honoured",))
    assert report.passed, [(r.check.name, r.detail) for r in report.results]
    (result,) = [r for r in report.results if r.check.name == "sparse_answers_honoured"]
    assert "does not answer sparsely" in result.detail


async def test_the_simulator_logs_and_dumps_what_it_served(
    numfed_conformance_platform: Any, tmp_path: Path
) -> None:
    """Each trust answer the kit served is written for the member to replay, named for the
    check that served it, with who asked and which root version it said it knew."""
    import json

    from numfed.v1 import gateway_pb2

    _, target = await numfed_conformance_platform("weibo")
    dump = tmp_path / "dump"
    report = await run_platform_kit(
        replace(target, dump_dir=dump), only=("root_rotation_followed",)
    )
    assert report.passed
    index = [json.loads(line) for line in (dump / "index.jsonl").read_text().splitlines()]
    rotation = [e for e in index if e["check"] == "root_rotation_followed"]
    assert rotation and all(e["peer"] == "spiffe://numfed/platform/weibo" for e in rotation)
    assert {e["known_root_version"] for e in rotation} >= {1, 2}
    assert any(e["roots"] == [3, 4] for e in rotation)  # two rotations in one answer
    answer = gateway_pb2.GetTrustBundleResponse.FromString(
        (dump / rotation[-1]["file"]).read_bytes()
    )
    assert answer.bundle.payload
