"""The spec, the kit and the broken members agree: every MUST rule of ``docs/spec/`` has a kit
check, a broken member the kit catches, and SDK code that names it; every check and broken
member names rules that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from numfed import cli
from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE
from numfed.conformance.report import Suite
from numfed.conformance.spec import Level, load_rules, parse_rules, uncovered
from numfed.errors import FailedPrecondition
from tests.conformance.broken import BROKEN_CARRIERS, BROKEN_PLATFORMS

ROOT = Path(__file__).parents[2]
RULES = load_rules()
BY_ID = {r.id: r for r in RULES}
SUITES: dict[str, Suite[Any]] = {"platform": PLATFORM_SUITE, "carrier": CARRIER_SUITE}
MUST = [r for r in RULES if r.level is Level.MUST]


def test_the_spec_states_rules_for_both_roles_with_one_key_word_each() -> None:
    assert {r.role for r in MUST} == {"platform", "carrier"}
    assert len(BY_ID) == len(RULES)
    for r in RULES:
        assert r.id.startswith("PLAT-" if r.source == "platform.md" else "CARR-"), r.id


def test_a_rule_with_two_key_words_or_none_is_refused() -> None:
    with pytest.raises(FailedPrecondition):
        parse_rules("- **PLAT-X-1** A platform MUST do this and SHOULD do that.\n", "t")
    with pytest.raises(FailedPrecondition):
        parse_rules("- **PLAT-X-2** A platform does this.\n", "t")
    (rule,) = parse_rules(
        "- **PLAT-X-3** A platform MUST NOT do this,\n  on two lines. Kit: `a_check`.\n", "t"
    )
    assert (rule.level, rule.kit) == (Level.MUST, ("a_check",))


def test_every_must_rule_has_a_check() -> None:
    tested = PLATFORM_SUITE.rule_ids + CARRIER_SUITE.rule_ids
    assert [r.id for r in uncovered(MUST, tested)] == []


def test_every_check_tests_rules_of_its_role_at_their_level() -> None:
    for role, suite in SUITES.items():
        for check, _ in suite.checks:
            for rule_id in check.rule_ids:
                assert rule_id in BY_ID, (check.name, rule_id)
                rule = BY_ID[rule_id]
                assert (rule.role, rule.level) == (role, check.level), (check.name, rule_id)


def test_the_spec_names_the_checks_that_test_each_rule() -> None:
    for rule in RULES:
        suite = SUITES[rule.role]
        checks = tuple(c.name for c, _ in suite.checks if rule.id in c.rule_ids)
        assert rule.kit == checks, rule.id


def test_every_must_rule_has_a_broken_member_and_each_breaks_a_must_rule() -> None:
    broken = {
        "platform": {m.breaks for m in BROKEN_PLATFORMS.values()},
        "carrier": {m.breaks for m in BROKEN_CARRIERS.values()},
    }
    for role, ids in broken.items():
        for rule_id in ids:
            assert BY_ID[rule_id].level is Level.MUST and BY_ID[rule_id].role == role, rule_id
    assert [r.id for r in MUST if r.id not in broken[r.role]] == []


def test_the_code_that_keeps_each_must_rule_names_it() -> None:
    """Rule ids appear in the docstrings (or comments) of the SDK and core code that enforces
    them, outside the kit: a reader goes from the rule to the code."""
    text = ""
    for package in ("numfed", "platform_stubs", "carrier_adapters"):
        for path in (ROOT / package).rglob("*.py"):
            if "conformance" not in path.parts and "v1" not in path.parts:
                text += path.read_text(encoding="utf-8")
    named = set(re.findall(r"\b(?:PLAT|CARR)-[A-Z]+-(?:[0-9]+\b|KEY-CARRIER)", text))
    assert sorted(r.id for r in MUST if r.id not in named) == []


def test_checks_command_lists_checks_and_no_must_rule_without_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["conformance", "checks"]) == 0
    out = capsys.readouterr().out
    assert "MUST rules with no check: none" in out
    for name in PLATFORM_SUITE.names + CARRIER_SUITE.names:
        assert name in out
    should = [r.id for r in RULES if r.level is Level.SHOULD]
    assert all(r in out for r in should)


def test_checks_command_fails_when_a_must_rule_has_no_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    for name in ("platform.md", "carrier.md"):
        (spec / name).write_text((ROOT / "docs" / "spec" / name).read_text())
    with (spec / "platform.md").open("a") as f:
        f.write("\n- **PLAT-NEW-1** A platform MUST do something new. Kit: `nothing_yet`.\n")
    assert cli.main(["conformance", "checks", "--spec", str(spec)]) == 1
    assert "MUST rules with no check: PLAT-NEW-1" in capsys.readouterr().out


def test_checks_json_lists_every_check_with_its_rules(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert cli.main(["conformance", "checks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["check"] for d in data] == PLATFORM_SUITE.names + CARRIER_SUITE.names
    first = data[0]
    assert set(first) == {"check", "rule_ids", "level", "role", "rule", "why"}
    assert (first["check"], first["role"], first["level"]) == (
        "target_reachable",
        "platform",
        "MUST",
    )


def test_joining_guide_lists_the_checks_as_the_kit_generates_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["conformance", "checks", "--markdown"]) == 0
    tables = capsys.readouterr().out.strip()
    guide = (ROOT / "docs" / "joining.md").read_text()
    assert tables in guide, "regenerate with: numfed conformance checks --markdown"
