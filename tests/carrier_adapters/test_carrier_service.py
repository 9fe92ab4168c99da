"""CarrierService over mTLS: served numbers page by page, a port moves the number, X stays."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from carrier_adapters.base import start_carrier
from numfed import pki
from numfed.config import load_carrier_config
from numfed.federation import create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.v1 import carrier_pb2, carrier_pb2_grpc

WORLD = demo_scenario()


async def test_served_numbers_paging_and_ports(tmp_path: Path) -> None:
    layout = create_federation(tmp_path / "fed")
    cmcc = await start_carrier(load_carrier_config(layout.carrier_configs["cmcc"]))
    cucc = await start_carrier(load_carrier_config(layout.carrier_configs["cucc"]))
    try:
        seen: dict[str, list[str]] = {}
        for name, handle in (("cmcc", cmcc), ("cucc", cucc)):
            async with pki.secure_channel(
                f"127.0.0.1:{handle.port}", layout.pki_dir, pki.GATEWAY
            ) as ch:
                stub = carrier_pb2_grpc.CarrierServiceStub(ch)
                token, numbers = "", list[str]()
                while True:
                    page = await stub.ListServedNumbers(
                        carrier_pb2.ListServedNumbersRequest(page_size=7, page_token=token),
                        timeout=5,
                    )
                    assert len(page.numbers) <= 7
                    numbers += page.numbers
                    token = page.next_page_token
                    if not token:
                        break
                seen[name] = numbers
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.ListServedNumbers(
                        carrier_pb2.ListServedNumbersRequest(page_token="nonsense"), timeout=5
                    )
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        now = datetime.now(UTC)
        expected = sorted(
            h.number for h in WORLD.histories_served_by("cmcc", now) if h.current_tenure(now)
        )
        assert seen["cmcc"] == expected
        ported = WORLD.showcase["ported"]
        assert ported in seen["cmcc"] and ported not in seen["cucc"]
        # X of the ported number is its assignment at cucc, not the port to cmcc.
        assert cmcc.adapter.current_holder(ported)[3] == datetime(2020, 5, 6, 9, tzinfo=UTC)
        async with pki.secure_channel(
            f"127.0.0.1:{cmcc.port}", layout.pki_dir, PeerId(Role.PLATFORM, "weibo")
        ) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await carrier_pb2_grpc.CarrierServiceStub(ch).ListServedNumbers(
                    carrier_pb2.ListServedNumbersRequest(), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await cmcc.stop(0)
        await cucc.stop(0)
