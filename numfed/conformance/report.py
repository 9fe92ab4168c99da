"""Named checks, their results, and the ways a run is reported: a terminal table, compact lines
for CI logs, JUnit XML and JSON.

A :class:`Check` states one rule of the federation in a sentence, why it matters in another, and
the ids of the rules of ``docs/spec/`` it tests; the kit runs each against a member and records a
:class:`Result`. A member may declare expected failures (:class:`Xfails`, tuf-conformance's
format): a listed check that fails is XFAIL, one that passes is XPASS, which fails the run, so the
list stays honest. The run passes (exit code 0) when nothing failed, errored or passed
unexpectedly; the verdict is "conformant" only when, besides, no MUST rule is an expected failure.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from numfed.conformance.spec import RULE_ID, Level
from numfed.errors import InvalidArgument, NumfedError

__all__ = [
    "Check",
    "CheckFailed",
    "Report",
    "Result",
    "Status",
    "Suite",
    "Xfails",
    "kit_version",
    "render",
    "render_compact",
    "write_json",
    "write_junit",
]

Ctx = TypeVar("Ctx")


class CheckFailed(Exception):
    """The member broke the check's rule; the message says how."""


class Status(enum.StrEnum):
    """What became of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    """The member broke the rule."""
    XFAIL = "XFAIL"
    """It failed, and the member listed it as an expected failure."""
    XPASS = "XPASS"
    """It passed, though the member listed it as an expected failure: the list is stale."""
    ERROR = "ERROR"
    """The kit itself failed (a bug in the kit, not a verdict on the member)."""


def kit_version() -> str:
    """The version of numfed this kit is."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("numfed")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Check:
    """One rule a member must keep, and the spec rules it tests."""

    name: str
    rule: str
    why: str
    rule_ids: tuple[str, ...] = ()
    level: Level = Level.MUST
    gate: bool = False
    """When it fails, the checks after it are not run (the target cannot be reached)."""

    @property
    def family(self) -> str:
        """The area of its first rule, e.g. ``PLAT-TRUST``."""
        return self.rule_ids[0].rsplit("-", 1)[0] if self.rule_ids else ""


@dataclass(frozen=True)
class Result:
    check: Check
    status: Status
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status in (Status.PASS, Status.XFAIL)


