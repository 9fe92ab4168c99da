"""A carrier the reference adapters do not know: the same adapter, its particulars from config.

Any member id can join as a carrier. :func:`generic_adapter` makes an adapter class for the id
in a carrier's config, with its display name, SMS signature and time zone (the zone whose
calendar days its recycled checks answer about) read from the config's ``[carrier]`` section
(``display_name``, ``display_name_zh``, ``sms_signature``, ``time_zone``), so that
``numfed conformance init kit --carrier mycarrier`` gives a carrier that starts and passes the
kit like the three reference ones.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from carrier_adapters.base import CarrierAdapter
from numfed.config import CarrierConfig

__all__ = ["GenericCarrierAdapter", "generic_adapter"]


class GenericCarrierAdapter(CarrierAdapter):
    """The reference adapter for a carrier id of the config's choosing (made by
    :func:`generic_adapter`). Quiet period: the 90-day minimum."""


def generic_adapter(config: CarrierConfig) -> type[GenericCarrierAdapter]:
    """An adapter class for ``config.carrier_id`` with the config's particulars (the id itself
    as its name, its name in 【】 as the SMS signature, and UTC, where the config is silent)."""
    name = config.display_name or config.carrier_id
    attributes = {
        "carrier_id": config.carrier_id,
        "display_name": name,
        "display_name_zh": config.display_name_zh or name,
        "sms_signature": config.sms_signature or f"【{name}】",
        "time_zone": ZoneInfo(config.time_zone or "UTC"),
        "__doc__": f"The generic adapter serving carrier {config.carrier_id!r}.",
    }
    label = re.sub(r"[^A-Za-z0-9]", "_", config.carrier_id)
    return type(f"GenericCarrierAdapter_{label}", (GenericCarrierAdapter,), attributes)
