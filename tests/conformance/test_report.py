"""The kit's report: statuses and the verdict, expected failures, and what a member's CI reads
(the terminal table, compact lines, JUnit XML and JSON)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE, Check, Report, Result
from numfed.conformance.report import (
    CheckFailed,
    Status,
    Suite,
    Xfails,
    render,
    render_compact,
    write_json,
    write_junit,
)
from numfed.conformance.spec import Level
from numfed.errors import InvalidArgument

RULE = Check("holds_the_line", "The line is held.", "Otherwise it is not.", ("PLAT-TRUST-5",))
OTHER = Check("keeps_count", "Counts are kept.", "Otherwise nobody knows.", ("PLAT-REL-8",))
NICE = Check("is_nice", "It is nice.", "Nicer.", ("PLAT-OPS-6",), Level.SHOULD)


def _report(*statuses: Status) -> Report:
    checks = (RULE, OTHER, NICE)
    return Report(
        "numfed conformance platform",
        "weibo at 127.0.0.1:1",
        [
            Result(c, s, f"{c.name}: {s.value}", 0.25)
            for c, s in zip(checks, statuses, strict=False)
        ],
    )


def test_a_run_passes_only_when_nothing_failed_errored_or_passed_unexpectedly() -> None:
    assert _report(Status.PASS, Status.PASS).conformant
    failing = _report(Status.PASS, Status.FAIL)
    assert not failing.passed and failing.failed == ["keeps_count"]
    assert not _report(Status.PASS, Status.ERROR).passed
    assert not _report(Status.PASS, Status.XPASS).passed  # a stale expected failure fails
    assert not Report("s", "t").passed  # nothing run proves nothing


def test_an_expected_failure_of_a_must_rule_keeps_ci_green_but_not_the_verdict() -> None:
    gap = _report(Status.PASS, Status.XFAIL)
    assert gap.passed and not gap.conformant
    assert gap.verdict == "not conformant (known gaps: PLAT-REL-8)"
    should = _report(Status.PASS, Status.PASS, Status.XFAIL)
    assert should.passed and should.conformant  # a SHOULD rule's gap keeps the verdict


async def test_suite_records_failures_errors_timeouts_and_expected_failures() -> None:
    suite: Suite[None] = Suite("s")

    @suite.check("passes", "r", "w", rules=("PLAT-OPS-1",))
    async def passes(_: None) -> str:
        return "fine"

    @suite.check("fails", "r", "w", rules=("PLAT-OPS-2",))
    async def fails(_: None) -> str:
        raise CheckFailed("broken rule")

    @suite.check("slow", "r", "w", rules=("PLAT-OPS-3",))
    async def slow(_: None) -> str:
        import asyncio

        await asyncio.sleep(5)
        return "late"

    @suite.check("buggy", "r", "w", rules=("PLAT-OPS-4",))
    async def buggy(_: None) -> str:
        raise KeyError("the kit's own bug")

    @suite.check("listed", "r", "w", rules=("PLAT-TRUST-1",))
    async def listed(_: None) -> str:
        return "passes though listed"

    report = await suite.run(
        None, Report("s", "t"), timeout=0.05, xfails=Xfails({"PLAT-OPS-2", "PLAT-TRUST"})
    )
    assert [(r.check.name, r.status) for r in report.results] == [
        ("passes", Status.PASS),
        ("fails", Status.XFAIL),
        ("slow", Status.FAIL),
        ("buggy", Status.ERROR),
        ("listed", Status.XPASS),
    ]
    assert report.results[2].detail == "no answer within 0.05 s"
    assert "KeyError" in report.results[3].detail


async def test_a_failed_gate_ends_the_run() -> None:
    suite: Suite[None] = Suite("s")

    @suite.check("reach", "r", "w", rules=("PLAT-OPS-3",), gate=True)
    async def reach(_: None) -> str:
        raise CheckFailed("cannot reach it")

    @suite.check("later", "r", "w", rules=("PLAT-OPS-2",))
    async def later(_: None) -> str:
        raise AssertionError("must not run")

    report = await suite.run(None, Report("s", "t"), only=("later",))
    assert report.failed == ["reach"] and len(report.results) == 1


def test_xfails_file_names_checks_rules_and_families_and_refuses_typos() -> None:
    checks = [c for c, _ in PLATFORM_SUITE.checks]
    xfails = Xfails.parse(
        "# known gaps\nbundle_rollback_refused\nPLAT-CLAIM-6  # window\n\nPLAT-EVT\n", checks
    )
    by_name = {c.name: c for c in checks}
    for name in ("bundle_rollback_refused", "key_window_enforced", "events_applied_once"):
        assert xfails.expects(by_name[name]), name
    assert not xfails.expects(by_name["forged_claim_refused"])
    with pytest.raises(InvalidArgument) as err:
        Xfails.parse("bundle_rolback_refused\n", checks)
    assert err.value.reason == "UNKNOWN_XFAIL"


def test_table_names_each_check_its_rules_why_and_verdict() -> None:
    console = Console(record=True, width=200)
    render(_report(Status.PASS, Status.FAIL), console)
    text = console.export_text()
    for needle in ("PASS", "FAIL", "holds_the_line", "PLAT-TRUST-5", "Otherwise it is not."):
        assert needle in text
    assert "1 of 2 checks passed (1 fail): not conformant" in text


def test_compact_report_is_a_line_per_check_and_details_only_for_failures() -> None:
    console = Console(record=True, width=80)
    render_compact(_report(Status.PASS, Status.FAIL), console)
    lines = console.export_text().splitlines()
    assert lines[1].startswith("PASS  holds_the_line [PLAT-TRUST-5]")
    assert lines[2].startswith("FAIL  keeps_count [PLAT-REL-8]")
    assert lines[3] == "      keeps_count: FAIL"
    assert lines[-1] == "1 of 2 checks passed (1 fail): not conformant"
    assert len(lines) == 5


def test_junit_xml_has_one_testcase_per_check_and_the_failure(tmp_path: Path) -> None:
    path = tmp_path / "out" / "kit.xml"
    write_junit(_report(Status.PASS, Status.FAIL, Status.XFAIL), path)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["holds_the_line", "keeps_count", "is_nice"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "keeps_count: FAIL"
    assert "Rule ids: PLAT-REL-8" in (failure.text or "")
    assert cases[2].find("skipped") is not None


def test_json_report_has_each_result_with_rule_ids_status_and_kit_version(tmp_path: Path) -> None:
    path = tmp_path / "kit.json"
    write_json(_report(Status.PASS, Status.XFAIL), path)
    data = json.loads(path.read_text())
    assert (data["passed"], data["conformant"]) == (True, False)
    first = data["results"][0]
    assert first["check"] == "holds_the_line" and first["rule_ids"] == ["PLAT-TRUST-5"]
    assert (first["status"], first["level"], first["seconds"]) == ("PASS", "MUST", 0.25)
    assert first["kit"] == data["kit"] != ""
    assert data["results"][1]["status"] == "XFAIL"


def test_every_check_has_a_unique_name_a_rule_a_reason_and_rule_ids() -> None:
    for suite in (PLATFORM_SUITE, CARRIER_SUITE):
        names = suite.names
        assert len(set(names)) == len(names)
        for check, _ in suite.checks:
            assert check.rule.endswith(".") and check.why.endswith("."), check.name
            assert check.rule_ids, check.name
        assert suite.checks[0][0].gate and not any(c.gate for c, _ in suite.checks[1:])


def test_status_codes_in_grpc_are_what_the_kit_names() -> None:
    """The kit reports codes by grpc's names; keep them stable for members' CI parsers."""
    assert grpc.StatusCode.UNAUTHENTICATED.name == "UNAUTHENTICATED"
