"""The fixtures of numfed's pytest plugin (:mod:`numfed.testing.plugin`); needs pytest-asyncio.

``numfed_federation``
    gateway, three carriers and eight reference platforms in the test's own event loop.
``numfed_federation_processes``
    the same, one ``numfed <role> serve`` process each (for tests that kill or restart one).
``numfed_conformance_platform`` / ``numfed_conformance_carrier``
    factories: ``await factory("weibo")`` starts one reference member in conformance mode and
    returns its handle and the target to give ``run_platform_kit`` / ``run_carrier_kit``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from numfed.testing.conformance import start_conformance_carrier, start_conformance_platform
from numfed.testing.federation import (
    Federation,
    FederationProcesses,
    spawn_federation,
    start_federation,
)

__all__ = [
    "numfed_conformance_carrier",
    "numfed_conformance_platform",
    "numfed_federation",
    "numfed_federation_processes",
]


@pytest_asyncio.fixture
async def numfed_federation(tmp_path: Path) -> AsyncIterator[Federation]:
    fed = await start_federation(tmp_path / "numfed-federation")
    try:
        yield fed
    finally:
        await fed.stop()


@pytest_asyncio.fixture
async def numfed_federation_processes(tmp_path: Path) -> AsyncIterator[FederationProcesses]:
    fed = await spawn_federation(tmp_path / "numfed-federation")
    try:
        yield fed
    finally:
        fed.stop_all()


Factory = Callable[..., Awaitable[tuple[Any, Any]]]


@pytest_asyncio.fixture
async def numfed_conformance_platform(tmp_path: Path) -> AsyncIterator[Factory]:
    started = 0

    async with contextlib.AsyncExitStack() as stack:  # stops each one, even if another fails

        async def start(platform_id: str, **kw: Any) -> tuple[Any, Any]:
            nonlocal started
            started += 1
            handle, target = await start_conformance_platform(
                tmp_path / f"conformance-platform-{platform_id}-{started - 1}", platform_id, **kw
            )
            stack.push_async_callback(handle.stop, 0)
            return handle, target

        yield start


@pytest_asyncio.fixture
async def numfed_conformance_carrier(tmp_path: Path) -> AsyncIterator[Factory]:
    started = 0

    async with contextlib.AsyncExitStack() as stack:  # stops each one, even if another fails

        async def start(carrier_id: str, **kw: Any) -> tuple[Any, Any]:
            nonlocal started
            started += 1
            handle, target = await start_conformance_carrier(
                tmp_path / f"conformance-carrier-{carrier_id}-{started - 1}", carrier_id, **kw
            )
            stack.push_async_callback(handle.stop, 0)
            return handle, target

        yield start
