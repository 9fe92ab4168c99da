"""numfed's pytest plugin: fixtures that start a whole federation on free loopback ports.

Loaded automatically wherever numfed is installed (``pytest11`` entry point ``numfed``). The
fixtures are async and need pytest-asyncio (numfed's ``test`` extra); without it the plugin
offers none, so installing numfed never breaks another project's pytest. Fixtures:

``numfed_federation``
    gateway, three carriers and eight reference platforms in the test's own event loop.
``numfed_federation_processes``
    the same, one ``numfed <role> serve`` process each (for tests that kill or restart one).
``numfed_conformance_platform`` / ``numfed_conformance_carrier``
    factories: ``await factory("weibo")`` starts one reference member in conformance mode and
    returns its handle and the target to give ``run_platform_kit`` / ``run_carrier_kit``.
"""

from __future__ import annotations

import importlib.util

import grpc
import pytest

__all__: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Initialise grpc's asyncio layer once per test process, so that its shutdown (which can
    hang joining the poller thread, grpc/grpc#22365) never runs when the last aio object of a
    test is garbage-collected mid-run."""
    grpc.aio.init_grpc_aio()


if importlib.util.find_spec("pytest_asyncio") is not None:
    from numfed.testing.fixtures import (
        numfed_conformance_carrier,
        numfed_conformance_platform,
        numfed_federation,
        numfed_federation_processes,
    )

    __all__ += [
        "numfed_conformance_carrier",
        "numfed_conformance_platform",
        "numfed_federation",
        "numfed_federation_processes",
    ]
