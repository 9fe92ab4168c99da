"""Reference platforms in conformance mode (real servers, port 0, mTLS) and the kit against them."""

from __future__ import annotations

import dataclasses

import pytest

from numfed.config import load_platform_config
from numfed.conformance.platform import PlatformTarget, run_platform_kit
from numfed.conformance.report import CheckResult
from numfed.federation import FederationLayout, create_federation, free_ports
from numfed.scenario import PLATFORMS
from platform_stubs.reference import PlatformHandle, start_platform
from tests.conformance.broken import Breakage


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> FederationLayout:
    return create_federation(tmp_path_factory.mktemp("conf") / "fed", platforms=PLATFORMS)


@dataclasses.dataclass
class KitRun:
    layout: FederationLayout

    monkeypatch: pytest.MonkeyPatch

    async def start(
        self, platform_id: str, breakage: Breakage | None = None
    ) -> tuple[PlatformHandle, PlatformTarget]:
        """Start ``platform_id`` in conformance mode (optionally broken) on port 0."""
        (gateway_port,) = free_ports(1)
        config = dataclasses.replace(
            load_platform_config(self.layout.platform_configs[platform_id]),
            listen="127.0.0.1:0",
            gateway=f"127.0.0.1:{gateway_port}",
            seed_scenario=False,
            conformance=True,
        )
        handle = await start_platform(config)
        if breakage is not None:
            breakage(handle, self.monkeypatch)
        target = PlatformTarget(
            target=f"127.0.0.1:{handle.port}",
            platform_id=platform_id,
            pki_dir=self.layout.pki_dir,
            trust_dir=self.layout.trust_dir,
            gateway_listen=f"127.0.0.1:{gateway_port}",
        )
        return handle, target

    async def run(
        self, platform_id: str, *, breakage: Breakage | None = None, only: tuple[str, ...] = ()
    ) -> dict[str, CheckResult]:
        """Start the platform, run the kit in this process, stop the platform."""
        handle, target = await self.start(platform_id, breakage)
        try:
            results = await run_platform_kit(target, only=only)
        finally:
            await handle.stop(0)
        return {r.name: r for r in results}


@pytest.fixture
def kit(layout: FederationLayout, monkeypatch: pytest.MonkeyPatch) -> KitRun:
    return KitRun(layout, monkeypatch)


def failed(results: dict[str, CheckResult]) -> set[str]:
    return {n for n, r in results.items() if not r.passed}
