"""The normative spec as data: the rules of ``docs/spec/``, their ids and levels.

A rule is one markdown list item that starts with its id in bold (``- **PLAT-TRUST-5** …``) and
uses one RFC 2119 key word class (MUST / MUST NOT, SHOULD / SHOULD NOT, MAY). The kit's checks
name the rule ids they test (:attr:`numfed.conformance.report.Check.rule_ids`), so the two can be
compared: :func:`uncovered` lists the rules no check tests.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from numfed.errors import FailedPrecondition

__all__ = [
    "RULE_ID",
    "Level",
    "Rule",
    "default_spec_dir",
    "load_rules",
    "parse_rules",
    "uncovered",
]

RULE_ID = re.compile(r"(PLAT|CARR)-[A-Z]+-(?:[0-9]+|[A-Z]+(?:-[A-Z]+)*)")
"""A rule id: ``PLAT-<AREA>-<n>`` or ``CARR-<AREA>-<n>`` (``PLAT-CLAIM-KEY-CARRIER`` keeps its
older name)."""
_ITEM = re.compile(r"- \*\*(" + RULE_ID.pattern + r")\*\*\s+(.*)")
_KIT = re.compile(r".*Kit: ((?:`[a-z0-9_]+`(?:, )?)+)\.\s*", re.DOTALL)
"""A rule's text that ends with the checks that test it (matched whole, so the last "Kit:")."""
_WORDS = {
    "MUST": re.compile(r"\bMUST(?: NOT)?\b"),
    "SHOULD": re.compile(r"\bSHOULD(?: NOT)?\b"),
    "MAY": re.compile(r"\bMAY\b"),
}
SPEC_FILES = {"PLAT": "platform.md", "CARR": "carrier.md"}


class Level(enum.StrEnum):
    """A rule's RFC 2119 key word class."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


@dataclass(frozen=True)
class Rule:
    """One rule of the spec."""

    id: str
    level: Level
    text: str
    source: str
    """The spec file it is stated in (``platform.md``)."""
    kit: tuple[str, ...] = ()
    """The kit checks the rule's text names (``Kit: `check_a`, `check_b`.``)."""

    @property
    def role(self) -> str:
        """``platform`` or ``carrier``."""
        return "platform" if self.id.startswith("PLAT-") else "carrier"


def default_spec_dir() -> Path:
    """``docs/spec`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "docs" / "spec"


def _level(rule_id: str, text: str) -> Level:
    found = [Level(word) for word, pattern in _WORDS.items() if pattern.search(text)]
    if len(found) != 1:
        raise FailedPrecondition(
            "BAD_SPEC",
            f"rule {rule_id} uses {len(found)} key word classes ({found}); one is required",
        )
    return found[0]


def parse_rules(text: str, source: str) -> list[Rule]:
    """The rules of one spec file, in order."""
    rules: list[Rule] = []
    current: list[str] | None = None
    rule_id = ""

    def close() -> None:
        if current is None:
            return
        body = " ".join(part.strip() for part in current)
        kit = _KIT.fullmatch(body)
        names = tuple(re.findall(r"`([a-z0-9_]+)`", kit.group(1))) if kit else ()
        rules.append(Rule(rule_id, _level(rule_id, body), body, source, names))

    for line in text.splitlines():
        m = _ITEM.fullmatch(line)
        if m:
            close()
            rule_id, current = m.group(1), [m.group(3)]
        elif current is not None and line.startswith("  ") and line.strip():
            current.append(line)
        else:
            close()
            current = None
    close()
    return rules


def load_rules(spec_dir: Path | None = None) -> list[Rule]:
    """Every rule of ``platform.md`` and ``carrier.md`` in ``spec_dir`` (default: this source
    tree's ``docs/spec``); FAILED_PRECONDITION ``SPEC_NOT_FOUND`` when they are not there."""
    where = spec_dir or default_spec_dir()
    rules: list[Rule] = []
    for name in SPEC_FILES.values():
        path = where / name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FailedPrecondition(
                "SPEC_NOT_FOUND", f"cannot read {path} ({exc}); pass --spec DIR"
            ) from exc
        rules += parse_rules(text, name)
    ids = [r.id for r in rules]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise FailedPrecondition("BAD_SPEC", f"rule ids stated twice: {repeated}")
    return rules


def uncovered(rules: Iterable[Rule], tested: Sequence[str]) -> list[Rule]:
    """The rules among ``rules`` whose id no check tests (``tested``: every rule id the kit's
    checks name)."""
    named = set(tested)
    return [r for r in rules if r.id not in named]
