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
    scale = json.loads((tmp_path / "scale.json").read_text())
    assert {r["platforms"] for r in scale} == {7, 20} and all(r["rss_mb"] > 0 for r in scale)
    for png in ("scale_curve.png", "scale_1000.png", "overload.png", "launch_day.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    day = json.loads((tmp_path / "launch_day.json").read_text())
    assert day["offered_per_s"] > 0 and day["timeline"] and not day["crashed"]
    assert sum(1 for row in summary if row["name"].startswith("launch day at 10x")) == 4


def test_summary_met_is_computed_from_the_figures() -> None:
    from bench.suite import target

    assert target("x", 1.0, 2.0, 0.5, higher_is_better=False)["met"] is True
    assert target("x", 1.1, 2.0, 0.5, higher_is_better=False)["met"] is False
    assert target("x", 1.0, 2.0, 0.5, higher_is_better=True)["met"] is True
    assert target("x", 0.9, 2.0, 0.5, higher_is_better=True)["met"] is False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_launch_day_soak_runs_and_writes_its_results_and_plot(tmp_path: Path) -> None:
    """``make soak`` at tiny length: it runs end to end and says what held (no timing is
    asserted: the refusals' speed depends on the machine)."""
    argv = ["--seconds", "3", "--warmup", "2", "--no-doc", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    row = json.loads((tmp_path / "soak.json").read_text())
    assert row["held"]["nothing crashed"] and row["held"]["every accepted release done"], row
    assert row["load_processes"] == 2 and row["offered_per_s"] > 0 and row["timeline"]
    assert row["gateway_loop_lag_readings"] >= 2  # the gateway's metrics: before and after
    assert "gateway_loop_lag_ms" in row["timeline"][0]
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_soak_counts_as_shed_only_the_refusals_the_contract_documents() -> None:
    """Launch day's judge: admission's RESOURCE_EXHAUSTED with its ErrorInfo and RetryInfo, or
    gRPC's own refusal at the gateway's cap with neither (gateway.proto); any other
    RESOURCE_EXHAUSTED is a fault, not a refusal."""
    import grpc
    from grpc_status import rpc_status

    from bench.soak import signalled_refusal
    from numfed.errors import NumfedError, ResourceExhausted
    from numfed.rpc import SERVER_CAP_DETAILS, error_status

    def failed(err: NumfedError | None, details: str = "") -> grpc.aio.AioRpcError:
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = grpc.aio.Metadata()
        if err is not None:
            status = rpc_status.to_status(error_status(err))
            code, details = status.code, status.details
            trailers = grpc.aio.Metadata(*status.trailing_metadata)
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details)

    for reason in ("OVERLOADED", "OVERLOADED_QUEUE_TIMEOUT", "CALLER_OVERLOADED"):
        assert signalled_refusal(failed(ResourceExhausted(reason, "full", retry_after=0.25)))
    assert signalled_refusal(failed(None, SERVER_CAP_DETAILS))
    # Without its RetryInfo, another reason, no status at all, another code: not a refusal.
    assert not signalled_refusal(failed(ResourceExhausted("OVERLOADED", "full")))
    assert not signalled_refusal(failed(ResourceExhausted("RATE_LIMITED", "x", retry_after=1)))
    assert not signalled_refusal(failed(None, "Received message larger than max"))
    assert not signalled_refusal(failed(NumfedError("OVERLOADED", "x", retry_after=1)))


def test_the_soak_plots_each_second_with_the_loop_lag_of_the_readings_around_it() -> None:
    """The gateway's event-loop lag is read every 5 s, and a read may fail (the gateway too
    busy to answer in time, when the lag is worst): each second shows the mean lag between the
    readings around it, never 0 for the seconds whose reading failed."""
    from bench.soak import LagReading, Watched, summarize

    def reading(total: float, count: float) -> LagReading:
        return LagReading(total, count, ((0.01, count), (float("inf"), count)))

    # Read before the surge, at 0, then (the reads at 5 and 10 failed) at 15: 60 samples of
    # 10 ms each between 0 and 15.
    seen = Watched(lag=[(-1, reading(0.0, 0.0)), (0, reading(0.0, 0.0)), (15, reading(0.6, 60))])
    output = {
        "offered_per_s": 1.0,
        "per_second": {str(s): {"ok": 1} for s in range(15)},
        "shed_ms": {},
        "ok_ms": {str(s): [5.0] for s in range(15)},
        "kinds": {},
        "shed_by_kind": {},
        "errors": {},
        "lag_p99_ms": 0.0,
        "releases": 0,
        "watched": {},
    }
    row = summarize([output], seen, 1.0, 15.0, [])
    assert [s["gateway_loop_lag_ms"] for s in row["timeline"]] == [10.0] * 15
    assert row["gateway_loop_lag_mean_ms"] == 10.0 and row["gateway_loop_lag_p99_ms"] == 10.0


def test_launch_day_ratios_agree_with_what_the_soak_says_held() -> None:
    """The summary's four launch-day ratios say met exactly where the soak says held, the
    empty cases included: no release accepted is none left undone, no call refused is no slow
    refusal."""
    from bench.soak import memory_window
    from bench.suite import launch_day_targets

    quiet = {
        "shed": 0,
        "shed_slow": 0,
        "errors": {},
        "releases_accepted": 0,
        "releases_watched": {},
        "memory_window_s": memory_window(3.0),
        "gateway_rss_first_mb": 100.0,
        "gateway_rss_last_mb": 120.0,
        "crashed": [],
    }
    assert [row["met"] for row in launch_day_targets(quiet)] == [True] * 4
    busy = quiet | {
        "shed": 10,
        "shed_slow": 1,
        "errors": {"query error:CANCELLED": 5},
        "releases_accepted": 4,
        "releases_watched": {"done": 3},
        "gateway_rss_last_mb": 151.0,
        "crashed": ["carrier"],
    }
    assert [row["met"] for row in launch_day_targets(busy)] == [False] * 4
    assert launch_day_targets(busy)[0]["value"] == 0.6  # 9 fast of the 15 not answered
