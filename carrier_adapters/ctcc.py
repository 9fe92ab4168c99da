"""China Telecom (中国电信)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from carrier_adapters.base import CarrierAdapter

__all__ = ["CtccAdapter"]


class CtccAdapter(CarrierAdapter):
    """China Telecom. Quiet period: the 90-day minimum (no carrier figure is known)."""

    carrier_id = "ctcc"
    display_name_zh = "中国电信"
    display_name = "China Telecom"
    sms_signature = "【中国电信】"
    time_zone = ZoneInfo("Asia/Shanghai")  # China Standard Time, UTC+8
