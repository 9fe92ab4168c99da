"""The platform SDK: a PlatformService base that any platform can serve.

It checks each batch, verifies every claim itself against its own trust state (the gateway is
not trusted), checks that the claim's carrier serves the number as far as the platform has seen
the event log (the numbering plan and the ports both carriers signed, docs/authority.md),
applies the purpose and the ``bound_at < X`` rule, applies each release once per
claim_id, and answers with masked summaries only. A platform supplies a store (its accounts and
bindings) and a masking secret.

A verifier that may be behind refreshes before it refuses (DESIGN.md, flow 6): a claim or an
event batch refused for a reason that may be the platform's own staleness
(:mod:`numfed.staleness`: a key from a newer bundle, a port not applied yet) is judged once more
after :meth:`TrustClient.refresh_if_behind`, and only then answered. A claim still refused so
is answered with that reason, which the gateway retries until the job's deadline; an event
batch that still cannot be judged is not acknowledged (see :mod:`platform_stubs.events`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from numfed.claims import RELEASE_GRACE, ClaimPolicy, Purpose, VerifiedClaim, verify_tenure_claim
from numfed.config import MAX_BATCH_ITEMS
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, NumfedError, PermissionDenied, Unavailable
from numfed.portability import NumberPlan
from numfed.rpc import error_status, ok_status
from numfed.staleness import may_be_stale
from numfed.summaries import bound
from numfed.timeutil import from_timestamp
from numfed.trust import TrustedState
from numfed.v1 import binding_pb2, claim_pb2, platform_pb2, platform_pb2_grpc
from platform_stubs.events import EventApplier
from platform_stubs.rules import Binding, Masker, own, prior, select_own, summarize
from platform_stubs.store import PlatformStore, Selector
from platform_stubs.trustclient import TrustClient

__all__ = ["MAX_BATCH_ITEMS", "Knobs", "PlatformServicer", "platform_policy"]

QUERY = (Purpose.QUERY_PRIOR, Purpose.QUERY_OWN)
RELEASE = (Purpose.RELEASE_PRIOR, Purpose.RELEASE_OWN)
KINDS = {k.removeprefix("BINDING_KIND_"): v for k, v in binding_pb2.BindingKind.items()}


@dataclass
class Knobs:
    """Fault injection for reference platforms: answer latency, error rate, outage.

    Errors strike before any work; latency delays the answer after the work is done, so a
    caller that gives up (or dies) meanwhile leaves a release applied but unanswered, the case
    idempotency exists for.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    outage: bool = False
    ack_drop_rate: float = 0.0
    """Events: fraction of deliveries applied but answered UNAVAILABLE (a lost acknowledgement)."""

    def fail(self, rng: random.Random) -> None:
        if self.outage or (self.error_rate > 0 and rng.random() < self.error_rate):
            raise Unavailable("PLATFORM_OUTAGE", "the platform is unavailable (injected)")

    async def delay(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)


def platform_policy(trust: TrustedState) -> ClaimPolicy:
    """The clock skew and claim lifetime of the bundle the platform holds, with the release
    grace: platforms apply a release the gateway retries after its claim expired, within it.

    Rules: PLAT-CLAIM-9, PLAT-REL-4.
    """
    return ClaimPolicy.from_bundle(trust.bundle, release_grace=RELEASE_GRACE)


def _check_batch(item_ids: Sequence[str]) -> None:
    """Rule PLAT-ANS-2: a batch is refused whole when it is empty, too large, or its item ids
    are empty or repeat."""
    if not item_ids:
        raise InvalidArgument("EMPTY_BATCH", "a batch carries at least one item")
    if len(item_ids) > MAX_BATCH_ITEMS:
        raise InvalidArgument("BATCH_TOO_LARGE", f"at most {MAX_BATCH_ITEMS} items per batch")
    if any(not i for i in item_ids) or len(set(item_ids)) != len(item_ids):
        raise InvalidArgument("BAD_ITEM_IDS", "item_ids must be non-empty and unique")


class PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    def __init__(
        self,
        *,
        platform_id: str,
        trust: TrustClient,
        store: PlatformStore,
        masker: Masker,
        knobs: Knobs | None = None,
        events: EventApplier | None = None,
    ) -> None:
        self.events = events or EventApplier(trust=trust, store=store)
        """Lifecycle events, pushed (DeliverEvents) or pulled; its retry bounds are the
        platform config's ``event_retry_limit`` and ``event_retry_window``."""
        self.platform_id = platform_id
        self.trust = trust
        self.store = store
        self.masker = masker
        self.knobs = knobs or Knobs()
        self._rng = random.Random()

    def _summaries(
        self, found: Sequence[Binding], *, with_refs: bool
    ) -> tuple[list[binding_pb2.BindingSummary], int]:
        """What may be said of ``found``: masked summaries (rule PLAT-ANS-5), identical ones
        merged (PLAT-ANS-6), capped (at most MAX_SUMMARIES_PER_CLAIM, largest counts first;
        PLAT-ANS-7), each count at least 1 (PLAT-REL-8); and how many bindings the summaries
        left out stand for (the answer's ``omitted_bindings``)."""
        return bound(
            binding_pb2.BindingSummary(
                platform_id=self.platform_id,
                kind=KINDS.get(s.kind, binding_pb2.BINDING_KIND_ACCOUNT_LOGIN),
                masked_label=s.masked_label,
                count=s.count,
                binding_ref=s.binding_ref,
            )
            for s in summarize(found, self.masker, with_refs=with_refs)
        )

    def _verify(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        trust = self.trust.trusted()
        now = datetime.now(UTC)
        policy = platform_policy(trust)
        out: list[VerifiedClaim | NumfedError] = []
        for item in items:
            try:
                env = Envelope.from_proto(item.claim)
                out.append(
                    verify_tenure_claim(env, trust, now=now, purposes=purposes, policy=policy)
                )
            except NumfedError as err:
                out.append(err)
        return out

    async def _served(
        self, verified: list[VerifiedClaim | NumfedError]
    ) -> list[VerifiedClaim | NumfedError]:
        """Rule PLAT-CLAIM-12: refuse, per item, a claim whose carrier does not serve its
        number (as far as this
        platform has seen the event log). The gateway checks the same, but is not trusted; a
        platform that is behind on events answers NUMBER_NOT_SERVED, which the gateway's
        dispatcher retries."""
        numbers = sorted({v.claim.number for v in verified if isinstance(v, VerifiedClaim)})
        if not numbers:
            return verified
        plan = NumberPlan.from_bundle(self.trust.trusted().bundle)
        serving = await self.store.run(self.store.serving_carriers, numbers, plan)
        return [
            v
            if not isinstance(v, VerifiedClaim) or serving[v.claim.number] == v.carrier_id
            else PermissionDenied(
                "NUMBER_NOT_SERVED",
                f"carrier {v.carrier_id!r} does not serve this number",
                metadata={"carrier": v.carrier_id},
            )
            for v in verified
        ]

    async def _judge(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        """Verify each item's claim and that its carrier serves the number. Items refused for
        a reason that may be this platform's staleness are judged once more after a refresh
        of the trust bundle (if behind); so is the whole call when no bundle is held yet, which
        is then UNAVAILABLE, never a final answer (rules PLAT-TRUST-18, PLAT-ANS-4)."""
        try:
            verdicts = await self._served(self._verify(items, purposes))
        except Unavailable as err:
            if not may_be_stale(err):
                raise
            await self.trust.refresh_if_behind()
            verdicts = await self._served(self._verify(items, purposes))
        again = [i for i, v in enumerate(verdicts) if may_be_stale(v)]
        if again:
            await self.trust.refresh_if_behind()
            redo = await self._served(self._verify([items[i] for i in again], purposes))
            for i, v in zip(again, redo, strict=True):
                verdicts[i] = v
        return verdicts

    async def BatchQueryBindings(
        self,
        request: platform_pb2.BatchQueryBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchQueryBindingsResponse:
        """Rule PLAT-ANS-1."""
        _check_batch([i.item_id for i in request.items])
        self.knobs.fail(self._rng)
        verified = await self._judge(request.items, QUERY)
        numbers = sorted({v.claim.number for v in verified if isinstance(v, VerifiedClaim)})
        by_number = await self.store.run(self.store.bindings_for, numbers)
        # Answers shaped for the common case (rule PLAT-ANS-8): asked to, answer only the claims
        # found or refused.
        sparse = request.sparse_answers
        results = []
        for item, v in zip(request.items, verified, strict=True):
            if isinstance(v, NumfedError):
                results.append(
                    platform_pb2.QueryItemResult(item_id=item.item_id, status=error_status(v))
                )
                continue
            found, omitted = self._listed(v, by_number[v.claim.number])
            if sparse and not found and not omitted:
                continue  # accepted, nothing bound: silence says so
            results.append(
                platform_pb2.QueryItemResult(
                    item_id=item.item_id,
                    status=ok_status(),
                    bindings=found,
                    omitted_bindings=omitted,
                )
            )
        await self.knobs.delay()
        return platform_pb2.BatchQueryBindingsResponse(results=results, sparse=sparse)

    def _listed(
        self, v: VerifiedClaim, bindings: list[Binding]
    ) -> tuple[list[binding_pb2.BindingSummary], int]:
        """What a query claim lists (rule PLAT-REL-7), as :meth:`_summaries`: QUERY_PRIOR the
        active bindings made before X, stale ones included, without refs; QUERY_OWN those made
        at or after X, each with its ref."""
        x = v.claim.tenure_start
        if v.claim.purpose is Purpose.QUERY_PRIOR:
            return self._summaries(prior(bindings, x), with_refs=False)
        return self._summaries(own(bindings, x), with_refs=True)

    async def DeliverEvents(
        self,
        request: platform_pb2.DeliverEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.DeliverEventsResponse:
        """Apply the batches in order and acknowledge through the last one handled: a batch
        that cannot be judged yet stops the call there (``ack_through_seq`` is the batch
        before it, or 0 when it came first), and the gateway sends it again after a backoff."""
        if not request.batches:
            raise InvalidArgument("EMPTY_BATCH", "deliver at least one batch")
        self.knobs.fail(self._rng)
        last = await self.events.apply(request.batches)
        if self.knobs.ack_drop_rate > 0 and self._rng.random() < self.knobs.ack_drop_rate:
            raise Unavailable("ACK_LOST", "applied, but the acknowledgement is lost (injected)")
        return platform_pb2.DeliverEventsResponse(ack_through_seq=last)

    def _selector(self, v: VerifiedClaim) -> Selector:
        x = v.claim.tenure_start

        def select(bindings: list[Binding]) -> tuple[list[int], bytes]:
            # Every binding chosen is released; the stored (and replayed) result is bounded.
            if v.claim.purpose is Purpose.RELEASE_PRIOR:
                chosen = prior(bindings, x)
                released, omitted = self._summaries(chosen, with_refs=False)
                result = platform_pb2.ReleaseItemResult(
                    status=ok_status(), released=released, omitted_bindings=omitted
                )
            else:
                try:
                    chosen = select_own(bindings, v.claim.binding_refs, x, self.masker)
                    released, omitted = self._summaries(chosen, with_refs=True)
                    result = platform_pb2.ReleaseItemResult(
                        status=ok_status(), released=released, omitted_bindings=omitted
                    )
                except NumfedError as err:
                    chosen = []
                    result = platform_pb2.ReleaseItemResult(status=error_status(err))
            return [b.binding_id for b in chosen], result.SerializeToString()

        return select

    async def BatchReleaseBindings(
        self,
        request: platform_pb2.BatchReleaseBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        _check_batch([i.item_id for i in request.items])
        self.knobs.fail(self._rng)
        verified = await self._judge(request.items, RELEASE)
        trust = self.trust.trusted()
        late = {
            i: claim_id
            for i, (item, v) in enumerate(zip(request.items, verified, strict=True))
            if (claim_id := _expired_release(item.claim, v, trust)) is not None
        }
        replays = (
            await self.store.run(self.store.replay_releases, list(late.values())) if late else {}
        )
        work = [
            (v.claim.claim_id, v.claim.number, self._selector(v))
            for v in verified
            if isinstance(v, VerifiedClaim)
        ]
        applied = iter(await self.store.run(self.store.apply_releases, work, datetime.now(UTC)))
        results = []
        for i, (item, v) in enumerate(zip(request.items, verified, strict=True)):
            if isinstance(v, NumfedError):
                stored = replays.get(late.get(i, b""))
                if stored is None:
                    results.append(
                        platform_pb2.ReleaseItemResult(item_id=item.item_id, status=error_status(v))
                    )
                    continue
                r = _stored_result(stored)
                r.replayed = True
            else:
                done = next(applied)
                r = _stored_result(done.result)
                r.replayed = done.replayed
            r.item_id = item.item_id
            results.append(r)
        await self.knobs.delay()
        return platform_pb2.BatchReleaseBindingsResponse(results=results)


def _stored_result(raw: bytes) -> platform_pb2.ReleaseItemResult:
    """A stored first result, bounded as answers are now (one stored before the caps were
    applied may list every binding it released)."""
    r = platform_pb2.ReleaseItemResult.FromString(raw)
    released, r.omitted_bindings = bound(r.released, r.omitted_bindings)
    del r.released[:]
    r.released.extend(released)
    return r


def _expired_release(
    envelope: claim_pb2.Envelope, outcome: VerifiedClaim | NumfedError, trust: TrustedState
) -> bytes | None:
    """The claim_id of a release refused only because it has expired, else None.

    The gateway retries a release until its job deadline, which outlives the claim; when the
    platform applied it but the answer was lost, the retry must get the first result back.
    CLAIM_EXPIRED comes after the signature, key and issuer checks passed at the current time;
    verifying again as of the claim's own expiry adds the purpose and lifetime checks. Such a
    claim is answered from the stored result only, never applied.

    Rule PLAT-REL-4.
    """
    if not isinstance(outcome, NumfedError) or outcome.reason != "CLAIM_EXPIRED":
        return None
    try:
        env = Envelope.from_proto(envelope)
        expires_at = from_timestamp(claim_pb2.TenureClaim.FromString(env.payload).expires_at)
        v = verify_tenure_claim(env, trust, now=expires_at, purposes=RELEASE)
    except (NumfedError, DecodeError):
        return None
    return v.claim.claim_id
