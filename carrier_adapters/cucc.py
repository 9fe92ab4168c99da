"""China Unicom (中国联通)."""

from __future__ import annotations

from datetime import timedelta

from carrier_adapters.base import CarrierAdapter


class CuccAdapter(CarrierAdapter):
    carrier_id = "cucc"
    display_name = "China Unicom"
    sms_signature = "【中国联通】"
    quiet_period = timedelta(days=90)
