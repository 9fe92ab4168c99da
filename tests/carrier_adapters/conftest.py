"""Adapters on real servers (port 0, mTLS) with a recording gateway and a clock tests can move."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carrier_adapters.base import CarrierHandle, start_carrier
from numfed.config import CarrierConfig, load_carrier_config
from numfed.federation import FederationLayout, create_federation
from numfed.rpc import ServerHandle
from tests.carrier_adapters.fake_gateway import FakeGateway, start_fake_gateway


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@dataclass
class Running:
    layout: FederationLayout
    gateway: FakeGateway
    gateway_server: ServerHandle
    carriers: dict[str, CarrierHandle]
    clock: Clock

    def state_dir(self, carrier: str) -> Path:
        return self.carriers[carrier].adapter.config.state_dir


@pytest.fixture
def layout(tmp_path: Path) -> FederationLayout:
    return create_federation(tmp_path / "fed", carriers=("cmcc", "cucc"), platforms=("weibo",))


def on_port_zero(layout: FederationLayout, carrier: str, gateway_port: int) -> CarrierConfig:
    config = load_carrier_config(layout.carrier_configs[carrier])
    return dataclasses.replace(
        config,
        listen="127.0.0.1:0",
        holder_listen="127.0.0.1:0",
        gateway=f"127.0.0.1:{gateway_port}",
    )


@pytest.fixture
async def running(layout: FederationLayout) -> AsyncIterator[Running]:
    fake, server = await start_fake_gateway(layout.pki_dir)
    clock = Clock(datetime.now(UTC))
    carriers: dict[str, CarrierHandle] = {}
    try:
        for c in ("cmcc", "cucc"):
            carriers[c] = await start_carrier(on_port_zero(layout, c, server.port), clock=clock)
        yield Running(layout, fake, server, carriers, clock)
    finally:
        for h in carriers.values():
            await h.stop(0)
        await server.stop(0)
