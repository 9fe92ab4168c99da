"""`numfed demo` end to end: twelve real processes, the holder's journey, exit status 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_journey_and_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "numfed", "demo", "--workdir", str(tmp_path / "fed")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "every expectation held" in result.stdout
    assert "✗" not in result.stdout
    out = result.stdout
    assert out.startswith("numfed demo") and "Who is who." in out
    # The story's words: a release table says what was released, a fresh number has nothing.
    assert "released 6 binding(s) of previous holders" in out
    assert "nothing of previous holders on any platform: nothing to release" in out
    assert "found all 0" not in out and "re-released" not in out
    # The proof is printed whole, so `numfed verify TOKEN` can be followed.
    token = next(line for line in out.splitlines() if line.startswith("nfp1."))
    verified = subprocess.run(
        [sys.executable, "-m", "numfed", "verify", token, "--trust", str(tmp_path / "fed/trust")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (tmp_path / "fed" / "subscribers.json").exists()
    # The gateway, three carriers and eight platforms ran, each with its own log.
    logs = list((tmp_path / "fed" / "logs").glob("*.log"))
    assert len(logs) == 1 + 3 + 8


def test_demo_web_serves_the_page_and_names_a_subscriber_to_try(tmp_path: Path) -> None:
    """`numfed demo --web`: the federation with the holder's page, its address and a test
    subscriber printed, running until Ctrl-C; the subscribers' file lists them all."""
    import json
    import os
    import re
    import signal
    import time
    import urllib.request

    workdir = tmp_path / "fed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "numfed", "demo", "--web", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while not any("Press Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)[-3000:]
            lines.append(line)
        out = "".join(lines)
        assert out.startswith("numfed demo --web") and "Who is who." in out
        page = re.search(r"Try it: open (http://127\.0\.0\.1:\d+/)", out)
        number = re.search(r"number\s+(\+86\d+)", out)
        name = re.search(r"name\s+(\S+)", out)
        assert page and number and name, out
        with urllib.request.urlopen(page.group(1), timeout=10) as answer:
            html = answer.read().decode()
        assert answer.status == 200 and "号码持有人服务" in html
        listed = json.loads((workdir / "subscribers.json").read_text(encoding="utf-8"))
        mine = [s for s in listed["subscribers"] if s["number"] == number.group(1)]
        assert mine and mine[0]["name"] == name.group(1) and mine[0]["prior_bindings"] > 0
        assert listed["carriers"][mine[0]["carrier"]]["holder_page"] == page.group(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_without_workdir_leaves_no_keys_behind() -> None:
    """The temporary federation (private keys included) is removed, and the demo says so."""
    import os
    import tempfile

    # Its own temporary directory, short: the platforms' admin sockets go there too, and a
    # socket path has at most 107 bytes (pytest's tmp_path under xdist is longer).
    with tempfile.TemporaryDirectory(prefix="nfd") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        env.pop("XDG_RUNTIME_DIR", None)
        result = subprocess.run(
            [sys.executable, "-m", "numfed", "demo"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:]
        assert "removed at the end" in result.stdout
        assert list(Path(tmp).iterdir()) == []
