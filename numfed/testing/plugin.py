"""pytest fixtures that start a whole federation: gateway, carriers, reference platforms.

Loaded automatically through the ``pytest11`` entry point when numfed is installed (or list
``pytest_plugins = ["numfed.testing.plugin"]`` in a conftest). Every server uses mTLS on
loopback with certificates from a fresh ``numfed pki`` in the test's tmp_path.

* ``numfed_federation`` — the default federation in the test's own event loop.
* ``numfed_federation_factory`` — ``await factory(carriers=…, platforms=…, …)`` for others.
* ``numfed_federation_processes`` — the default federation, one process per member.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from numfed.federation import FederationLayout
from numfed.testing import Federation, spawn_federation, start_federation

__all__ = [
    "numfed_federation",
    "numfed_federation_factory",
    "numfed_federation_processes",
]

FederationFactory = Callable[..., Awaitable[Federation]]


@pytest_asyncio.fixture
async def numfed_federation_factory(tmp_path: Path) -> AsyncIterator[FederationFactory]:
    """Start federations (keyword arguments as ``numfed.federation.create_federation``)."""
    started: list[Federation] = []

    async def factory(**kw: object) -> Federation:
        fed = await start_federation(tmp_path / f"fed-{len(started) + 1}", **kw)
        started.append(fed)
        return fed

    try:
        yield factory
    finally:
        for fed in reversed(started):
            await fed.stop()


@pytest_asyncio.fixture
async def numfed_federation(numfed_federation_factory: FederationFactory) -> Federation:
    """The default federation (three carriers, eight platforms) in this process."""
    return await numfed_federation_factory()


@pytest.fixture
def numfed_federation_processes(tmp_path: Path) -> Iterator[FederationLayout]:
    """The default federation, each member its own ``numfed … serve`` process."""
    with spawn_federation(tmp_path / "fed") as layout:
        yield layout
