"""Carrier adapters: the shared base and one adapter per carrier, chosen by carrier id."""

from __future__ import annotations

from carrier_adapters.base import CarrierAdapter, CarrierHandle, serve, start_carrier
from carrier_adapters.cmcc import CmccAdapter
from carrier_adapters.ctcc import CtccAdapter
from carrier_adapters.cucc import CuccAdapter

__all__ = ["ADAPTERS", "CarrierAdapter", "CarrierHandle", "serve", "start_carrier"]

ADAPTERS: dict[str, type[CarrierAdapter]] = {
    a.carrier_id: a for a in (CmccAdapter, CuccAdapter, CtccAdapter)
}
"""carrier id -> its adapter class."""
