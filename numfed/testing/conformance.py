"""One member in conformance mode, ready for the kit: for the kit's own tests and members'.

Each helper lays out a small federation (PKI and trust files) in ``root``, starts the one
member with its test-only conformance service, and says where the kit must connect.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from carrier_adapters.base import CarrierAdapter, CarrierHandle, start_carrier
from numfed.config import load_carrier_config, load_platform_config
from numfed.conformance.carrier import CarrierTarget
from numfed.conformance.platform import PlatformTarget
from numfed.federation import create_federation
from platform_stubs.reference import PlatformHandle, start_platform
from platform_stubs.sdk import PlatformServicer

__all__ = ["start_conformance_carrier", "start_conformance_platform"]


async def start_conformance_platform(
    root: Path, platform_id: str, *, servicer_class: type[PlatformServicer] = PlatformServicer
) -> tuple[PlatformHandle, PlatformTarget]:
    """A reference platform (or a subclass of its servicer) in conformance mode, with no
    scenario data; the kit's gateway listens where the platform's config says the gateway is."""
    layout = create_federation(
        root,
        carriers=(),
        platforms=(platform_id,),
        # The kit makes the platform refresh often; its pace between refreshes is the
        # platform's own business, and a test need not wait a second for each.
        platform_knobs={
            platform_id: {
                "conformance": True,
                "seed_scenario": False,
                "trust_refresh_min_interval": 0.0,
            }
        },
    )
    config = load_platform_config(layout.platform_configs[platform_id])
    handle = await start_platform(config, servicer_class=servicer_class)
    target = PlatformTarget(
        target=f"127.0.0.1:{handle.port}",
        platform_id=platform_id,
        pki_dir=layout.pki_dir,
        listen=layout.gateway_endpoint,
    )
    return handle, target


async def start_conformance_carrier(
    root: Path, carrier_id: str, *, adapter_class: type[CarrierAdapter] | None = None
) -> tuple[CarrierHandle, CarrierTarget]:
    """A carrier adapter (or a subclass) in conformance mode, with no scenario data."""
    layout = create_federation(root, carriers=(carrier_id,), platforms=())
    config = replace(
        load_carrier_config(layout.carrier_configs[carrier_id]),
        conformance=True,
        seed_scenario=False,
    )
    handle = await start_carrier(config, adapter_class=adapter_class)
    target = CarrierTarget(
        target=f"127.0.0.1:{handle.port}",
        carrier_id=carrier_id,
        pki_dir=layout.pki_dir,
        trust_dir=layout.trust_dir,
    )
    return handle, target
