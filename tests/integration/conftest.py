"""A whole federation in this process: gateway, three carriers, seven platforms, real mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from carrier_adapters.base import CarrierHandle, start_carrier
from gateway.server import Gateway
from numfed.config import load_carrier_config, load_gateway_config, load_platform_config
from numfed.federation import FederationLayout, create_federation
from platform_stubs.reference import PlatformHandle, start_platform


@dataclass
class Federation:
    layout: FederationLayout
    gateway: Gateway
    carriers: dict[str, CarrierHandle] = field(default_factory=dict)
    platforms: dict[str, PlatformHandle] = field(default_factory=dict)

    async def restart_platform(self, platform_id: str) -> PlatformHandle:
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


@pytest.fixture
async def federation(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """The whole federation, once with the gateway on SQLite and once on PostgreSQL."""
    fed = await start_federation(tmp_path / "fed", database_url=db_url)
    try:
        yield fed
    finally:
        await fed.stop()
