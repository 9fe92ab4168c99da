"""A carrier the reference adapters do not know joins with the generic adapter, configured."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from carrier_adapters import ADAPTERS, GenericCarrierAdapter, adapter_for, start_carrier
from numfed import pki
from numfed.config import load_carrier_config
from numfed.errors import InvalidArgument
from numfed.identity import PeerId, Role
from numfed.v1 import carrier_pb2, carrier_pb2_grpc


def _config(root: Path, extra: str) -> Path:
    pki.init_pki(root / "pki", carriers=("mycarrier",), platforms=(), now=datetime.now(UTC))
    path = root / "carrier-mycarrier.toml"
    path.write_text(
        "[carrier]\n"
        'id = "mycarrier"\n'
        'listen = "127.0.0.1:0"\n'
        'holder_listen = "127.0.0.1:0"\n'
        'pki_dir = "pki"\n'
        'state_dir = "state"\n'
        'gateway = "127.0.0.1:1"\n'
        "seed_scenario = false\n" + extra
    )
    return path


async def test_a_new_carrier_id_is_served_with_its_configured_particulars(tmp_path: Path) -> None:
    config = load_carrier_config(
        _config(
            tmp_path,
            'display_name = "My Carrier"\ndisplay_name_zh = "我的运营商"\n'
            'sms_signature = "【我的】"\ntime_zone = "Asia/Tokyo"\n',
        )
    )
    assert "mycarrier" not in ADAPTERS
    kind = adapter_for(config)
    assert issubclass(kind, GenericCarrierAdapter)
    assert (kind.carrier_id, kind.display_name, kind.display_name_zh, kind.sms_signature) == (
        "mycarrier",
        "My Carrier",
        "我的运营商",
        "【我的】",
    )
    assert kind.time_zone == ZoneInfo("Asia/Tokyo")
    handle = await start_carrier(config)
    try:
        assert isinstance(handle.adapter, GenericCarrierAdapter)
        me = PeerId(Role.CARRIER, "mycarrier")
        async with pki.secure_channel(
            f"127.0.0.1:{handle.port}", tmp_path / "pki", pki.GATEWAY, server=me
        ) as channel:
            page = await carrier_pb2_grpc.CarrierServiceStub(channel).ListServedNumbers(
                carrier_pb2.ListServedNumbersRequest(), timeout=5
            )
        assert list(page.numbers) == []
    finally:
        await handle.stop(0)


def test_without_particulars_it_is_named_by_its_id_and_answers_in_utc(tmp_path: Path) -> None:
    kind = adapter_for(load_carrier_config(_config(tmp_path, "")))
    assert (kind.display_name, kind.sms_signature) == ("mycarrier", "【mycarrier】")
    assert kind.time_zone == ZoneInfo("UTC")


def test_an_unknown_time_zone_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_carrier_config(_config(tmp_path, 'time_zone = "Mars/Olympus_Mons"\n'))
    assert err.value.reason == "BAD_CONFIG"
