"""Release dispatch: lease due tasks, send each platform its part in batches, record outcomes.

A task is one platform's part of one release job. The dispatcher leases due tasks from the
store, groups them by platform, sends batches of at most ``max_batch_items`` claims (and at most
``MAX_REQUEST_BYTES``), and records each answer in one transaction per batch. A batch whose
whole call fails in a way one claim may cause is bisected by the platform's link, so only that
claim's task is retried and its batch-mates are recorded as answered. A platform that does
not answer is retried with exponential backoff and jitter until the job's deadline passes, and
so is a platform that refuses a claim for a reason that may be its own staleness
(:mod:`numfed.staleness`: a key from a trust bundle newer than its own, a port it has not
applied yet); meanwhile the job shows it UNAVAILABLE with the platform's reason, and each try
counts in its ``attempts``.
Platforms apply each claim once (its claim_id is the idempotency key), so a retry after a lost
answer or a gateway crash releases nothing twice.

The outcomes of batches answered while another batch's are being stored are stored together,
in the next transaction (a group commit, as for accepting releases): a dispatch round's batches
to seven platforms answer at about the same time, and cost one or two transactions, not seven.

While a batch is out, the dispatcher renews the leases of its tasks (a heartbeat every third of
the lease), so a slow platform never lets another replica take a task that is still in flight,
and a replica that dies stops renewing, so its tasks are taken over once the lease runs out.
It leases no more than its platforms can take: at most ``max_in_flight_per_platform`` batches
per platform are out at once. A platform whose circuit breaker is open, or whose health does not
report it SERVING (``PLATFORM_NOT_SERVING``), is not called at all; its tasks are retried later.

On a graceful stop it takes no new tasks, lets the batches out finish (up to the grace
period), records their outcomes and gives back its leases. A batch the platform has answered is
recorded and audited even when the stop comes meanwhile: only the wait for a platform is cut
short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc
from google.rpc import status_pb2

from gateway.audit import AuditRecord
from gateway.backoff import backoff_seconds
from gateway.batcher import Batcher, split
from gateway.fanout import Piece, release_piece
from gateway.platforms import MAX_REQUEST_BYTES, PlatformLink, PlatformNotServing
from gateway.results import now_us, result_from_item, retryable
from gateway.store import JobRow, Store, TaskRow, TaskUpdate
from numfed.config import Limits
from numfed.db import run_to_end
from numfed.errors import Unavailable
from numfed.observability import metrics, tracing
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.rpc import error_status
from numfed.v1 import gateway_pb2

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)
Outcome = gateway_pb2.PlatformOutcome


async def _no_wait() -> None:
    return None


RECORD_MAX_TASKS = 4000
"""Most task outcomes stored in one transaction (SQLite binds at most 32,766 parameters)."""
RECORD_WAIT = 3600.0
"""Seconds a batch's outcomes wait to be stored before the dispatcher gives up on them (its
tasks' leases then expire and they are sent again; the platforms' idempotency makes that
harmless)."""


def _work_size(work: tuple[TaskRow, JobRow]) -> int:
    """A task's bytes in a release request: its claim, job id and framing."""
    return len(work[1].claim or b"") + 48


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        links: Mapping[str, PlatformLink],
        limits: Limits,
        owner: str,
        on_change: Callable[[set[str]], None],
        audit: Callable[[AuditRecord], None] = lambda _record: None,
        audit_room: Callable[[], Awaitable[None]] = _no_wait,
        rng: random.Random | None = None,
    ) -> None:
        self._audit = audit
        self._audit_room = audit_room
        self._store = store
        self._links = links
        self._limits = limits
        self._owner = owner
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        self._sends: set[asyncio.Task[None]] = set()
        self._held: set[tuple[str, str]] = set()
        """(job_id, platform_id) of the tasks out right now, whose leases the heartbeat renews."""
        self._heartbeat: asyncio.Task[None] | None = None
        self._records: Batcher[list[TaskUpdate], set[tuple[str, str]]] = Batcher(
            self._record_together,
            max_items=64,
            max_in_flight=1 if store.dialect == "sqlite" else 2,
            max_bytes=RECORD_MAX_TASKS,  # counted in tasks: a transaction's IN lists stay short
            size=len,
        )
        """Batches' outcomes answered meanwhile, stored in one transaction (a group commit)."""
        self._unreachable: dict[str, RetrySummary] = {}
        """Per platform: its failed release batches, logged as a summary, not one per retry."""
        self._database = {
            what: RetrySummary(log, f"{what} failing", f"{what} working again")
            for what in ("leasing release tasks", "renewing leases", "recording release outcomes")
        }
        """The database away: one line, a summary a minute, one line when it is back (with
        ``--log-level DEBUG`` each failure's traceback)."""

    @property
    def owner(self) -> str:
        """This replica's name on its leases."""
        return self._owner

    @property
    def in_flight(self) -> int:
        """Release batches out to platforms right now."""
        return len(self._sends)

    @property
    def outcomes_waiting(self) -> int:
        """Batches whose outcomes wait for the transaction in progress, to share the next."""
        return self._records.queued

    def wake(self) -> None:
        """New work was committed: look for due tasks now."""
        self._wake.set()

    def _capacity(self) -> int:
        """How many tasks the batches that may still go out can carry."""
        free = max(len(self._links), 1) * self._limits.max_in_flight_per_platform - len(self._sends)
        return max(free, 0) * self._limits.max_batch_items

    async def run(self) -> None:
        self._heartbeat = asyncio.create_task(self._renew_forever())
        try:
            await self._run()
        finally:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    async def _run(self) -> None:
        while not self._stopping:
            await self._audit_room()  # no deliveries the audit log cannot take
            self._wake.clear()
            limit = self._capacity()
            claimed: list[tuple[TaskRow, JobRow]] = []
            if limit > 0:
                try:
                    claimed = await self._store.run(
                        self._store.claim_due,
                        self._owner,
                        now_us(),
                        int(self._limits.lease_seconds * 1e6),
                        limit,
                    )
                    self._database["leasing release tasks"].succeeded()
                except Exception as exc:
                    self._failed("leasing release tasks", exc)
            if claimed and not self._stopping:
                self._dispatch(claimed)
                continue
            if claimed:  # stopping while leasing: give them straight back
                await self._store.run(self._store.release_leases, self._owner, now_us())
                return
            await self._idle()

    async def _renew_forever(self) -> None:
        lease_us = int(self._limits.lease_seconds * 1e6)
        while True:
            await asyncio.sleep(self._limits.lease_seconds / 3)
            if not self._held:
                continue
            keys = list(self._held)
            try:
                renewal = await self._store.run(
                    self._store.renew, self._owner, keys, now_us(), lease_us
                )
                self._database["renewing leases"].succeeded()
            except Exception as exc:
                self._failed("renewing leases", exc)
                continue
            if renewal.lost:  # tasks that finished since ``keys`` was read are not lost
                log.warning("%d of %d leases were lost to other replicas", renewal.lost, len(keys))

    async def _idle(self) -> None:
        try:
            due = await self._store.run(self._store.next_due_us)
        except Exception as exc:  # the database away: look again in a second
            self._failed("leasing release tasks", exc)
            due = None
        wait = 1.0 if due is None else min(max((due - now_us()) / 1e6, 0.01), 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    def _dispatch(self, claimed: list[tuple[TaskRow, JobRow]]) -> None:
        by_platform: dict[str, list[tuple[TaskRow, JobRow]]] = defaultdict(list)
        pieces: dict[str, Piece] = {}
        for task, job in claimed:
            by_platform[task.platform_id].append((task, job))
            self._held.add((job.job_id, task.platform_id))
            if job.job_id not in pieces:  # one job's claim, serialised once for its platforms
                pieces[job.job_id] = release_piece(job.job_id, job.claim or b"")
        for platform_id, work in by_platform.items():
            for batch in split(
                work,
                size=_work_size,
                max_items=self._limits.max_batch_items,
                max_bytes=MAX_REQUEST_BYTES,
            ):
                t = asyncio.create_task(self._send(platform_id, batch, pieces))
                self._sends.add(t)
                t.add_done_callback(self._sends.discard)

    async def _send(
        self, platform_id: str, work: list[tuple[TaskRow, JobRow]], pieces: Mapping[str, Piece]
    ) -> None:
        try:
            await self._send_batch(platform_id, work, pieces)
        except Exception:
            # Never silent: the tasks keep their leases, which expire, and are retried then.
            log.exception("release batch to %s failed unexpectedly", platform_id)
        finally:
            for _task, job in work:
                self._held.discard((job.job_id, platform_id))
            self.wake()  # room for another batch

    def _failed(self, what: str, exc: Exception) -> None:
        log.debug("%s failed", what, exc_info=exc)
        self._database[what].failed(failure_reason(exc))

    def _retries(self, platform_id: str) -> RetrySummary:
        summary = self._unreachable.get(platform_id)
        if summary is None:
            summary = self._unreachable[platform_id] = RetrySummary(
                log,
                f"platform {platform_id} unreachable for releases",
                f"platform {platform_id} reachable again for releases",
            )
        return summary

    async def _send_batch(
        self, platform_id: str, work: list[tuple[TaskRow, JobRow]], pieces: Mapping[str, Piece]
    ) -> None:
        # One span per batch: it continues the trace of the first job's ReleaseBindings call
        # and links the others', so each holder's release is one trace up to the platform.
        with tracing.continued_span(
            "numfed.release.dispatch",
            [job.trace_context for _task, job in work],
            {"numfed.platform": platform_id, "numfed.release.jobs": len(work)},
        ):
            await self._send_traced(platform_id, work, pieces)

    async def _send_traced(
        self, platform_id: str, work: list[tuple[TaskRow, JobRow]], pieces: Mapping[str, Piece]
    ) -> None:
        link = self._links.get(platform_id)
        items = [pieces[job.job_id] for _task, job in work]
        updates: list[TaskUpdate]
        try:
            if link is None:
                raise Unavailable("PLATFORM_NOT_CONFIGURED", f"{platform_id} is not configured")
            results = await link.release(items, self._limits.platform_call_timeout)
        except (grpc.aio.AioRpcError, Unavailable, ValueError, TimeoutError) as exc:
            reason = (
                exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            )
            err: Unavailable
            if isinstance(exc, PlatformNotServing):
                err = exc  # it says it cannot serve now (logged once by its link): its own reason
            else:
                self._retries(platform_id).failed(failure_reason(exc))
                err = Unavailable("PLATFORM_UNAVAILABLE", f"{platform_id} did not answer: {reason}")
            updates = [self._retry_or_expire(task, job, error_status(err)) for task, job in work]
        else:
            self._retries(platform_id).succeeded()
            at = now_us()
            updates = []
            for (task, job), r in zip(work, results, strict=True):
                if retryable(r.status):
                    # Its own failure, or a refusal that may be its staleness (a key from a
                    # newer bundle, a port not applied yet): kept with the platform's reason.
                    updates.append(self._retry_or_expire(task, job, r.status))
                    continue
                res = result_from_item(
                    platform_id,
                    r.status,
                    r.released,
                    attempts=task.attempts + 1,
                    at_us=at,
                    omitted=r.omitted_bindings,
                )
                updates.append(
                    TaskUpdate(
                        job.job_id, platform_id, True, res.outcome, res.SerializeToString(), at
                    )
                )
        # Once the platform has answered, a stop waits for the outcomes to be stored and
        # audited instead of cutting that in two.
        await run_to_end(self._record(platform_id, work, updates))

    async def _record(
        self, platform_id: str, work: list[tuple[TaskRow, JobRow]], updates: list[TaskUpdate]
    ) -> None:
        """Store one batch's outcomes and audit the deliveries (one piece, never cancelled)."""
        try:
            recorded = await self._records.submit(updates, RECORD_WAIT)
            self._database["recording release outcomes"].succeeded()
        except Exception as exc:  # the leases will expire and the tasks be sent again
            self._failed("recording release outcomes", exc)
            return
        changed: set[str] = set()
        number_keys = {job.job_id: job.number_key for _task, job in work}
        for u in updates:
            if (u.job_id, u.platform_id) not in recorded:
                continue
            changed.add(u.job_id)
            if not u.done:
                metrics.RELEASE_RETRIES.labels(platform_id).inc()
            else:
                outcome: str = Outcome.Name(u.outcome)  # type: ignore[arg-type]
                done = outcome.removeprefix("PLATFORM_OUTCOME_")
                metrics.RELEASE_TASKS_DONE.labels(platform_id, done).inc()
                self._audit(
                    AuditRecord(
                        now_us(),
                        "RELEASE_DELIVERY",
                        f"platform:{platform_id}",
                        number_keys[u.job_id],
                        outcome,
                        {"job": u.job_id},
                    )
                )
        if changed:
            self._on_change(changed)

    async def _record_together(
        self, parts: Sequence[list[TaskUpdate]], _timeout: float
    ) -> list[set[tuple[str, str]]]:
        """Store the outcomes of several batches in one transaction; each learns the tasks
        recorded (those this replica still leased). A task in two of them (its lease ran out
        while its batch was out, and it went out again) is recorded, and audited, once: for
        the first."""
        updates: list[TaskUpdate] = []
        keys: list[set[tuple[str, str]]] = []
        taken: set[tuple[str, str]] = set()
        for part in parts:
            mine = {(u.job_id, u.platform_id) for u in part} - taken
            taken |= mine
            updates += [u for u in part if (u.job_id, u.platform_id) in mine]
            keys.append(mine)
        recorded = await self._store.run(self._store.record_tasks, self._owner, updates, now_us())
        return [recorded & mine for mine in keys]

    def _retry_or_expire(self, task: TaskRow, job: JobRow, status: status_pb2.Status) -> TaskUpdate:
        """Try the task again after a backoff (UNAVAILABLE, with ``status`` saying why), or,
        when that would pass the job's deadline, end it EXPIRED."""
        now = now_us()
        delay = backoff_seconds(
            task.attempts,
            initial=self._limits.retry_initial_backoff,
            maximum=self._limits.retry_max_backoff,
            multiplier=self._limits.retry_multiplier,
            rng=self._rng,
        )
        next_us = now + int(delay * 1e6)
        expired = next_us >= job.deadline_us
        res = gateway_pb2.PlatformResult(
            platform_id=task.platform_id,
            outcome=Outcome.PLATFORM_OUTCOME_EXPIRED
            if expired
            else Outcome.PLATFORM_OUTCOME_UNAVAILABLE,
            status=status,
            attempts=task.attempts + 1,
        )
        return TaskUpdate(
            job.job_id, task.platform_id, expired, res.outcome, res.SerializeToString(), next_us
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Take no new tasks; let the batches out finish for up to ``grace`` seconds.

        Batches still waiting for their platform after that are cancelled: their tasks keep
        their leases, which :meth:`Store.release_leases` gives back (or which expire if the
        process dies first), and the platforms' idempotency makes the retry harmless. Outcomes
        being recorded are waited for, so when this returns no batch has database work left;
        the caller then cancels :meth:`run`, which ends once its own has (numfed.db.DbThread).
        Giving back the leases after that cannot race (on PostgreSQL: deadlock with) a record.
        """
        self._stopping = True
        self._wake.set()
        if self._sends and grace > 0:
            await asyncio.wait(list(self._sends), timeout=grace)
        for t in list(self._sends):
            t.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
