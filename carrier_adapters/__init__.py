"""Carrier adapters: the shared base and one adapter per carrier, chosen by carrier id.

``cmcc``, ``cucc`` and ``ctcc`` have adapters of their own; any other carrier id gets the
generic adapter (:mod:`carrier_adapters.generic`), its particulars from its config.
"""

from __future__ import annotations

from carrier_adapters.base import CarrierAdapter, CarrierHandle, serve, start_carrier
from carrier_adapters.cmcc import CmccAdapter
from carrier_adapters.ctcc import CtccAdapter
from carrier_adapters.cucc import CuccAdapter
from carrier_adapters.generic import GenericCarrierAdapter, generic_adapter
from numfed.config import CarrierConfig

__all__ = [
    "ADAPTERS",
    "CarrierAdapter",
    "CarrierHandle",
    "GenericCarrierAdapter",
    "adapter_for",
    "serve",
    "start_carrier",
]

ADAPTERS: dict[str, type[CarrierAdapter]] = {
    a.carrier_id: a for a in (CmccAdapter, CuccAdapter, CtccAdapter)
}
"""carrier id -> its own adapter class."""


def adapter_for(config: CarrierConfig) -> type[CarrierAdapter]:
    """The adapter class for the config's carrier: its own, else the generic one."""
    return ADAPTERS.get(config.carrier_id) or generic_adapter(config)
