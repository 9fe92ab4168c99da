"""``numfed conformance`` end to end: a platform process, the kit as a process, real exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from numfed.conformance import PLATFORM_SUITE
from numfed.federation import create_federation
from numfed.identity import PeerId, Role
from numfed.testing.federation import wait_serving


async def _numfed(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_platform_kit_as_processes_exit_codes_and_junit(tmp_path: Path) -> None:
    layout = create_federation(
        tmp_path / "fed",
        carriers=(),
        platforms=("weibo",),
        platform_knobs={"weibo": {"conformance": True, "seed_scenario": False}},
    )
    config = str(layout.platform_configs["weibo"])
    platform = subprocess.Popen(  # noqa: ASYNC220 (a server for the test's whole length)
        [sys.executable, "-m", "numfed", "platform", "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = layout.platform_endpoints["weibo"]
        await wait_serving(endpoint, layout.pki_dir, PeerId(Role.PLATFORM, "weibo"))
        common = ["--target", endpoint, "--platform-id", "weibo", "--pki", str(layout.pki_dir)]
        junit = tmp_path / "kit.xml"
        code, out = await _numfed(
            "conformance", "platform", *common,
            "--listen", layout.gateway_endpoint, "--junit", str(junit),
        )  # fmt: skip
        assert code == 0, out
        assert f"{len(PLATFORM_SUITE.names)} of {len(PLATFORM_SUITE.names)} checks passed" in out
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None and suite.get("failures") == "0"

        # Another member's certificate answers at the target: the kit refuses to vouch for it.
        code, out = await _numfed(
            "conformance", "platform", "--target", endpoint, "--platform-id", "taobao",
            "--pki", str(layout.pki_dir), "--listen", layout.gateway_endpoint,
            "--junit", str(junit),
        )  # fmt: skip
        assert code == 1, out
        assert "not conformant" in out
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None and int(suite.get("failures") or 0) >= 1
        failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
        assert "trust_bundle_accepted" in failed
    finally:
        platform.send_signal(signal.SIGTERM)
        assert platform.wait(10) == 0


async def test_unknown_check_is_a_usage_error(tmp_path: Path) -> None:
    code, out = await _numfed(
        "conformance", "carrier", "--target", "127.0.0.1:1", "--carrier-id", "cmcc",
        "--pki", str(tmp_path), "--trust", str(tmp_path), "--only", "no_such_check",
    )  # fmt: skip
    assert code == 2
    assert "UNKNOWN_CHECK" in out
