"""A serving process with a metrics endpoint reports how late its event loop runs what is
ready (``numfed_event_loop_lag_seconds``): a loop held up shows on ``/metrics``."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from numfed.config import Telemetry
from numfed.federation import free_ports
from numfed.serving import process_telemetry


def lag_figures(exposition: str) -> tuple[float, float]:
    """(sum, count) of numfed_event_loop_lag_seconds in a Prometheus text exposition."""
    for family in text_string_to_metric_families(exposition):
        if family.name == "numfed_event_loop_lag_seconds":
            values = {s.name: s.value for s in family.samples}
            return (
                values["numfed_event_loop_lag_seconds_sum"],
                values["numfed_event_loop_lag_seconds_count"],
            )
    raise AssertionError("no numfed_event_loop_lag_seconds on /metrics")


@pytest.mark.timeout(30)
async def test_a_loop_held_up_shows_as_lag_on_the_metrics_endpoint() -> None:
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    async with (
        process_telemetry("lag-probe", Telemetry(metrics_listen=listen)),
        httpx.AsyncClient(base_url=f"http://{listen}", timeout=5) as http,
    ):
        await asyncio.sleep(0.6)  # a sample or two on an idle loop
        lag_sum, count = lag_figures((await http.get("/metrics")).text)
        assert count >= 1 and lag_sum < 0.2 * count  # idle: a turn is quick
        time.sleep(0.8)  # noqa: ASYNC251  # the loop held up, as a burst of work would hold it
        await asyncio.sleep(0.4)
        later_sum, later_count = lag_figures((await http.get("/metrics")).text)
        assert later_count > count
        assert later_sum - lag_sum >= 0.5  # the timer due during the hold-up ran that late


@pytest.mark.timeout(30)
async def test_without_a_metrics_endpoint_nothing_samples_the_loop() -> None:
    before = len(asyncio.all_tasks())
    async with process_telemetry("lag-probe", Telemetry()):
        assert len(asyncio.all_tasks()) == before
