"""GatewayService: the federation's front door for carriers and platforms."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf.message import DecodeError

from gateway.audit import AuditRecord, AuditWriter
from gateway.authority import CheckedClaim, Portability, check_claim, select_platforms
from gateway.batcher import BatchCancelled, Batcher, BatchTimeout
from gateway.dispatcher import Dispatcher
from gateway.eventlog import EventLog
from gateway.fanout import Fan, found_nothing, query_piece
from gateway.platforms import NotCalled, PlatformLink
from gateway.publisher import EventPublisher
from gateway.recycled import RecycledCheck
from gateway.results import now_us, operation, result_from_error, result_from_item
from gateway.store import JobRow, Store, TaskRow, claim_digest
from gateway.trustview import TrustView
from gateway.watchers import JobWatchers
from numfed.claims import RELEASE_GRACE, Purpose, RecycledQuestion
from numfed.config import Limits
from numfed.envelope import Envelope
from numfed.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    NumfedError,
    PermissionDenied,
    Unavailable,
)
from numfed.events import verify_event_batch
from numfed.identity import PeerId, Role
from numfed.observability import metrics, tracing
from numfed.rpc import current_peer
from numfed.timeutil import to_us
from numfed.v1 import (
    carrier_pb2_grpc,
    claim_pb2,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
)

__all__ = ["GatewayServicer"]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPERATION = re.compile(r"operations/([0-9a-f]{32})")

QUERY_PURPOSES = (Purpose.QUERY_PRIOR, Purpose.QUERY_OWN)
RELEASE_PURPOSES = (Purpose.RELEASE_PRIOR, Purpose.RELEASE_OWN)


def _failed_query(platform_id: str, exc: BaseException) -> gateway_pb2.PlatformResult:
    """A platform's part of a query that has no answer, as UNAVAILABLE with the reason."""
    if isinstance(exc, NotCalled):  # breaker open, or the platform reports not serving
        return result_from_error(platform_id, exc, attempts=1)
    if isinstance(exc, grpc.aio.AioRpcError):
        err = Unavailable(
            "PLATFORM_UNAVAILABLE",
            f"{platform_id} did not answer: {exc.code().name}",
            metadata={"code": exc.code().name},
        )
    elif isinstance(exc, BatchTimeout | TimeoutError):
        err = Unavailable("PLATFORM_TIMEOUT", f"{platform_id} did not answer in time")
    elif isinstance(exc, BatchCancelled):
        err = Unavailable(
            "PLATFORM_UNAVAILABLE",
            f"{platform_id}'s call was cancelled: it left the federation, or the gateway is "
            "stopping",
            metadata={"code": "CANCELLED"},
        )
    else:
        err = Unavailable("PLATFORM_BAD_ANSWER", f"{platform_id}: {exc}")
    return result_from_error(platform_id, err, attempts=1)


