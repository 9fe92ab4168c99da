"""The kit's report: the verdict, the terminal table and the JUnit XML a member's CI reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from numfed import cli
from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE, Check, Report, Result
from numfed.conformance.report import CheckFailed, Suite, render, write_junit

RULE = Check("holds_the_line", "The line is held.", "Otherwise it is not.")
OTHER = Check("keeps_count", "Counts are kept.", "Otherwise nobody knows.")


def _report() -> Report:
    return Report(
        "numfed conformance platform",
        "weibo at 127.0.0.1:1",
        [Result(RULE, True, "held", 0.25), Result(OTHER, False, "lost count: 3 <> 4", 0.5)],
    )


def test_a_run_passes_only_when_every_check_passes() -> None:
    report = _report()
    assert not report.passed and report.failed == ["keeps_count"]
    report.results.pop()
    assert report.passed
    assert not Report("s", "t").passed  # nothing run proves nothing


def test_table_names_each_check_its_rule_why_and_verdict() -> None:
    console = Console(record=True, width=200)
    render(_report(), console)
    text = console.export_text()
    for needle in ("PASS", "FAIL", "holds_the_line", "The line is held.", "Otherwise it is not."):
        assert needle in text
    assert "1 of 2 checks passed: not conformant" in text


def test_junit_xml_has_one_testcase_per_check_and_the_failure(tmp_path: Path) -> None:
    path = tmp_path / "out" / "kit.xml"
    write_junit(_report(), path)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("time")) == ("2", "1", "0.750")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["holds_the_line", "keeps_count"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "lost count: 3 <> 4"
    assert "Why: Otherwise nobody knows." in (failure.text or "")


async def test_suite_records_failures_errors_and_timeouts() -> None:
    suite: Suite[None] = Suite("s")

    @suite.check("passes", "r", "w")
    async def passes(_: None) -> str:
        return "fine"

    @suite.check("fails", "r", "w")
    async def fails(_: None) -> str:
        raise CheckFailed("broken rule")

    @suite.check("slow", "r", "w")
    async def slow(_: None) -> str:
        import asyncio

        await asyncio.sleep(5)
        return "late"

    report = await suite.run(None, Report("s", "t"), timeout=0.05)
    assert [(r.check.name, r.passed, r.detail) for r in report.results] == [
        ("passes", True, "fine"),
        ("fails", False, "broken rule"),
        ("slow", False, "no answer within 0.05 s"),
    ]


def test_every_check_has_a_unique_name_a_rule_and_a_reason() -> None:
    for suite in (PLATFORM_SUITE, CARRIER_SUITE):
        names = suite.names
        assert len(set(names)) == len(names)
        for check, _ in suite.checks:
            assert check.rule.endswith(".") and check.why.endswith("."), check.name


def test_checks_command_lists_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["conformance", "checks"]) == 0
    out = capsys.readouterr().out
    for name in PLATFORM_SUITE.names + CARRIER_SUITE.names:
        assert name in out


def test_status_codes_in_grpc_are_what_the_kit_names() -> None:
    """The kit reports codes by grpc's names; keep them stable for members' CI parsers."""
    assert grpc.StatusCode.UNAUTHENTICATED.name == "UNAUTHENTICATED"


def test_joining_guide_names_every_check() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "joining.md").read_text()
    for name in PLATFORM_SUITE.names + CARRIER_SUITE.names:
        assert f"`{name}`" in guide, name
