"""Turn platforms' answers into per-platform results, and jobs into Operations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2

from gateway.store import TASK_DONE, JobRow, TaskRow
from numfed.errors import NumfedError
from numfed.rpc import error_info, error_status
from numfed.staleness import STALE_VERIFIER_REASONS
from numfed.summaries import bound
from numfed.timeutil import to_us
from numfed.v1 import binding_pb2, gateway_pb2

__all__ = [
    "RETRYABLE_CODES",
    "STALE_VERIFIER_REASONS",
    "operation",
    "result_from_error",
    "result_from_item",
    "retryable",
]

RETRYABLE_CODES = frozenset(
    c.value[0]
    for c in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    )
)
"""Per-platform failures that a release retries; any other code is the platform's answer."""


def retryable(status: status_pb2.Status) -> bool:
    """Whether a per-claim answer is a failure to retry rather than the platform's verdict.

    Besides the transport failures, a refusal that may be the platform's own staleness
    (:data:`numfed.staleness.STALE_VERIFIER_REASONS`: a key from a newer bundle, a port it has
    not applied yet) is retried: the gateway checked the same claim against its current bundle
    and the whole log, and the platform refreshes before it refuses again. A query shows such a
    platform UNAVAILABLE with the platform's reason, never REFUSED.
    """
    if status.code in RETRYABLE_CODES:
        return True
    info = error_info(status)
    return info is not None and info.reason in STALE_VERIFIER_REASONS


Outcome = gateway_pb2.PlatformOutcome


def _ts(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def now_us() -> int:
    return to_us(datetime.now(UTC))


def result_from_item(
    platform_id: str,
    status: status_pb2.Status,
    bindings: Sequence[binding_pb2.BindingSummary],
    *,
    attempts: int,
    at_us: int,
    omitted: int = 0,
) -> gateway_pb2.PlatformResult:
    """A platform's per-claim answer as a PlatformResult, its summaries merged and capped
    (:func:`numfed.summaries.bound`) whatever the platform sent; ``omitted`` is the
    platform's own ``omitted_bindings``."""
    if status.code == 0:
        listed, omitted = bound(bindings, omitted)
        found = listed or omitted
        return gateway_pb2.PlatformResult(
            platform_id=platform_id,
            outcome=Outcome.PLATFORM_OUTCOME_FOUND if found else Outcome.PLATFORM_OUTCOME_NONE,
            bindings=listed,
            omitted_bindings=omitted,
            attempts=attempts,
            answered_at=_ts(at_us),
        )
    outcome = (
        Outcome.PLATFORM_OUTCOME_UNAVAILABLE
        if retryable(status)
        else Outcome.PLATFORM_OUTCOME_REFUSED
    )
    return gateway_pb2.PlatformResult(
        platform_id=platform_id,
        outcome=outcome,
        status=status,
        attempts=attempts,
        answered_at=_ts(at_us),
    )


def result_from_error(
    platform_id: str,
    err: NumfedError,
    *,
    attempts: int,
    outcome: gateway_pb2.PlatformOutcome.ValueType | None = None,
) -> gateway_pb2.PlatformResult:
    """A platform that did not answer (down, timed out) as a PlatformResult."""
    return gateway_pb2.PlatformResult(
        platform_id=platform_id,
        outcome=outcome if outcome is not None else Outcome.PLATFORM_OUTCOME_UNAVAILABLE,
        status=error_status(err),
        attempts=attempts,
    )


def _task_result(task: TaskRow) -> gateway_pb2.PlatformResult:
    if task.result:
        return gateway_pb2.PlatformResult.FromString(task.result)
    return gateway_pb2.PlatformResult(platform_id=task.platform_id, attempts=task.attempts)


def operation(job: JobRow, tasks: Sequence[TaskRow]) -> operations_pb2.Operation:
    """The job as an AIP-151 Operation: metadata always, response once every platform is done."""
    results = [_task_result(t) for t in tasks]
    meta = gateway_pb2.ReleaseMetadata(
        create_time=_ts(job.created_us),
        deadline=_ts(job.deadline_us),
        platforms_done=sum(1 for t in tasks if t.state == TASK_DONE),
        platforms_total=len(tasks),
        results=results,
    )
    op = operations_pb2.Operation(name=f"operations/{job.job_id}", done=job.done_us is not None)
    packed = any_pb2.Any()
    packed.Pack(meta)
    op.metadata.CopyFrom(packed)
    if job.done_us is not None:
        response = any_pb2.Any()
        response.Pack(gateway_pb2.ReleaseResponse(results=results, done_time=_ts(job.done_us)))
        op.response.CopyFrom(response)
    return op
