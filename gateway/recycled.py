"""The recycled check (Flow 5), one path for every edge that serves it.

The gRPC servicer (``GatewayService.CheckRecycled``) and the CAMARA Number Recycling facade
(``gateway/facades/camara``) both call :meth:`RecycledCheck.check` with the authenticated
platform, the number as it was written and a function that reads the question: so the
per-platform rate limit, the probe budget (:mod:`gateway.probing`), the relay to the serving
carrier and the audit entry are the same whichever way a platform asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import date

import grpc
from google.protobuf.message import DecodeError

from gateway.audit import AuditRecord, AuditWriter
from gateway.authority import Portability
from gateway.probing import PROBE_BUDGET_REASON, ProbeBudget, candidate_days, refused_day
from gateway.results import now_us
from gateway.store import Store
from numfed.claims import RecycledQuestion, normalize_number
from numfed.config import Limits
from numfed.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumfedError,
    Unavailable,
)
from numfed.identity import PeerId, Role
from numfed.ratelimit import RateLimiter
from numfed.rpc import error_from_rpc
from numfed.timeutil import from_date
from numfed.v1 import carrier_pb2, carrier_pb2_grpc, claim_pb2

__all__ = ["RecycledCheck"]

log = logging.getLogger(__name__)


class RecycledCheck:
    """Has a number changed holder after the end of a day? Asked of its serving carrier, for
    one platform, within that platform's rate and probe budget; every call audited."""

    def __init__(
        self,
        *,
        store: Store,
        portability: Portability,
        pseudonym: Callable[[str], str],
        limits: Limits,
        audit: AuditWriter,
        carrier_stubs: Mapping[str, carrier_pb2_grpc.CarrierServiceAsyncStub],
    ) -> None:
        self._store = store
        self._portability = portability
        self._pseudonym = pseudonym
        self._limits = limits
        self._audit = audit
        self._carrier_stubs = carrier_stubs
        self._rate = RateLimiter(limits.recycled_rate, limits.recycled_burst)
        self._probes = ProbeBudget.from_limits(limits)

    async def check(
        self,
        caller: PeerId,
        number: str,
        question: Callable[[], RecycledQuestion],
        timeout: float,
    ) -> claim_pb2.Envelope:
        """The serving carrier's signed RecycledClaim for ``caller`` (a platform).

        ``number`` is checked here (MALFORMED_NUMBER) and ``question`` is called here, so a
        malformed question is refused and audited like every other refusal. ``timeout`` bounds
        the call to the carrier (seconds).
        """
        self._audit.admit()  # nothing is answered that cannot be audited (AUDIT_BACKLOG)
        number_key = ""
        day: date | None = None
        carrier = ""
        try:
            self._rate.take(caller.id)
            number = normalize_number(number)
            asked = question()
            day = asked.specified_date
            number_key = self._pseudonym(number)
            carrier = self._serving_carrier(number)
            # Past the budget nothing goes to the carrier; the day counts after its answer.
            days = await self._store.run(self._store.asked_dates, caller.id, number_key)
            self._probes.check(days, candidate_days(asked), now_us())
            answer, day = await self._answer(carrier, number, number_key, asked, caller.id, timeout)
        except NumfedError as err:
            probing = err.reason == PROBE_BUDGET_REASON
            self._audit.record(
                AuditRecord(
                    now_us(),
                    "RECYCLED_CHECK",
                    caller.uri,
                    number_key,
                    "PROBING_REFUSED" if probing else err.reason,
                    {"specified_date": day.isoformat()} if probing and day else {},
                )
            )
            raise
        self._audit.record(
            AuditRecord(
                now_us(),
                "RECYCLED_CHECK",
                caller.uri,
                number_key,
                "ANSWERED",
                {"carrier": carrier, "specified_date": day.isoformat()},
            )
        )
        return answer

    def _serving_carrier(self, number: str) -> str:
        """The member carrier that serves ``number`` now: NOT_FOUND ``UNKNOWN_NUMBER`` when no
        carrier of the numbering plan serves it, FAILED_PRECONDITION ``CARRIER_NOT_MEMBER``
        when the carrier that does is not a member of this gateway (nobody can answer)."""
        carrier = self._portability.carrier_for(number)
        if carrier is None:
            raise NotFound("UNKNOWN_NUMBER", "no carrier of the federation serves the number")
        if carrier not in self._carrier_stubs:
            raise FailedPrecondition(
                "CARRIER_NOT_MEMBER",
                "the carrier that serves the number is not a member of this gateway",
                metadata={"carrier": carrier},
            )
        return carrier

    async def _answer(
        self,
        carrier: str,
        number: str,
        number_key: str,
        question: RecycledQuestion,
        platform_id: str,
        timeout: float,
    ) -> tuple[claim_pb2.Envelope, date]:
        """Ask the carrier; count the day it answered for against the platform's probe budget
        (atomically, so concurrent calls on any replica never exceed it); withhold the answer
        if the budget is spent. A date before the carrier's history of the number costs its day
        too: the refusal tells that the history began after it."""
        relayed = carrier_pb2.AnswerRecycledCheckRequest(number=number, platform_id=platform_id)
        question.fill(relayed)
        try:
            answer = await self._carrier_stubs[carrier].AnswerRecycledCheck(
                relayed, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            err = error_from_rpc(exc)
            if err.code in ("INTERNAL", "UNKNOWN", "DATA_LOSS", "CANCELLED"):
                # The carrier's own failure is not the platform's fault, nor the gateway's.
                raise Unavailable(
                    "CARRIER_FAILED", f"carrier {carrier} failed: {exc.code().name}"
                ) from exc
            if err.code == "OUT_OF_RANGE" and err.reason.endswith("_BEFORE_HISTORY"):
                day = refused_day(question, err.metadata)
                await self._spend(platform_id, number_key, day)
            raise err from exc
        try:
            payload = claim_pb2.RecycledClaim.FromString(answer.answer.payload)
            day = from_date(payload.specified_date)
        except (DecodeError, InvalidArgument) as exc:
            raise Unavailable(
                "CARRIER_FAILED", f"carrier {carrier} answered without a date"
            ) from exc
        if question.specified_date not in (None, day):
            raise Unavailable("CARRIER_FAILED", f"carrier {carrier} answered about another date")
        await self._spend(platform_id, number_key, day)
        return answer.answer, day

    async def _spend(self, platform_id: str, number_key: str, day: date) -> None:
        pooled = await self._store.run(
            self._store.spend_asked_date, platform_id, number_key, day, now_us(), self._probes
        )
        if pooled is not None and pooled[0] > self._limits.recycled_probing_alert:
            # Each platform is within its own budget; together they could pool their bits.
            days, platforms = pooled
            self._audit.record(
                AuditRecord(
                    now_us(),
                    "RECYCLED_CHECK",
                    PeerId(Role.PLATFORM, platform_id).uri,
                    number_key,
                    "PROBING_SUSPECTED",
                    {"distinct_days": str(days), "platforms": str(platforms)},
                )
            )
            log.warning(
                "recycled check: %d platforms asked about one number on %d distinct days "
                "(possible pooled probing; audited)",
                platforms,
                days,
            )