def _job_committed(job: JobRow, platform_ids: Sequence[str]) -> AuditRecord:
    """The audit entry of a release job, committed in the job's own transaction."""
    return AuditRecord(
        job.created_us,
        "RELEASE_JOB",
        PeerId(Role.CARRIER, job.carrier_id).uri,
        job.number_key,
        "COMMITTED",
        {"job": job.job_id, "platforms": str(len(platform_ids))},
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        *,
        store: Store,
        trust: TrustView,
        links: Mapping[str, PlatformLink],
        portability: Portability,
        pseudonym: Callable[[str], str],
        dispatcher: Dispatcher,
        watchers: JobWatchers,
        limits: Limits,
        audit: AuditWriter,
        carrier_stubs: Mapping[str, carrier_pb2_grpc.CarrierServiceAsyncStub],
        events: EventLog,
        publisher: EventPublisher,
        refresh_ports: Callable[[], Awaitable[None]] | None = None,
        checkpoint: Callable[[], claim_pb2.Envelope | None] = lambda: None,
    ) -> None:
        self._refresh_ports = refresh_ports
        self._checkpoint = checkpoint
        self._events = events
        self._publisher = publisher
        self._audit = audit
        self.recycled = RecycledCheck(
            store=store,
            portability=portability,
            pseudonym=pseudonym,
            limits=limits,
            audit=audit,
            carrier_stubs=carrier_stubs,
        )
        """The recycled check, shared with the CAMARA facade (gateway/facades/camara)."""
        self._store = store
        self.trust_view = trust
        """The trust in force: replaced whole (one assignment) when new trust files verify,
        never changed in place, so each call reads one consistent load."""
        self._links = links
        self._portability = portability
        self._pseudonym = pseudonym
        self._dispatcher = dispatcher
        self._watchers = watchers
        self._limits = limits
        # Release jobs are committed in groups: one transaction for the calls that arrive
        # while the previous commit is under way (one at a time on SQLite, its one writer).
        self._commits: Batcher[tuple[JobRow, tuple[str, ...]], JobRow] = Batcher(
            self._commit_jobs,
            max_items=256,
            max_in_flight=1 if store.dialect == "sqlite" else 4,
        )

    # -- trust --------------------------------------------------------------------------------

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        view = self.trust_view  # roots and bundle from one load
        known = request.known_root_version
        if known > len(view.roots):
            raise InvalidArgument(
                "UNKNOWN_ROOT_VERSION", f"root version {known} is newer than the federation's"
            )
        return gateway_pb2.GetTrustBundleResponse(
            roots=view.roots[known:], bundle=view.bundle, checkpoint=self._checkpoint()
        )

    # -- claims -------------------------------------------------------------------------------

    async def _check(
        self, claim: claim_pb2.Envelope, purposes: tuple[Purpose, ...], event: str
    ) -> CheckedClaim:
        """Check a claim and its authority; audit the verdict either way.

        This replica's view of completed ports may trail another replica's by up to
        ``limits.portability_refresh``: before a NUMBER_NOT_SERVED refusal is final, the ports
        are read again from the database and the claim judged once more."""
        caller = current_peer()
        envelope = Envelope.from_proto(claim)

        def judge() -> CheckedClaim:
            return check_claim(
                envelope,
                caller=caller,
                trust=self.trust_view.state,
                portability=self._portability,
                pseudonym=self._pseudonym,
                purposes=purposes,
                now=datetime.now(UTC),
            )

        try:
            try:
                checked = judge()
            except PermissionDenied as err:
                if err.reason != "NUMBER_NOT_SERVED" or self._refresh_ports is None:
                    raise
                await self._refresh_ports()
                checked = judge()
        except NumfedError as err:
            self._audit.record(
                AuditRecord(now_us(), event, caller.uri, self._unverified_key(claim), err.reason)
            )
            raise
        purpose = checked.verified.claim.purpose.name
        self._audit.record(
            AuditRecord(
                now_us(), event, caller.uri, checked.number_key, "ACCEPTED", {"purpose": purpose}
            )
        )
        return checked

    def _unverified_key(self, claim: claim_pb2.Envelope) -> str:
        """The pseudonym of the number a refused claim names, if it names one at all."""
        try:
            number = claim_pb2.TenureClaim.FromString(claim.payload).number
        except DecodeError:
            return ""
        return self._pseudonym(number) if number else ""

    # -- query --------------------------------------------------------------------------------

    def _budget(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        budget = self._limits.default_call_timeout if remaining is None else remaining
        budget -= self._limits.deadline_margin
        if budget <= 0:
            raise DeadlineExceeded("NO_TIME_LEFT", "the caller's deadline leaves no time")
        return min(budget, self._limits.platform_call_timeout)

    async def QueryBindings(
        self, request: gateway_pb2.QueryBindingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.QueryBindingsResponse:
        self._audit.admit()
        await self._check(request.claim, QUERY_PURPOSES, "QUERY")
        platform_ids = select_platforms(request.platform_ids, self._links)
        budget = self._budget(context)
        # One item, verified once here and serialised once, joins every platform's next batch;
        # one wait for all their answers (gateway.fanout).
        piece = query_piece(secrets.token_hex(8), request.claim)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        fan = Fan(len(platform_ids))
        tickets = [
            self._links[p].queries.enqueue(piece, deadline, fan.slot(i))
            for i, p in enumerate(platform_ids)
        ]
        try:
            await fan.wait(budget)
        except asyncio.CancelledError:  # the caller went away: so do its calls downstream
            for t in tickets:
                Batcher.abandon(t, cancel_call=True)
            raise
        at_us = now_us()
        answer = gateway_pb2.QueryBindingsResponse()
        results = answer.results
        for i, (platform_id, got) in enumerate(zip(platform_ids, fan.answers, strict=True)):
            if got is None:  # no answer in time: the call runs on to its own deadline
                Batcher.abandon(tickets[i], cancel_call=False)
                err = Unavailable("PLATFORM_TIMEOUT", f"{platform_id} did not answer in time")
                results.append(result_from_error(platform_id, err, attempts=1))
            elif isinstance(got, BaseException):
                results.append(_failed_query(platform_id, got))
            elif request.compact_none and found_nothing(got):
                answer.none_platform_ids.append(platform_id)
            else:
                results.append(
                    result_from_item(
                        platform_id,
                        got.status,
                        got.bindings,
                        attempts=1,
                        at_us=at_us,
                        omitted=got.omitted_bindings,
                    )
                )
        if log.isEnabledFor(logging.DEBUG):
            outcomes = collections.Counter(
                gateway_pb2.PlatformOutcome.Name(r.outcome).removeprefix("PLATFORM_OUTCOME_")
                for r in results
            )
            if answer.none_platform_ids:
                outcomes["NONE"] += len(answer.none_platform_ids)
            log.debug(
                "query from %s answered for %d platforms (%s)",
                current_peer().id,
                len(platform_ids),
                ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())),
            )
        return answer

    # -- release ------------------------------------------------------------------------------

    async def ReleaseBindings(
        self,
        request: gateway_pb2.ReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operations_pb2.Operation:
        caller = current_peer()
        if not _REQUEST_ID.fullmatch(request.request_id):
            raise InvalidArgument(
                "BAD_REQUEST_ID", "request_id must be 1 to 64 characters [A-Za-z0-9_-]"
            )
        self._audit.admit()  # never a job that cannot be audited
        platform_ids = sorted(select_platforms(request.platform_ids, self._links))
        digest = hashlib.sha256(
            request.claim.SerializeToString(deterministic=True)
            + b"\x00"
            + ",".join(platform_ids).encode()
        ).digest()
        try:
            checked = await self._check(request.claim, RELEASE_PURPOSES, "RELEASE")
        except NumfedError:
            # A retry of an accepted request still gets its operation, even once the claim
            # has expired (AIP-155); anything else is refused for what is wrong with it.
            existing = await self._store.run(self._store.find_job, caller.id, request.request_id)
            if existing is None or existing.request_digest != digest:
                raise
            return await self._operation(existing.job_id)
        created = now_us()
        job = JobRow(
            job_id=secrets.token_hex(16),
            carrier_id=caller.id,
            request_id=request.request_id,
            request_digest=digest,
            number_key=checked.number_key,
            purpose=checked.verified.claim.purpose.value,
            claim=request.claim.SerializeToString(deterministic=True),
            created_us=created,
            # Platforms apply the claim up to RELEASE_GRACE after it expires; not longer.
            deadline_us=min(
                created + int(self._limits.release_job_deadline * 1e6),
                to_us(checked.verified.claim.expires_at + RELEASE_GRACE),
            ),
            done_us=None,
            claim_digest=claim_digest(caller.id, checked.verified.claim.claim_id),
            trace_context=tracing.current_traceparent(),
        )
        try:
            # Committed (with the jobs of other calls arriving meanwhile) before we answer.
            stored = await self._commits.submit((job, tuple(platform_ids)), self._budget(context))
        except BatchTimeout as exc:
            raise DeadlineExceeded(
                "COMMIT_TIMEOUT", "the release could not be stored in time; retry it"
            ) from exc
        if stored.job_id != job.job_id:
            if stored.carrier_id == caller.id and stored.request_id == request.request_id:
                if stored.request_digest != digest:
                    raise AlreadyExists(
                        "REQUEST_ID_REUSED",
                        "request_id was used before with a different request",
                        metadata={"request_id": request.request_id},
                    )
                return await self._operation(stored.job_id)  # a retry of an accepted request
            raise self._claim_used(caller.uri, checked.number_key, stored, caller.id)
        # Its RELEASE_JOB audit entry committed with it (_job_committed).
        metrics.RELEASE_JOBS_ACCEPTED.labels(caller.id).inc()
        log.info(
            "release job %s accepted from carrier %s for %d platforms",
            job.job_id,
            caller.id,
            len(platform_ids),
        )
        self._dispatcher.wake()
        return operation(
            job, [TaskRow(job.job_id, p, 0, 0, 0, created, None) for p in platform_ids]
        )

    def _claim_used(
        self, caller_uri: str, number_key: str, stored: JobRow, carrier_id: str
    ) -> AlreadyExists:
        """A release claim that made a job already, sent again under another request_id."""
        self._audit.record(
            AuditRecord(now_us(), "RELEASE_JOB", caller_uri, number_key, "CLAIM_ALREADY_USED")
        )
        # The digest covers the signing carrier, so the job found is the caller's own: naming
        # it tells the caller nothing about another carrier's work.
        metadata = {"operation": f"operations/{stored.job_id}"}
        if stored.carrier_id != carrier_id:
            metadata = {}
        return AlreadyExists(
            "CLAIM_ALREADY_USED",
            "this release claim was used for a job already; a new release needs a new claim",
            metadata=metadata,
        )

    async def _commit_jobs(
        self, work: Sequence[tuple[JobRow, tuple[str, ...]]], _timeout: float
    ) -> list[JobRow]:
        # Ahead of the dispatcher's and pushers' work: accepting a release never waits for it.
        return await self._store.run_first(
            self._store.create_jobs, list(work), audit=_job_committed
        )

    async def _operation(self, job_id: str) -> operations_pb2.Operation:
        found = await self._store.run(self._store.get_job, job_id)
        if found is None:
            raise NotFound("OPERATION_NOT_FOUND", "no such operation")
        return operation(*found)

    async def _own_job(self, name: str) -> str:
        m = _OPERATION.fullmatch(name)
        if m is None:
            raise InvalidArgument("BAD_OPERATION_NAME", "name must be operations/<32 hex digits>")
        found = await self._store.run(self._store.get_job, m.group(1))
        if found is None or found[0].carrier_id != current_peer().id:
            raise NotFound("OPERATION_NOT_FOUND", "no such operation")
        return m.group(1)

    # -- recycled check ------------------------------------------------------------------------

    async def CheckRecycled(
        self, request: gateway_pb2.CheckRecycledRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.CheckRecycledResponse:
        answer = await self.recycled.check(
            current_peer(),
            request.number,
            lambda: RecycledQuestion.from_request(request),
            self._budget(context),
        )
        return gateway_pb2.CheckRecycledResponse(answer=answer)

    # -- lifecycle events ----------------------------------------------------------------------

    async def PublishEvents(
        self, request: gateway_pb2.PublishEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.PublishEventsResponse:
        caller = current_peer()
        envelope = Envelope.from_proto(request.batch)
        batch = verify_event_batch(envelope, self.trust_view.state, now=datetime.now(UTC))
        if batch.carrier_id != caller.id:
            raise PermissionDenied("CALLER_NOT_SIGNER", "a carrier publishes its own batches only")
        raw = request.batch.SerializeToString(deterministic=True)
        seq = await self._publisher.publish(batch, raw, actor=caller.uri)
        assert seq is not None  # only a sync skips batches that change nothing
        return gateway_pb2.PublishEventsResponse(seq=seq)

    async def PullEvents(
        self, request: gateway_pb2.PullEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.PullEventsResponse:
        caller = current_peer()
        limit = request.max_batches or 20
        if limit > 100:
            raise InvalidArgument("BAD_MAX_BATCHES", "max_batches is at most 100")
        self._audit.admit()
        # One transaction: an acknowledgement beyond what was delivered to this platform is
        # ACK_BEYOND_DELIVERED and changes nothing; what is returned is recorded as delivered.
        before, cursor, rows = await self._store.run(
            self._events.pull, caller.id, request.ack_through_seq, limit, now_us()
        )
        if cursor > before:
            self._audit.record(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    caller.uri,
                    outcome="ACKNOWLEDGED",
                    detail={"through_seq": str(cursor), "mode": "poll"},
                )
            )
        return gateway_pb2.PullEventsResponse(
            batches=[
                events_pb2.SequencedBatch(seq=seq, batch=claim_pb2.Envelope.FromString(raw))
                for seq, raw in rows
            ]
        )

    async def GetOperation(
        self, request: gateway_pb2.GetOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> operations_pb2.Operation:
        return await self._operation(await self._own_job(request.name))

    async def WatchOperation(
        self,
        request: gateway_pb2.WatchOperationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[operations_pb2.Operation]:
        job_id = await self._own_job(request.name)
        loop = asyncio.get_running_loop()
        ends = loop.time() + self._limits.watch_max_age
        last = b""
        with self._watchers.watching(job_id) as changed:
            while True:
                changed.clear()  # before the read: a change after it wakes the wait below
                op = await self._operation(job_id)
                body = op.SerializeToString(deterministic=True)
                if body != last:
                    yield op
                    last = body
                if op.done:
                    return
                left = ends - loop.time()
                if left <= 0:
                    return  # the stream's maximum age: it ends with OK, the client watches again
                # Other replicas' changes are not announced here: look again within a second.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 1.0)):
                        await changed.wait()
