"""The fan-out benchmark still runs end to end (tiny size; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_fanout_benchmark_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fanout",
            "--platforms",
            "2",
            "--seconds",
            "0.5",
            "--in-flight",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert {r["impl"] for r in rows} == {"gateway", "bare proxy"}
    assert all(r["queries"] > 0 and r["cpu_ms_per_query"] > 0 for r in rows)
