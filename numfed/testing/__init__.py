"""Whole federations for tests: numfed's own and members' (a pytest plugin, ``numfed.testing``).

:func:`start_federation` runs a gateway, the carriers and the reference platforms in the
test's own event loop, each a real gRPC server with mTLS on loopback; :func:`spawn_federation`
runs each as its own ``numfed … serve`` process. The fixtures in :mod:`numfed.testing.plugin`
wrap both; pytest loads them through the ``pytest11`` entry point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from numfed.config import load_carrier_config, load_gateway_config, load_platform_config
from numfed.federation import FederationLayout, create_federation

if TYPE_CHECKING:
    from carrier_adapters.base import CarrierHandle
    from gateway.server import Gateway
    from platform_stubs.reference import PlatformHandle

__all__ = ["Federation", "spawn_federation", "start_federation"]


@dataclass
class Federation:
    """A federation running in this process; ``stop()`` stops every server."""

    layout: FederationLayout
    gateway: Gateway
    carriers: dict[str, CarrierHandle] = field(default_factory=dict)
    platforms: dict[str, PlatformHandle] = field(default_factory=dict)

    async def restart_platform(self, platform_id: str) -> PlatformHandle:
        from platform_stubs.reference import start_platform

        config = load_platform_config(self.layout.platform_configs[platform_id])
        handle = await start_platform(config)
        await asyncio.wait_for(handle.trust.ready.wait(), 10)
        self.platforms[platform_id] = handle
        return handle

    async def stop(self) -> None:
        await self.gateway.stop(0)
        for c in self.carriers.values():
            await c.stop(0)
        for p in self.platforms.values():
            await p.stop(0)


async def start_federation(root: Path, **kw: object) -> Federation:
    """Lay out a federation in ``root`` and start it here; ``kw`` goes to create_federation."""
    from carrier_adapters.base import start_carrier
    from gateway.server import Gateway
    from platform_stubs.reference import start_platform

    layout = create_federation(root, **kw)  # type: ignore[arg-type]
    platforms = {
        p: await start_platform(load_platform_config(cfg))
        for p, cfg in layout.platform_configs.items()
    }
    carriers = {
        c: await start_carrier(load_carrier_config(cfg))
        for c, cfg in layout.carrier_configs.items()
    }
    gw = await Gateway.start(load_gateway_config(layout.gateway_config))
    fed = Federation(layout, gw, carriers, platforms)
    async with asyncio.timeout(20):
        await gw.ready.wait()
        for p in platforms.values():
            await p.trust.ready.wait()
    return fed


@contextmanager
def spawn_federation(root: Path, **kw: object) -> Iterator[FederationLayout]:
    """Lay out a federation in ``root`` and run each member as its own process until exit.

    Yields once every server answers health checks as SERVING; logs are in ``root/logs``.
    """
    from rich.console import Console

    from numfed.demo import running_federation, wait_ready

    layout = create_federation(root, **kw)  # type: ignore[arg-type]
    with running_federation(layout, Console(quiet=True)) as procs:
        wait_ready(layout, procs)
        yield layout
