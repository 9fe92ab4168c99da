"""Logs an operator can read: retries summarised instead of repeated, JSON on request, and a
platform waiting for its gateway says so once, not in a multi-line repr per retry."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numfed.federation import create_federation
from numfed.observability.logs import RetrySummary


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_operation_logs_its_first_failure_a_summary_a_minute_and_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = logging.getLogger("numfed.test.retries")
    retries = RetrySummary(log, "platform weibo unreachable", "platform weibo back", clock=clock)
    with caplog.at_level(logging.INFO, logger="numfed.test.retries"):
        for _ in range(12):  # a retry every 5 s for a minute
            retries.failed("UNAVAILABLE")
            clock.now += 5
        retries.failed("UNAVAILABLE")
        retries.succeeded()
        retries.succeeded()  # working: nothing more to say
    assert [r.getMessage() for r in caplog.records] == [
        "platform weibo unreachable (UNAVAILABLE); retrying",
        "platform weibo unreachable (UNAVAILABLE), 12 retries in the last minute",
        "platform weibo back after 13 retries",
    ]
    assert retries.failures == 0


def test_a_platform_waiting_for_its_gateway_logs_json_lines_and_one_retry_line(
    tmp_path: Path,
) -> None:
    layout = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "numfed",
            "platform",
            "serve",
            "--config",
            str(layout.platform_configs["weibo"]),
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    try:
        # No gateway is running: the platform retries its trust bundle fetch every few
        # hundred ms (growing to 5 s) and must say so once.
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(json.loads(line))
            if "retrying" in lines[-1]["message"]:
                break
        time.sleep(4)  # several more retries happen meanwhile
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 0
    messages = [entry["message"] for entry in lines]
    assert {entry["process"] for entry in lines} == {"platform-weibo"}
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    assert (
        messages[0]
        == f"listening on {layout.platform_endpoints['weibo']} (numfed.v1.PlatformService)"
    )
    retrying = [m for m in messages if "trust bundle" in m]
    assert retrying == ["gateway not reachable for the trust bundle (UNAVAILABLE); retrying"]
    assert messages[-3:] == [
        "stopping (SIGTERM)",
        "numfed.v1.PlatformAdminService NOT_SERVING: stopping",  # its operator's socket
        "stopped",
    ]


def test_a_library_repeating_itself_is_heard_once_a_minute() -> None:
    """An OTLP collector that is away makes OpenTelemetry's exporter warn at every export."""
    from numfed.observability.logs import _AtMostOncePerMinute

    clock = Clock()
    gate = _AtMostOncePerMinute(clock)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)

    exporter = "opentelemetry.exporter.otlp.proto.grpc.exporter"
    passed = []
    for _ in range(30):  # every 5 s for two and a half minutes
        passed.append(gate.filter(record(exporter, "Failed to export %s to %s")))
        assert gate.filter(record("gateway.server", "carrier %s synced"))  # ours: always
        clock.now += 5
    assert passed.count(True) == 3
