"""``CarrierService``: what the gateway asks a carrier (mTLS, gateway only).

Which numbers the carrier serves (the gateway's portability registry), and a platform's
recycled check relayed by the gateway: one signed bit about a calendar day, never the date the
holder's tenure began.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from typing import TYPE_CHECKING, Any

import grpc

from numfed.claims import RecycledQuestion, normalize_number
from numfed.errors import InvalidArgument
from numfed.v1 import carrier_pb2, carrier_pb2_grpc

if TYPE_CHECKING:
    from carrier_adapters.base import CarrierAdapter

__all__ = ["CarrierServicer", "page_of"]

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _after(token: str) -> str:
    try:
        last = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidArgument("BAD_PAGE_TOKEN", "unknown page_token") from exc
    if not (last.startswith("+") and last[1:].isdigit() and len(last) <= 16):
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

    async def AnswerRecycledCheck(
        self,
        request: carrier_pb2.AnswerRecycledCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> carrier_pb2.AnswerRecycledCheckResponse:
        number = normalize_number(request.number)
        question = RecycledQuestion.from_request(request)
        answer = self._a.answer_recycled(number, question, request.platform_id)
        return carrier_pb2.AnswerRecycledCheckResponse(answer=answer)
