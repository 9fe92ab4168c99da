"""``CarrierService``: what the gateway asks a carrier (mTLS, gateway only).

Which numbers the carrier serves (the gateway's portability registry), and a platform's
recycled check relayed by the gateway: one signed bit about a calendar day, never the date the
holder's tenure began.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from typing import TYPE_CHECKING, Any

import grpc

from numfed.claims import RecycledQuestion, normalize_number
from numfed.errors import InvalidArgument
from numfed.events import MAX_EVENTS_PER_BATCH
from numfed.v1 import carrier_pb2, carrier_pb2_grpc

if TYPE_CHECKING:
    from carrier_adapters.base import CarrierAdapter

__all__ = ["CarrierServicer", "page_of"]

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
MAX_HALVES_PAGE = MAX_EVENTS_PER_BATCH
_TOKEN_NUMBER = re.compile(r"\+[0-9]{1,15}")


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _after(token: str) -> str:
    """The number a page token names. Only a token this service wrote is accepted: base64
    decoding skips stray characters and ``str.isdigit`` takes any script's digits, so the token
    must be the exact encoding of a ``+`` and ASCII digits."""
    try:
        last = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidArgument("BAD_PAGE_TOKEN", "unknown page_token") from exc
    if not _TOKEN_NUMBER.fullmatch(last) or _token(last) != token:
        raise InvalidArgument("BAD_PAGE_TOKEN", "unknown page_token")
    return last


def page_of(numbers: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """One page of sorted ``numbers``: those after the token's number (keyset paging, so a
    number added or dropped between pages never shifts the others)."""
    if page_size > MAX_PAGE_SIZE:
        raise InvalidArgument("BAD_PAGE_SIZE", f"page_size is at most {MAX_PAGE_SIZE}")
    size = page_size or DEFAULT_PAGE_SIZE
    rest = numbers
    if page_token:
        last = _after(page_token)
        rest = numbers[bisect.bisect_right(numbers, last) :]
    page = rest[:size]
    return page, _token(page[-1]) if len(rest) > size else ""


class CarrierServicer(carrier_pb2_grpc.CarrierServiceServicer):
    def __init__(self, adapter: CarrierAdapter) -> None:
        self._a = adapter

    async def ListServedNumbers(
        self,
        request: carrier_pb2.ListServedNumbersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> carrier_pb2.ListServedNumbersResponse:
        numbers = self._a.registry.served_numbers(self._a.clock())
        page, token = page_of(numbers, request.page_size, request.page_token)
        return carrier_pb2.ListServedNumbersResponse(numbers=page, next_page_token=token)

    async def ListPortHalves(
        self,
        request: carrier_pb2.ListPortHalvesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> carrier_pb2.ListPortHalvesResponse:
        if request.page_size > MAX_HALVES_PAGE:
            raise InvalidArgument("BAD_PAGE_SIZE", f"page_size is at most {MAX_HALVES_PAGE}")
        size = request.page_size or MAX_HALVES_PAGE
        halves = sorted(self._a.port_halves(), key=lambda e: (e.number, e.at))
        if request.page_token:
            # Keyset on the number: the halves of one number always share a page or follow it.
            last = _after(request.page_token)
            halves = [h for h in halves if h.number > last]
        page = halves[:size]
        more = len(halves) > size
        if more:  # end the page on a number boundary, so the next page starts after it
            cut = page[-1].number
            page = [h for h in page if h.number != cut] or page
        answer = carrier_pb2.ListPortHalvesResponse(
            next_page_token=_token(page[-1].number) if more else ""
        )
        if page:
            answer.batch.CopyFrom(self._a.sign_events(page))
        return answer

    async def AnswerRecycledCheck(
        self,
        request: carrier_pb2.AnswerRecycledCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> carrier_pb2.AnswerRecycledCheckResponse:
        number = normalize_number(request.number)
        question = RecycledQuestion.from_request(request)
        answer = self._a.answer_recycled(number, question, request.platform_id)
        return carrier_pb2.AnswerRecycledCheckResponse(answer=answer)
