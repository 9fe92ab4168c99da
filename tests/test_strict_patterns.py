"""No validation pattern in our code can be satisfied by part of its input.

``re.match`` anchors only the start and ``$`` matches before a trailing newline, so ``^x$``
accepts ``"x\\n"``; ``\\d`` and ``str.isdigit()`` take every script's digits (``"١٢٣"``). The
code uses ``fullmatch`` with explicit ASCII classes; this scan keeps the mistake from coming
back in any module of ours (generated ``numfed/v1/`` aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("numfed", "gateway", "carrier_adapters", "platform_stubs", "bench")
GENERATED = ROOT / "numfed" / "v1"
_UNICODE_DIGIT_CHECKS = frozenset({"isdigit", "isdecimal", "isnumeric"})


def _modules() -> list[Path]:
    return sorted(
        p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if GENERATED not in p.parents and ".venv" not in p.parts
    )


def _is_re_call(node: ast.Call, *names: str) -> bool:
    f = node.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr in names
        and isinstance(f.value, ast.Name)
        and f.value.id == "re"
    )


def _loose_pattern(pattern: str) -> str | None:
    """Why ``pattern`` would accept more than it says, or None."""
    unescaped = pattern.replace("\\\\", "")
    if "$" in unescaped.replace("\\$", ""):
        return "a $ anchor (matches before a trailing newline): use fullmatch"
    if "\\d" in unescaped or "\\w" in unescaped:
        return "\\d or \\w (any script's digits and letters): use [0-9] / [A-Za-z0-9_]"
    return None


def problems(source: str, name: str = "<source>") -> list[str]:
    """Every loose pattern or check in one module's source."""
    tree = ast.parse(source, name)
    compiled: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and _is_re_call(node.value, "compile")
        ):
            compiled |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{name}:{node.lineno}"
        if _is_re_call(node, "compile", "match", "fullmatch", "search") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                why = _loose_pattern(first.value)
                if why:
                    found.append(f"{where}: pattern {first.value!r} has {why}")
        if _is_re_call(node, "match", "search"):
            found.append(f"{where}: re.{node.func.attr}() (partial match): use re.fullmatch")  # type: ignore[attr-defined]
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr in ("match", "search")
            and isinstance(f.value, ast.Name)
            and f.value.id in compiled
        ):
            found.append(f"{where}: {f.value.id}.{f.attr}() (partial match): use .fullmatch")
        if isinstance(f, ast.Attribute) and f.attr in _UNICODE_DIGIT_CHECKS and not node.args:
            found.append(f"{where}: str.{f.attr}() takes any script's digits: use [0-9]")
    return found


def test_the_scan_finds_each_kind_of_loose_check() -> None:
    bad = """
import re
_ID = re.compile(r"^[a-z]{1,32}$")
_N = re.compile(r"[0-9]+")
_D = re.compile(r"root-(\\d+)")
ok = _N.match(x)
ok = re.match(r"[a-z]+", x)
ok = x.isdigit()
"""
    found = problems(bad)
    assert len(found) == 5, found
    good = """
import re
_ID = re.compile(r"[a-z]{1,32}")
_PRICE = re.compile(r"\\$[0-9]+")
ok = _ID.fullmatch(x) and re.fullmatch(r"[0-9]+", x)
"""
    assert problems(good) == []


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_validates_with_a_partial_match(module: Path) -> None:
    assert problems(module.read_text(), str(module.relative_to(ROOT))) == []
