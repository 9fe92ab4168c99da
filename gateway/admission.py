"""The gateway's RPC classes and their concurrency bounds (invariant 7: overload sheds).

Each class has its own bound, so a surge of one kind of call (one-click queries on launch day)
cannot starve another (releases already accepted, operation polls, lifecycle events); and each
caller has its own share of every class, so one member cannot starve the others.
"""

from __future__ import annotations

from numfed.config import Limits
from numfed.rpc import Admission, RpcClass

__all__ = ["METHOD_CLASSES", "admission"]

_SVC = "/numfed.v1.GatewayService/"

METHOD_CLASSES = {
    _SVC + "QueryBindings": "query",
    _SVC + "ReleaseBindings": "release",
    _SVC + "GetOperation": "read",
    _SVC + "GetTrustBundle": "read",
    _SVC + "CheckRecycled": "read",
    _SVC + "PullEvents": "events",
    _SVC + "PublishEvents": "events",
    _SVC + "WatchOperation": "watch",
}


def admission(limits: Limits) -> Admission:
    """The gateway's classes, each bounded in total and per caller (``limits.caller_share`` of
    a class's slots and queue; ``limits.max_watches_per_caller`` streams)."""
    wait = limits.admission_queue_wait

    def bounded(name: str, concurrency: int, queue: int) -> RpcClass:
        return RpcClass(name, concurrency, queue, wait, limits.per_caller(concurrency, queue))

    return Admission(
        [
            bounded("query", limits.max_concurrent_queries, limits.max_queued_queries),
            bounded("release", limits.max_concurrent_releases, limits.max_queued_releases),
            bounded("read", limits.max_concurrent_reads, limits.max_queued_reads),
            bounded("events", limits.max_concurrent_events, limits.max_queued_events),
            # A watch holds its slot for as long as it streams: no queue, a fixed cap.
            RpcClass("watch", limits.max_watches, 1, 0.01, limits.max_watches_per_caller),
        ],
        METHOD_CLASSES,
    )
