"""China Unicom (中国联通)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from carrier_adapters.base import CarrierAdapter

__all__ = ["CuccAdapter"]


class CuccAdapter(CarrierAdapter):
    """China Unicom. Quiet period: the 90-day minimum (no carrier figure is known)."""

    carrier_id = "cucc"
    display_name_zh = "中国联通"
    display_name = "China Unicom"
    sms_signature = "【中国联通】"
    time_zone = ZoneInfo("Asia/Shanghai")  # China Standard Time, UTC+8
