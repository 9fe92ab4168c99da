"""Every benchmark still runs end to end, once, at tiny size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)  # every benchmark, the holder's page's included, once at tiny size
def test_the_benchmark_suite_runs_and_writes_results_summary_and_plots(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--no-doc", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) >= 8
    for row in summary:
        assert set(row) == {"name", "value", "reference", "ratio", "target", "met"}
        assert isinstance(row["met"], bool) and row["reference"] > 0
    observed = json.loads((tmp_path / "observability.json").read_text())
    assert [m["mode"] for m in observed["modes"]] == ["off", "metrics", "traced", "sampled"]
    assert all(m["queries"] > 0 for m in observed["modes"])
    assert observed["modes"][1]["scrapes"] > 0  # the metrics endpoint was read meanwhile
    assert observed["modes"][2]["spans_received"] > 0  # every query traced
    assert observed["modes"][0]["spans_received"] == 0
    fanout = json.loads((tmp_path / "fanout.json").read_text())
    assert {r["impl"] for r in fanout} == {"gateway", "bare proxy"}
    assert all(r["queries"] > 0 and r["cpu_ms_per_query"] > 0 for r in fanout)
    page = json.loads((tmp_path / "portal.json").read_text())
    assert page["served"] > 0 and page["sustainable_rps"] > 0
    for png in ("scale_curve.png", "overload.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_met_is_computed_from_the_figures() -> None:
    from bench.suite import target

    assert target("x", 1.0, 2.0, 0.5, higher_is_better=False)["met"] is True
    assert target("x", 1.1, 2.0, 0.5, higher_is_better=False)["met"] is False
    assert target("x", 1.0, 2.0, 0.5, higher_is_better=True)["met"] is True
    assert target("x", 0.9, 2.0, 0.5, higher_is_better=True)["met"] is False