@dataclass
class Report:
    """The results of one run against one member."""

    suite: str
    target: str
    results: list[Result] = field(default_factory=list)
    kit: str = field(default_factory=kit_version)

    @property
    def passed(self) -> bool:
        """Nothing failed, errored or passed unexpectedly (what a member's CI gates on)."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        """Checks that failed or errored, in order."""
        return [r.check.name for r in self.results if r.status in (Status.FAIL, Status.ERROR)]

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.results)

    @property
    def known_gaps(self) -> list[str]:
        """MUST rules among the expected failures: they keep the verdict "not conformant"."""
        return sorted(
            {
                rule
                for r in self.results
                if r.status is Status.XFAIL and r.check.level is Level.MUST
                for rule in r.check.rule_ids
            }
        )

    @property
    def conformant(self) -> bool:
        return self.passed and not self.known_gaps

    @property
    def verdict(self) -> str:
        if self.conformant:
            return "conformant"
        if self.passed:
            return f"not conformant (known gaps: {', '.join(self.known_gaps)})"
        return "not conformant"


class Xfails:
    """Expected failures in tuf-conformance's format: one entry a line, ``#`` starts a comment.

    An entry names a check (``bundle_rollback_refused``), a rule id (``PLAT-TRUST-5``) or a
    family of rules (``PLAT-TRUST``). Unknown entries are refused, so a typo cannot hide a failure.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = frozenset(entries)

    @classmethod
    def parse(cls, text: str, checks: Sequence[Check]) -> Xfails:
        entries = []
        names = {c.name for c in checks}
        rules = {r for c in checks for r in c.rule_ids}
        families = {r.rsplit("-", 1)[0] for r in rules} | {c.family for c in checks}
        for number, raw in enumerate(text.splitlines(), 1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            if entry not in names | rules | families:
                raise InvalidArgument(
                    "UNKNOWN_XFAIL",
                    f"line {number}: {entry!r} names no check, rule or family of this suite",
                )
            entries.append(entry)
        return cls(entries)

    @classmethod
    def load(cls, path: Path, checks: Sequence[Check]) -> Xfails:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument("BAD_XFAILS", f"cannot read {path}: {exc}") from exc
        return cls.parse(text, checks)

    def expects(self, check: Check) -> bool:
        if check.name in self.entries:
            return True
        return any(r in self.entries or r.rsplit("-", 1)[0] in self.entries for r in check.rule_ids)


CheckFn = Callable[[Ctx], Awaitable[str]]


@dataclass
class Suite(Generic[Ctx]):
    """Checks in the order they run; each returns a one-line detail or raises CheckFailed."""

    name: str
    role: str = "platform"
    checks: list[tuple[Check, CheckFn[Ctx]]] = field(default_factory=list)

    def check(
        self,
        name: str,
        rule: str,
        why: str,
        *,
        rules: Sequence[str] = (),
        level: Level = Level.MUST,
        gate: bool = False,
    ) -> Callable[[CheckFn[Ctx]], CheckFn[Ctx]]:
        for rule_id in rules:
            if not RULE_ID.fullmatch(rule_id):
                raise ValueError(f"{name}: {rule_id!r} is not a rule id")

        def add(fn: CheckFn[Ctx]) -> CheckFn[Ctx]:
            self.checks.append((Check(name, rule, why, tuple(rules), level, gate), fn))
            return fn

        return add

    @property
    def names(self) -> list[str]:
        return [c.name for c, _ in self.checks]

    @property
    def rule_ids(self) -> list[str]:
        """Every rule id some check tests."""
        return [r for c, _ in self.checks for r in c.rule_ids]

    async def run(
        self,
        ctx: Ctx,
        report: Report,
        *,
        only: Sequence[str] = (),
        timeout: float = 30.0,
        xfails: Xfails | None = None,
    ) -> Report:
        """Run the checks (gates always, the others only those named in ``only`` if given) in
        order, each within ``timeout``. A failed gate ends the run there. A context with an
        async ``prepare(check)`` gets it before each check (its failure is the check's)."""
        xfails = xfails or Xfails()
        prepare = getattr(ctx, "prepare", None)
        for check, fn in self.checks:
            if only and check.name not in only and not check.gate:
                continue
            started = time.monotonic()
            status = Status.FAIL
            try:
                async with asyncio.timeout(timeout):
                    if prepare is not None:
                        await prepare(check)
                    detail = await fn(ctx)
                status = Status.PASS
            except CheckFailed as exc:
                detail = str(exc)
            except grpc.aio.AioRpcError as exc:
                detail = f"call failed: {exc.code().name}: {exc.details()}"
            except NumfedError as exc:
                detail = f"{exc.reason}: {exc.message}"
            except TimeoutError:
                detail = f"no answer within {timeout:g} s"
            except Exception as exc:  # the kit's own failure: reported, never a verdict
                status, detail = Status.ERROR, f"kit error: {type(exc).__name__}: {exc}"
            if xfails.expects(check) and status is not Status.ERROR:
                status = Status.XFAIL if status is Status.FAIL else Status.XPASS
                if status is Status.XPASS:
                    detail = f"listed as an expected failure, but passed: {detail}"
            report.results.append(Result(check, status, detail, time.monotonic() - started))
            if check.gate and status in (Status.FAIL, Status.ERROR):
                break
        return report


_MARKS = {
    Status.PASS: "[green]PASS[/]",
    Status.FAIL: "[bold red]FAIL[/]",
    Status.XFAIL: "[yellow]XFAIL[/]",
    Status.XPASS: "[bold red]XPASS[/]",
    Status.ERROR: "[bold red]ERROR[/]",
}


def _summary(report: Report) -> str:
    counts = ", ".join(
        f"{report.count(s)} {s.value.lower()}"
        for s in (Status.FAIL, Status.XFAIL, Status.XPASS, Status.ERROR)
        if report.count(s)
    )
    passed = report.count(Status.PASS)
    return f"{passed} of {len(report.results)} checks passed" + (f" ({counts})" if counts else "")


def render(report: Report, console: Console | None = None) -> None:
    """Print the results as a table, then one line with the verdict."""
    console = console or Console()
    table = Table(title=f"{report.suite}: {report.target}", title_justify="left", show_lines=True)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("rule, and why it matters", overflow="fold")
    table.add_column("result", overflow="fold")
    for r in report.results:
        rules = f" [dim]({', '.join(r.check.rule_ids)})[/]" if r.check.rule_ids else ""
        table.add_row(
            _MARKS[r.status],
            r.check.name,
            f"{r.check.rule}{rules}\n[dim]{r.check.why}[/]",
            r.detail,
        )
    console.print(table)
    style = "green" if report.conformant else "bold red"
    console.print(f"{_summary(report)}: [{style}]{report.verdict}[/]")


def render_compact(report: Report, console: Console | None = None) -> None:
    """One line per check (its failure's detail indented below it), then the verdict: for CI
    logs, where a table wrapped at 80 columns is hard to read."""
    console = console or Console()
    console.print(f"{report.suite}: {report.target} (kit {report.kit})", markup=False)
    for r in report.results:
        rules = ",".join(r.check.rule_ids)
        console.print(
            f"{r.status.value:<5} {r.check.name} [{rules}] {r.seconds:.2f}s",
            markup=False,
            soft_wrap=True,
        )
        if r.status is not Status.PASS:
            console.print(f"      {r.detail}", markup=False, soft_wrap=True)
    console.print(f"{_summary(report)}: {report.verdict}", markup=False, soft_wrap=True)


def write_junit(report: Report, path: Path) -> None:
    """A JUnit XML file (one testsuite, one testcase per check) for the member's CI."""
    failing = (Status.FAIL, Status.XPASS)
    suite = ET.Element(
        "testsuite",
        name=report.suite,
        tests=str(len(report.results)),
        failures=str(sum(r.status in failing for r in report.results)),
        errors=str(report.count(Status.ERROR)),
        skipped=str(report.count(Status.XFAIL)),
        time=f"{sum(r.seconds for r in report.results):.3f}",
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="target", value=report.target)
    ET.SubElement(props, "property", name="kit", value=report.kit)
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    for r in report.results:
        case = ET.SubElement(
            suite, "testcase", classname=report.suite, name=r.check.name, time=f"{r.seconds:.3f}"
        )
        text = (
            f"Rule: {r.check.rule}\nRule ids: {', '.join(r.check.rule_ids)}\n"
            f"Why: {r.check.why}\nFound: {r.detail}\n"
        )
        if r.status in failing:
            ET.SubElement(case, "failure", message=r.detail).text = text
        elif r.status is Status.ERROR:
            ET.SubElement(case, "error", message=r.detail).text = text
        elif r.status is Status.XFAIL:
            ET.SubElement(case, "skipped", message=f"expected failure: {r.detail}")
        else:
            ET.SubElement(case, "system-out").text = r.detail
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def report_json(report: Report) -> dict[str, Any]:
    """The run as JSON-ready data: one entry per result, and the verdict."""
    return {
        "suite": report.suite,
        "target": report.target,
        "kit": report.kit,
        "passed": report.passed,
        "conformant": report.conformant,
        "verdict": report.verdict,
        "results": [
            {
                "check": r.check.name,
                "rule_ids": list(r.check.rule_ids),
                "level": r.check.level.value,
                "status": r.status.value,
                "detail": r.detail,
                "seconds": round(r.seconds, 3),
                "kit": report.kit,
            }
            for r in report.results
        ],
    }


def write_json(report: Report, path: Path) -> None:
    """The run as one JSON file, read alike by a member's CI and the federation's dashboard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n")
