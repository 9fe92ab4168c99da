"""China Mobile (中国移动)."""

from __future__ import annotations

from datetime import timedelta

from carrier_adapters.base import CarrierAdapter


class CmccAdapter(CarrierAdapter):
    carrier_id = "cmcc"
    display_name = "China Mobile"
    sms_signature = "【中国移动】"
    quiet_period = timedelta(days=90)
