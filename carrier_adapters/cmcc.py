"""China Mobile (中国移动)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from carrier_adapters.base import CarrierAdapter

__all__ = ["CmccAdapter"]


class CmccAdapter(CarrierAdapter):
    """China Mobile. Quiet period: the 90-day minimum (no carrier figure is known)."""

    carrier_id = "cmcc"
    display_name_zh = "中国移动"
    display_name = "China Mobile"
    sms_signature = "【中国移动】"
    time_zone = ZoneInfo("Asia/Shanghai")  # China Standard Time, UTC+8
