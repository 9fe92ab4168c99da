"""``numfed conformance platform`` as a member's CI runs it: a process, a table, JUnit XML."""

from __future__ import annotations

import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from numfed.conformance.platform import CHECKS, PlatformTarget
from tests.conformance.broken import leaks_account_id
from tests.conformance.conftest import KitRun


async def _cli(target: PlatformTarget, junit: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        "conformance",
        "platform",
        "--target",
        target.target,
        "--id",
        target.platform_id,
        "--gateway-listen",
        target.gateway_listen,
        "--pki",
        str(target.pki_dir),
        "--trust",
        str(target.trust_dir),
        "--junit",
        str(junit),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_passes_writes_junit_and_exits_zero(kit: KitRun, tmp_path: Path) -> None:
    handle, target = await kit.start("douyin")
    try:
        code, out = await _cli(target, tmp_path / "kit.xml")
    finally:
        await handle.stop(0)
    assert code == 0, out
    assert f"{len(CHECKS)} passed, 0 failed" in out
    suite = ET.parse(tmp_path / "kit.xml").getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == str(len(CHECKS)) and suite.get("failures") == "0"
    assert {c.get("name") for c in suite.iter("testcase")} == {c.name for c in CHECKS}


async def test_cli_names_the_failing_check_and_exits_one(kit: KitRun, tmp_path: Path) -> None:
    handle, target = await kit.start("douyin", leaks_account_id)
    try:
        code, out = await _cli(target, tmp_path / "kit.xml")
    finally:
        await handle.stop(0)
    assert code == 1, out
    assert "1 failed" in out
    root = ET.parse(tmp_path / "kit.xml").getroot()
    failures = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failures == ["summaries.masked"]
