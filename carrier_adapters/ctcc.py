"""China Telecom (中国电信)."""

from __future__ import annotations

from datetime import timedelta

from carrier_adapters.base import CarrierAdapter


class CtccAdapter(CarrierAdapter):
    carrier_id = "ctcc"
    display_name = "China Telecom"
    sms_signature = "【中国电信】"
    quiet_period = timedelta(days=90)
