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
    # The gateway, three carriers and eight platforms ran, each with its own log.
    logs = list((tmp_path / "fed" / "logs").glob("*.log"))
    assert len(logs) == 1 + 3 + 8
