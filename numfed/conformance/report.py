"""Check results, the terminal table and the JUnit XML file a member's CI reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["CheckFailed", "CheckResult", "print_table", "write_junit"]


class CheckFailed(Exception):
    """A check found the member breaking its rule; the message says what was seen."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    rule: str
    why: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


def print_table(suite: str, results: Sequence[CheckResult], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"numfed conformance: {suite}", title_justify="left", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("rule, and why it matters", overflow="fold")
    for r in results:
        verdict = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        text = f"{r.rule} {r.why}"
        if r.detail:
            text += f"\n[red]{r.detail}[/red]" if not r.passed else f"\n{r.detail}"
        table.add_row(r.name, verdict, text)
    console.print(table)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")


def write_junit(path: Path, suite: str, results: Sequence[CheckResult]) -> None:
    """One <testsuite> with one <testcase> per check; a failing check carries <failure>."""
    failures = sum(not r.passed for r in results)
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failures), errors="0")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=f"numfed.conformance.{suite}",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            ts,
            "testcase",
            classname=f"numfed.conformance.{suite}",
            name=r.name,
            time=f"{r.seconds:.3f}",
        )
        ET.SubElement(case, "system-out").text = f"{r.rule} {r.why}"
        if not r.passed:
            ET.SubElement(case, "failure", message=r.detail or "failed").text = r.rule
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
