"""CarrierService over mTLS on port 0: served numbers page by page, for the gateway only."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.type import date_pb2

from carrier_adapters.carrier_service import page_of
from numfed import pki
from numfed.claims import verify_recycled_claim
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, PermissionDenied
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.scenario import demo_scenario
from numfed.timeutil import to_date, to_timestamp
from numfed.trustfiles import load_trusted_state
from numfed.v1 import carrier_pb2, carrier_pb2_grpc
from tests.carrier_adapters.conftest import Running

WORLD = demo_scenario()
PORTED = WORLD.showcase["ported"]
SHANGHAI = ZoneInfo("Asia/Shanghai")


async def list_all(running: Running, carrier: str, page_size: int) -> list[str]:
    port = running.carriers[carrier].port
    async with pki.secure_channel(
        f"127.0.0.1:{port}",
        running.layout.pki_dir,
        pki.GATEWAY,
        server=PeerId(Role.CARRIER, carrier),
    ) as ch:
        stub = carrier_pb2_grpc.CarrierServiceStub(ch)
        token, numbers = "", list[str]()
        while True:
            page = await stub.ListServedNumbers(
                carrier_pb2.ListServedNumbersRequest(page_size=page_size, page_token=token),
                timeout=5,
            )
            assert 0 < len(page.numbers) <= page_size
            numbers += page.numbers
            token = page.next_page_token
            if not token:
                return numbers


async def test_served_numbers_page_by_page(running: Running) -> None:
    now = running.clock()
    for carrier in ("cmcc", "cucc"):
        expected = sorted(h.number for h in WORLD.histories_served_by(carrier, now))
        assert await list_all(running, carrier, 7) == expected
        assert await list_all(running, carrier, 10_000) == expected
    cmcc, cucc = await list_all(running, "cmcc", 7), await list_all(running, "cucc", 7)
    assert PORTED in cmcc and PORTED not in cucc  # a port moves the number to its new carrier
    # Numbers between holders (quiet period) are served too: the carrier still answers for them.
    assert any(WORLD.histories[n].current_tenure(now) is None for n in cmcc + cucc)


async def test_bad_pages_are_refused(running: Running) -> None:
    async with pki.secure_channel(
        f"127.0.0.1:{running.carriers['cmcc'].port}", running.layout.pki_dir, pki.GATEWAY
    ) as ch:
        stub = carrier_pb2_grpc.CarrierServiceStub(ch)
        for request, reason in [
            (carrier_pb2.ListServedNumbersRequest(page_token="nonsense"), "BAD_PAGE_TOKEN"),
            (carrier_pb2.ListServedNumbersRequest(page_token="MTIz"), "BAD_PAGE_TOKEN"),
            (carrier_pb2.ListServedNumbersRequest(page_size=10_001), "BAD_PAGE_SIZE"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ListServedNumbers(request, timeout=5)
            info = rpc_error_info(e.value)
            assert (e.value.code(), info.reason if info else None) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                reason,
            )


@pytest.mark.parametrize("caller", [PeerId(Role.PLATFORM, "weibo"), PeerId(Role.CARRIER, "cucc")])
async def test_only_the_gateway_may_list(running: Running, caller: PeerId) -> None:
    async with pki.secure_channel(
        f"127.0.0.1:{running.carriers['cmcc'].port}", running.layout.pki_dir, caller
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await carrier_pb2_grpc.CarrierServiceStub(ch).ListServedNumbers(
                carrier_pb2.ListServedNumbersRequest(), timeout=5
            )
    info = rpc_error_info(e.value)
    assert (e.value.code(), info.reason if info else None) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


def test_keyset_pages_survive_changes_between_pages() -> None:
    numbers = [f"+8613900000{i:03d}" for i in range(10)]
    first, token = page_of(numbers, 4, "")
    assert first == numbers[:4] and token
    changed = [n for n in numbers if n != numbers[1] and n != numbers[5]]  # one seen, one not
    second, token = page_of(changed, 4, token)
    assert second == [numbers[4], numbers[6], numbers[7], numbers[8]]
    third, token = page_of(changed, 4, token)
    assert (third, token) == ([numbers[9]], "")
    assert page_of(numbers, 0, "") == (numbers, "")  # 0 means the default size
    with pytest.raises(InvalidArgument):
        page_of(numbers, 10_001, "")


async def answer(
    running: Running,
    number: str,
    since: datetime | None = None,
    *,
    day: date | date_pb2.Date | None = None,
    carrier: str = "cmcc",
    platform_id: str = "weibo",
    caller: PeerId = pki.GATEWAY,
) -> carrier_pb2.AnswerRecycledCheckResponse:
    async with pki.secure_channel(
        f"127.0.0.1:{running.carriers[carrier].port}", running.layout.pki_dir, caller
    ) as ch:
        request = carrier_pb2.AnswerRecycledCheckRequest(number=number, platform_id=platform_id)
        if since is not None:
            request.since.CopyFrom(to_timestamp(since))
        if day is not None:
            request.specified_date.CopyFrom(day if isinstance(day, date_pb2.Date) else to_date(day))
        response: carrier_pb2.AnswerRecycledCheckResponse = (
            await carrier_pb2_grpc.CarrierServiceStub(ch).AnswerRecycledCheck(request, timeout=5)
        )
        return response


async def test_recycled_check_is_one_signed_bit_about_a_day(running: Running) -> None:
    now = running.clock()
    trust = load_trusted_state(running.layout.trust_dir, now=now)
    # X is 2022-07-01T09:00Z, 17:00 in Shanghai: the holder at the end of 2022-07-01 holds it now.
    recycled, x = WORLD.showcase["recycled_once"], datetime(2022, 7, 1, 9, tzinfo=UTC)
    cases = [
        (recycled, date(2022, 6, 30), True),  # ended with the previous holder's quiet period
        (recycled, date(2022, 7, 1), False),
        (recycled, date(2024, 1, 1), False),
        (PORTED, date(2021, 1, 1), False),  # the port in 2023 is no change
        (PORTED, date(2020, 1, 1), True),  # the quiet period before X
    ]
    for number, day, changed in cases:
        got = await answer(running, number, day=day)
        v = verify_recycled_claim(Envelope.from_proto(got.answer), trust, now=now, audience="weibo")
        assert (v.carrier_id, v.claim.number, v.claim.specified_date, v.claim.changed) == (
            "cmcc",
            number,
            day,
            changed,
        )
        # The answer is for the end of the day in Shanghai, never X or a time of day.
        assert v.claim.since == datetime.combine(day, time(), SHANGHAI) + timedelta(days=1)
        tenure = WORLD.histories[number].current_tenure(now)
        assert tenure is not None
        assert to_timestamp(tenure.start).SerializeToString() not in got.answer.payload
        with pytest.raises(PermissionDenied):
            verify_recycled_claim(
                Envelope.from_proto(got.answer), trust, now=now, audience="taobao"
            )
    # The deprecated since: one second before X is X's day in Shanghai, so no longer a change.
    got = await answer(running, recycled, x - timedelta(seconds=1))
    v = verify_recycled_claim(Envelope.from_proto(got.answer), trust, now=now, audience="weibo")
    assert (v.claim.specified_date, v.claim.changed) == (date(2022, 7, 1), False)


async def test_recycled_check_refusals(running: Running) -> None:
    recycled = WORLD.showcase["recycled_once"]
    now = running.clock()
    today = now.astimezone(SHANGHAI).date()
    for call, expected in [
        (answer(running, recycled, day=today + timedelta(days=1)), "SPECIFIED_DATE_IN_FUTURE"),
        (answer(running, recycled, day=date(2001, 1, 1)), "SPECIFIED_DATE_BEFORE_HISTORY"),
        (answer(running, recycled, now + timedelta(days=1)), "SINCE_IN_FUTURE"),
        (answer(running, recycled, datetime(2001, 1, 1, tzinfo=UTC)), "SINCE_BEFORE_HISTORY"),
        (answer(running, recycled), "MISSING_SPECIFIED_DATE"),
        (answer(running, recycled, now, day=today), "SINCE_AND_SPECIFIED_DATE"),
        (answer(running, recycled, day=date_pb2.Date(year=2022, month=2, day=29)), "BAD_DATE"),
        (answer(running, recycled, day=today, platform_id="Bad Id"), "BAD_MEMBER_ID"),
        (answer(running, "+86 138", day=today), "MALFORMED_NUMBER"),
        (answer(running, PORTED, day=today, carrier="cucc"), "NUMBER_NOT_SERVED"),
        (
            answer(running, recycled, day=today, caller=PeerId(Role.PLATFORM, "weibo")),
            "ROLE_NOT_ALLOWED",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        info = rpc_error_info(e.value)
        assert info is not None and info.reason == expected, e.value
