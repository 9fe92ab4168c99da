"""A real Prometheus server for tests and pictures: it scrapes numfed processes every second.

It runs the machine's ``prometheus`` binary (Debian's package; ``.ci/run`` installs it) with its
config and storage in a temporary directory and its web API on a free loopback port, and
answers PromQL through the HTTP API, as Grafana would ask it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PROMETHEUS", "PrometheusUnavailable", "TempPrometheus"]

PROMETHEUS = "/usr/bin/prometheus"


class PrometheusUnavailable(Exception):
    pass


class TempPrometheus:
    """``prometheus`` scraping ``targets`` (process name -> HOST:PORT) every ``interval``."""

    def __init__(self, root: Path, targets: Mapping[str, str], *, interval: str = "1s") -> None:
        self.root = root
        self.targets = dict(targets)
        self.interval = interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        jobs = "".join(
            f"      - targets: ['{endpoint}']\n        labels: {{process: '{name}'}}\n"
            for name, endpoint in sorted(self.targets.items())
        )
        return (
            "global:\n"
            f"  scrape_interval: {self.interval}\n"
            f"  evaluation_interval: {self.interval}\n"
            "scrape_configs:\n"
            "  - job_name: numfed\n"
            f"    scrape_timeout: {self.interval}\n"
            "    static_configs:\n" + jobs
        )

    def start(self, timeout: float = 30.0) -> TempPrometheus:
        from numfed.federation import free_ports

        binary = shutil.which("prometheus") or PROMETHEUS
        if not Path(binary).exists():
            raise PrometheusUnavailable(f"no prometheus binary at {PROMETHEUS}")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(self._config())
        self.port = free_ports(1)[0]
        log = (self.root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusUnavailable(
                    "prometheus exited: " + (self.root / "prometheus.log").read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusUnavailable("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant vector: [{"metric": {labels}, "value": [t, "v"]}, …]."""
        data = self._get("/api/v1/query", {"query": promql})
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of a query that yields at most one series (None: none)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{promql} gave {len(result)} series")
        return float(result[0]["value"][1])

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """A range: [{"metric": {labels}, "values": [[t, "v"], …]}, …]."""
        data = self._get(
            "/api/v1/query_range",
            {"query": promql, "start": str(start), "end": str(end), "step": str(step)},
        )
        result: list[dict[str, Any]] = data["result"]
        return result
