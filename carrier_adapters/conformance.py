"""A carrier adapter's conformance mode: ``CarrierConformanceService`` (test only).

Served only when the carrier's config says ``conformance = true``: the conformance kit seeds
number histories (ports included) and test subscribers, and asks for claims and event batches
signed exactly as the carrier signs them, without a holder to verify. Gateway identity only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from numfed.claims import Purpose, normalize_number
from numfed.errors import InvalidArgument
from numfed.events import MAX_EVENTS_PER_BATCH, LifecycleEvent
from numfed.history import EventKind, NumberEvent, NumberHistory
from numfed.identity import Role
from numfed.scenario import Holder
from numfed.timeutil import from_timestamp
from numfed.v1 import claim_pb2, conformance_pb2, conformance_pb2_grpc

if TYPE_CHECKING:
    from carrier_adapters.base import CarrierAdapter

__all__ = ["CONFORMANCE_POLICY", "CONFORMANCE_SERVICE", "CarrierConformanceServicer"]

CONFORMANCE_SERVICE = "numfed.v1.CarrierConformanceService"
CONFORMANCE_POLICY = {
    f"/{CONFORMANCE_SERVICE}/{m}": frozenset({Role.GATEWAY})
    for m in ("SeedNumberHistory", "IssueTenureClaim", "IssueEventBatch")
}
_KINDS = {
    conformance_pb2.HISTORY_EVENT_KIND_ASSIGNED: EventKind.ASSIGNED,
    conformance_pb2.HISTORY_EVENT_KIND_DEACTIVATED: EventKind.DEACTIVATED,
    conformance_pb2.HISTORY_EVENT_KIND_PORTED: EventKind.PORTED,
}


def _history(pb: conformance_pb2.NumberHistory) -> NumberHistory:
    events = []
    for e in pb.events:
        kind = _KINDS.get(e.kind)
        if kind is None or not e.HasField("at") or not e.carrier_id:
            raise InvalidArgument("BAD_HISTORY", "each event has a kind, a time and a carrier")
        events.append(NumberEvent(kind, from_timestamp(e.at), e.carrier_id, e.holder_id or None))
    if not events:
        raise InvalidArgument("BAD_HISTORY", f"{pb.number}: a history has events")
    return NumberHistory(normalize_number(pb.number), tuple(events))


class CarrierConformanceServicer(conformance_pb2_grpc.CarrierConformanceServiceServicer):
    def __init__(self, adapter: CarrierAdapter) -> None:
        self._a = adapter

    async def SeedNumberHistory(
        self,
        request: conformance_pb2.SeedNumberHistoryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.SeedNumberHistoryResponse:
        histories = [_history(h) for h in request.histories]
        holders = [Holder(s.holder_id, s.name, s.id_number) for s in request.subscribers]
        if any(not (h.holder_id and h.name and h.id_number) for h in holders):
            raise InvalidArgument("BAD_SUBSCRIBER", "a subscriber has an id, name and ID number")
        self._a.registry.seed(holders, histories)
        return conformance_pb2.SeedNumberHistoryResponse(numbers_recorded=len(histories))

    async def IssueTenureClaim(
        self,
        request: conformance_pb2.IssueTenureClaimRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.IssueTenureClaimResponse:
        if request.purpose == claim_pb2.PURPOSE_UNSPECIFIED:
            raise InvalidArgument("PURPOSE_UNSPECIFIED", "name the claim's purpose")
        try:
            purpose = Purpose(request.purpose)
        except ValueError as exc:
            raise InvalidArgument("BAD_PURPOSE", "unknown purpose") from exc
        number = normalize_number(request.number)
        claim = self._a.issue_claim(number, purpose, tuple(request.binding_refs))
        return conformance_pb2.IssueTenureClaimResponse(claim=claim)

    async def IssueEventBatch(
        self,
        request: conformance_pb2.IssueEventBatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.IssueEventBatchResponse:
        if not 1 <= len(request.events) <= MAX_EVENTS_PER_BATCH:
            raise InvalidArgument("BAD_BATCH_SIZE", f"1 to {MAX_EVENTS_PER_BATCH} events")
        events = [LifecycleEvent.from_proto(e) for e in request.events]
        return conformance_pb2.IssueEventBatchResponse(batch=self._a.sign_events(events))
