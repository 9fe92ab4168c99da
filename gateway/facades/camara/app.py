"""``POST /number-recycling/v0.2/check``: CAMARA's request in, numfed's recycled check, CAMARA's
answer out, with the carrier's signed RecycledClaim beside it.

* Who asks: the platform named by the mTLS client certificate (:class:`gateway.facades.edge.
  Edge`), as on gRPC; an ``Authorization`` header is not read (docs/standards.md says how an
  OAuth2 client-credentials front maps onto the certificate).
* What is asked: ``phoneNumber`` (required here: numfed has no three-legged tokens, so a body
  without it is 422 ``MISSING_IDENTIFIER``) and ``specifiedDate``, a calendar day: the carrier
  answers for the end of that day in its own time zone (Asia/Shanghai for cmcc, cucc and ctcc),
  exactly as ``CheckRecycledRequest.specified_date``.
* The answer: ``{"phoneNumberRecycled": bool}``, the carrier's signed claim in the
  ``x-numfed-recycled-claim`` header (URL-safe base64 of the ``numfed.v1.Envelope``, no
  padding), and ``x-correlator`` echoed. Refusals are CAMARA errors (:mod:`.errors`).

Every response is checked against the vendored OpenAPI documents before it leaves
(:mod:`.openapi`); one that does not conform is logged and replaced by 500 ``INTERNAL``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.facades.camara.errors import camara_error, retry_after
from gateway.facades.camara.openapi import CORRELATOR, response_check
from gateway.facades.edge import CHECK_RECYCLED, Edge, url_path
from gateway.recycled import RecycledCheck
from numfed.claims import RecycledQuestion
from numfed.config import Limits
from numfed.errors import InvalidArgument, NumfedError
from numfed.v1 import claim_pb2

__all__ = ["CHECK_ROUTE", "CLAIM_HEADER", "CamaraFacade", "parse_day"]

log = logging.getLogger(__name__)

CHECK_ROUTE = "/number-recycling/v0.2/check"
CLAIM_HEADER = "x-numfed-recycled-claim"
MAX_BODY_BYTES = 16 * 1024
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_JSON_TYPE = re.compile(r"application/json\s*(;.*)?", re.IGNORECASE)


def parse_day(text: str) -> date:
    """An RFC 3339 full-date (``YYYY-MM-DD``, ASCII digits), else INVALID_ARGUMENT ``BAD_DATE``
    (the reason the gRPC path gives a date that is not a calendar date)."""
    if not _DAY.fullmatch(text):
        raise InvalidArgument("BAD_DATE", "specifiedDate must be a calendar date, YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument("BAD_DATE", f"specifiedDate {text!r} is not a calendar date") from exc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _body(request: Request) -> Mapping[str, Any]:
    """The request's JSON object, at most MAX_BODY_BYTES (INVALID_ARGUMENT otherwise)."""
    if not _JSON_TYPE.fullmatch(request.headers.get("content-type", "")):
        raise InvalidArgument("BAD_CONTENT_TYPE", "the request body must be application/json")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidArgument("BODY_TOO_LARGE", f"the body is over {MAX_BODY_BYTES} bytes")
    if not raw:
        raise InvalidArgument("MISSING_BODY", "the request needs a JSON body")
    try:
        body = json.loads(bytes(raw), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument("MALFORMED_BODY", "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("MALFORMED_BODY", "the body must be a JSON object")
    return body


def _question(body: Mapping[str, Any]) -> tuple[str, str]:
    """(phoneNumber, specifiedDate) as written, after the checks of the request schema."""
    day = body.get("specifiedDate")
    if day is None:
        raise InvalidArgument("MISSING_SPECIFIED_DATE", "specifiedDate is required")
    if not isinstance(day, str):
        raise InvalidArgument("BAD_DATE", "specifiedDate must be a string, YYYY-MM-DD")
    number = body.get("phoneNumber")
    if number is None:
        raise InvalidArgument(
            "MISSING_IDENTIFIER",
            "phoneNumber is required: the number is never taken from the caller's credentials",
        )
    if not isinstance(number, str):
        raise InvalidArgument("MALFORMED_NUMBER", "phoneNumber must be a string in E.164")
    return number, day


class CamaraFacade:
    """The Number Recycling API over one gateway's recycled check."""

    def __init__(self, *, edge: Edge, recycled: RecycledCheck, limits: Limits) -> None:
        self._edge = edge
        self._recycled = recycled
        self._timeout = min(
            limits.default_call_timeout - limits.deadline_margin, limits.platform_call_timeout
        )
        self._check = response_check()

    def routes(self, base: str) -> list[BaseRoute]:
        """The API under ``base`` (``apiRoot``: the path of the public base URL, if any)."""
        return [Route(url_path(base) + CHECK_ROUTE, self.check, methods=["POST"])]

    async def check(self, request: Request) -> Response:
        correlator = request.headers.get("x-correlator")
        headers: dict[str, str] = {"cache-control": "no-store"}
        good_correlator = correlator is None or CORRELATOR.fullmatch(correlator) is not None
        if correlator is not None and good_correlator:
            headers["x-correlator"] = correlator  # echoed on every answer, refusals too
        try:
            caller = self._edge.caller(request.scope, CHECK_RECYCLED)
            if not good_correlator:
                raise InvalidArgument(
                    "BAD_CORRELATOR", "x-correlator does not match the XCorrelator schema"
                )
            # The body is read before a slot is taken: a slow sender holds none.
            number, day = _question(await _body(request))
            async with self._edge.admitted(caller, CHECK_RECYCLED):
                answer = await self._recycled.check(
                    caller,
                    number,
                    lambda: RecycledQuestion(specified_date=parse_day(day)),
                    self._timeout,
                )
        except NumfedError as err:
            return self._error(err, headers)
        changed = claim_pb2.RecycledClaim.FromString(answer.payload).changed
        raw = answer.SerializeToString(deterministic=True)
        headers[CLAIM_HEADER] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return self._respond(200, {"phoneNumberRecycled": changed}, headers)

    def _error(self, err: NumfedError, headers: dict[str, str]) -> Response:
        mapped = camara_error(err)
        body = {
            "status": mapped.status,
            "code": mapped.code,
            "message": err.message,
            "reason": err.reason,
        }
        delay = retry_after(err)
        if delay is not None:
            headers["retry-after"] = delay
        return self._respond(mapped.status, body, headers)

    def _respond(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
        problems = self._check.problems(status, body, headers)
        if problems:
            log.error("CAMARA response %d withheld, not as documented: %s", status, problems)
            status, body = 500, {"status": 500, "code": "INTERNAL", "message": "internal error"}
            headers = {k: v for k, v in headers.items() if k != CLAIM_HEADER}
        return Response(
            json.dumps(body, ensure_ascii=False),
            status_code=status,
            headers=headers,
            media_type="application/json",
        )
