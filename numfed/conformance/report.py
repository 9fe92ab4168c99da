"""Named checks, their results, and the two ways a run is reported: a terminal table and JUnit XML.

A :class:`Check` states one rule of the federation in a sentence and why it matters in another;
the kit runs each against a member and records a :class:`Result`. The run passes only when every
check passes (exit code 0).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from numfed.errors import NumfedError

__all__ = ["Check", "CheckFailed", "Report", "Result", "Suite", "render", "write_junit"]

Ctx = TypeVar("Ctx")


class CheckFailed(Exception):
    """The member broke the check's rule; the message says how."""


@dataclass(frozen=True)
class Check:
    """One rule a member must keep."""

    name: str
    rule: str
    why: str


@dataclass(frozen=True)
class Result:
    check: Check
    passed: bool
    detail: str
    seconds: float


@dataclass
class Report:
    """The results of one run against one member."""

    suite: str
    target: str
    results: list[Result] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.check.name for r in self.results if not r.passed]


CheckFn = Callable[[Ctx], Awaitable[str]]


@dataclass
class Suite(Generic[Ctx]):
    """Checks in the order they run; each returns a one-line detail or raises CheckFailed."""

    name: str
    checks: list[tuple[Check, CheckFn[Ctx]]] = field(default_factory=list)

    def check(self, name: str, rule: str, why: str) -> Callable[[CheckFn[Ctx]], CheckFn[Ctx]]:
        def add(fn: CheckFn[Ctx]) -> CheckFn[Ctx]:
            self.checks.append((Check(name, rule, why), fn))
            return fn

        return add

    @property
    def names(self) -> list[str]:
        return [c.name for c, _ in self.checks]

    async def run(
        self, ctx: Ctx, report: Report, *, only: Sequence[str] = (), timeout: float = 30.0
    ) -> Report:
        """Run the checks (those named in ``only``, if given) in order, each within ``timeout``."""
        import asyncio

        for check, fn in self.checks:
            if only and check.name not in only:
                continue
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    detail = await fn(ctx)
                passed = True
            except CheckFailed as exc:
                passed, detail = False, str(exc)
            except grpc.aio.AioRpcError as exc:
                passed, detail = False, f"call failed: {exc.code().name}: {exc.details()}"
            except NumfedError as exc:
                passed, detail = False, f"{exc.reason}: {exc.message}"
            except TimeoutError:
                passed, detail = False, f"no answer within {timeout:g} s"
            report.results.append(Result(check, passed, detail, time.monotonic() - started))
        return report


def render(report: Report, console: Console | None = None) -> None:
    """Print the results as a table, then one line with the verdict."""
    console = console or Console()
    table = Table(title=f"{report.suite}: {report.target}", title_justify="left", show_lines=True)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("rule, and why it matters", overflow="fold")
    table.add_column("result", overflow="fold")
    for r in report.results:
        mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(mark, r.check.name, f"{r.check.rule}\n[dim]{r.check.why}[/]", r.detail)
    console.print(table)
    passed = sum(r.passed for r in report.results)
    verdict = "[green]conformant[/]" if report.passed else "[bold red]not conformant[/]"
    console.print(f"{passed} of {len(report.results)} checks passed: {verdict}")


def write_junit(report: Report, path: Path) -> None:
    """A JUnit XML file (one testsuite, one testcase per check) for the member's CI."""
    suite = ET.Element(
        "testsuite",
        name=report.suite,
        tests=str(len(report.results)),
        failures=str(len(report.failed)),
        errors="0",
        time=f"{sum(r.seconds for r in report.results):.3f}",
    )
    ET.SubElement(
        ET.SubElement(suite, "properties"), "property", name="target", value=report.target
    )
    for r in report.results:
        case = ET.SubElement(
            suite, "testcase", classname=report.suite, name=r.check.name, time=f"{r.seconds:.3f}"
        )
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.detail)
            failure.text = f"Rule: {r.check.rule}\nWhy: {r.check.why}\nFound: {r.detail}\n"
        else:
            ET.SubElement(case, "system-out").text = r.detail
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
