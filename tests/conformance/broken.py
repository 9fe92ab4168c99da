"""Deliberately broken members, each breaking one rule the conformance kit checks.

Each is the reference member with one realistic mistake, named by what it gets wrong. The
mapping to the one check that must catch it is ``BROKEN_PLATFORMS`` / ``BROKEN_CARRIERS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message

from carrier_adapters.base import CarrierAdapter
from carrier_adapters.cmcc import CmccAdapter
from numfed.claims import (
    Purpose,
    RecycledClaim,
    RecycledQuestion,
    TenureClaim,
    VerifiedClaim,
    sign_claim,
    verify_tenure_claim,
)
from numfed.envelope import Envelope, SigningKey, VerifyKey
from numfed.errors import NotFound, NumfedError
from numfed.events import LifecycleEvent, VerifiedBatch, sign_event_batch, verify_event_batch
from numfed.history import EventKind as HistoryKind
from numfed.history import day_end
from numfed.identity import PeerId, Role
from numfed.rpc import ok_status
from numfed.trust import CarrierKey, TrustBundle, TrustedState
from numfed.v1 import claim_pb2, events_pb2, platform_pb2
from platform_stubs import sdk
from platform_stubs.events import EventApplier
from platform_stubs.rules import Binding
from platform_stubs.sdk import PlatformServicer
from platform_stubs.store import Selector, applied_events, applied_releases

# --- platforms --------------------------------------------------------------------------------


class ReleasesAtX(PlatformServicer):
    """Releases bindings with bound_at <= X: the current holder's binding made at X goes too."""

    def _selector(self, v: VerifiedClaim) -> Selector:
        x = v.claim.tenure_start

        def select(bindings: list[Binding]) -> tuple[list[int], bytes]:
            chosen = [b for b in bindings if b.active and b.bound_at <= x]
            released, omitted = self._summaries(chosen, with_refs=False)
            result = platform_pb2.ReleaseItemResult(
                status=ok_status(), released=released, omitted_bindings=omitted
            )
            return [b.binding_id for b in chosen], result.SerializeToString()

        return select


@dataclass(frozen=True)
class _AlwaysVerifies(VerifyKey):
    def verify_raw(self, sig: bytes, message: bytes) -> bool:
        return True


class _NoSignatureTrust:
    """Looks keys up (revocation, scope and window still apply) but never checks a signature."""

    def __init__(self, inner: TrustedState) -> None:
        self._inner = inner

    @property
    def bundle(self) -> TrustBundle | None:
        return self._inner.bundle

    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        k = self._inner.carrier_key(key_id, now=now)
        gullible = _AlwaysVerifies(k.key.key_id, k.key.algorithm, k.key.spki, k.key._key)
        return replace(k, key=gullible)


class SkipsSignatureCheck(PlatformServicer):
    """Finds the claim's key in the bundle but never verifies the signature with it."""

    def _verify(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        trust: Any = _NoSignatureTrust(self.trust.trusted())
        now = datetime.now(UTC)
        out: list[VerifiedClaim | NumfedError] = []
        for item in items:
            try:
                out.append(
                    verify_tenure_claim(
                        Envelope.from_proto(item.claim),
                        trust,
                        now=now,
                        purposes=purposes,
                        policy=sdk.platform_policy(trust),
                    )
                )
            except NumfedError as err:
                out.append(err)
        return out


class _KeysOfNamedCarrier:
    """Looks keys up (signature, revocation, scope and window still apply) but takes every key
    for one of ``carrier_id``, the carrier the signed object names: PLAT-CLAIM-KEY-CARRIER
    skipped, nothing else."""

    def __init__(self, inner: TrustedState, carrier_id: str) -> None:
        self._inner = inner
        self._carrier_id = carrier_id

    @property
    def bundle(self) -> TrustBundle | None:
        return self._inner.bundle

    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        return replace(self._inner.carrier_key(key_id, now=now), carrier_id=self._carrier_id)


def _named_carrier(trust: TrustedState, payload: bytes, message: type[Message]) -> Any:
    """``trust`` as a platform sees it that believes the carrier id in ``payload``."""
    try:
        carrier_id = message.FromString(payload).carrier_id  # type: ignore[attr-defined]
    except DecodeError:
        return trust
    return _KeysOfNamedCarrier(trust, carrier_id) if carrier_id else trust


class TrustsClaimedCarrier(PlatformServicer):
    """Believes the carrier a claim names, whichever carrier's key of the bundle signed it."""

    def _verify(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        trust = self.trust.trusted()
        now = datetime.now(UTC)
        out: list[VerifiedClaim | NumfedError] = []
        for item in items:
            try:
                env = Envelope.from_proto(item.claim)
                out.append(
                    verify_tenure_claim(
                        env,
                        _named_carrier(trust, env.payload, claim_pb2.TenureClaim),
                        now=now,
                        purposes=purposes,
                        policy=sdk.platform_policy(trust),
                    )
                )
            except NumfedError as err:
                out.append(err)
        return out


class _BatchCarrierBelieved(EventApplier):
    def _verify(
        self, batch: claim_pb2.Envelope, trust: TrustedState, now: datetime
    ) -> VerifiedBatch:
        env = Envelope.from_proto(batch)
        named = _named_carrier(trust, env.payload, events_pb2.EventBatch)
        return verify_event_batch(env, named, now=now, from_log=True)


class TrustsBatchCarrier(PlatformServicer):
    """Believes the carrier an event batch names, whichever carrier's key of the bundle signed
    it (claims are checked right)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _BatchCarrierBelieved(trust=self.trust, store=self.store)


class LeaksAccountId(PlatformServicer):
    """Puts the raw account id into the summary's label."""

    def _summaries(self, found: Sequence[Binding], *, with_refs: bool) -> tuple[list[Any], int]:
        summaries, omitted = super()._summaries(found, with_refs=with_refs)
        for s, b in zip(summaries, found, strict=False):  # fewer summaries: merged, capped
            s.masked_label = f"account {b.account_id}"
        return summaries, omitted


class AppliesReplayTwice(PlatformServicer):
    """Forgets which release claims it applied, so a retried claim is applied again."""

    async def BatchReleaseBindings(
        self, request: platform_pb2.BatchReleaseBindingsRequest, context: Any
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        ids = []
        for item in request.items:
            try:
                ids.append(claim_pb2.TenureClaim.FromString(item.claim.payload).claim_id)
            except DecodeError:
                continue
        store = self.store

        def forget() -> None:
            with store.engine.begin() as c:
                c.execute(sa.delete(applied_releases).where(applied_releases.c.claim_id.in_(ids)))

        await store.run(forget)
        return await super().BatchReleaseBindings(request, context)


class _ForgetfulEvents(EventApplier):
    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        ids = []
        for b in batches:
            payload = Envelope.from_proto(b.batch).payload
            ids += [e.event_id for e in events_pb2.EventBatch.FromString(payload).events]
        store = self._store

        def forget() -> None:
            with store.engine.begin() as c:
                c.execute(sa.delete(applied_events).where(applied_events.c.event_id.in_(ids)))

        await store.run(forget)
        return await super().apply(batches)


class AppliesEventTwice(PlatformServicer):
    """Does not remember applied event ids, so a re-delivered event is applied again."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _ForgetfulEvents(trust=self.trust, store=self.store)


class _NoStaleEvents(EventApplier):
    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        kept = []
        for b in batches:
            payload = Envelope.from_proto(b.batch).payload
            kinds = {e.kind for e in events_pb2.EventBatch.FromString(payload).events}
            if events_pb2.LIFECYCLE_KIND_REASSIGNED not in kinds:
                kept.append(b)
        await super().apply(kept)
        return batches[-1].seq if batches else 0


class IgnoresReassigned(PlatformServicer):
    """Acknowledges REASSIGNED events without marking older bindings stale."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _NoStaleEvents(trust=self.trust, store=self.store)


BROKEN_PLATFORMS: dict[str, tuple[type[PlatformServicer], str]] = {
    "releases_at_x": (ReleasesAtX, "release_keeps_binding_at_x"),
    "skips_signature_check": (SkipsSignatureCheck, "forged_claim_refused"),
    "trusts_claimed_carrier": (TrustsClaimedCarrier, "carrier_key_mismatch_refused"),
    "trusts_batch_carrier": (TrustsBatchCarrier, "carrier_key_mismatch_refused"),
    "leaks_account_id": (LeaksAccountId, "summaries_masked"),
    "applies_replay_twice": (AppliesReplayTwice, "replayed_release_applied_once"),
    "applies_event_twice": (AppliesEventTwice, "events_applied_once"),
    "ignores_reassigned": (IgnoresReassigned, "stale_binding_refuses_sms_login"),
}
"""Broken platform -> (its servicer, the one check that must fail)."""


# --- carriers ---------------------------------------------------------------------------------


class PortMovesX(CmccAdapter):
    """Takes X from the latest assignment *or port*, so a port resets the holder's tenure."""

    def issue_claim(
        self, number: str, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        now = self.clock()
        self.registry.current_holder(number, now)  # same refusals as the reference
        x = max(
            e.at
            for e in self.registry.history(number).events
            if e.kind in (HistoryKind.ASSIGNED, HistoryKind.PORTED) and e.at <= now
        )
        claim = TenureClaim.new(
            number=number,
            carrier_id=self.carrier_id,
            tenure_start=x,
            purpose=purpose,
            now=now,
            lifetime=self.claim_lifetime,
            binding_refs=refs,
        )
        return sign_claim(claim, self.signer).to_proto()


class ChangedOnDayOfX(CmccAdapter):
    """Answers the recycled check as of the start of the day asked about, not its end: a platform
    asking about the day the tenure began is told the number changed holder, though the holder at
    the end of that day holds it still."""

    def answer_recycled(
        self, number: str, question: RecycledQuestion, platform_id: str
    ) -> claim_pb2.Envelope:
        now = self.clock()
        history = self.registry.history(number)
        if history.carrier_at(now) != self.carrier_id:
            raise NotFound("NUMBER_NOT_SERVED", "this carrier does not serve the number")
        if question.specified_date is not None:
            answer = history.recycled_after(question.specified_date, self.time_zone, now)
        else:
            assert question.since is not None
            answer = history.recycled_since(question.since, self.time_zone, now)
        start = day_end(answer.day - timedelta(days=1), self.time_zone)
        claim = RecycledClaim(
            number=number,
            carrier_id=self.carrier_id,
            since=start,
            changed=history.changed_holder_since(start, now),
            platform_id=PeerId(Role.PLATFORM, platform_id).id,
            issued_at=now,
            expires_at=now + self.claim_lifetime,
            specified_date=answer.day,
        )
        return sign_claim(claim, self.signer).to_proto()


class SignsEventsWithStaleKey(CmccAdapter):
    """Signs event batches with an old key that is no longer in the trust bundle."""

    _old_key = SigningKey.generate()

    def sign_events(self, events: Sequence[LifecycleEvent]) -> claim_pb2.Envelope:
        return sign_event_batch(self.carrier_id, events, self._old_key, now=self.clock()).to_proto()


BROKEN_CARRIERS: dict[str, tuple[type[CarrierAdapter], str]] = {
    "port_moves_x": (PortMovesX, "port_keeps_tenure_start"),
    "changed_on_day_of_x": (ChangedOnDayOfX, "recycled_check_cases"),
    "signs_events_with_stale_key": (SignsEventsWithStaleKey, "event_batch_signed"),
}
"""Broken carrier (all cmcc) -> (its adapter, the one check that must fail)."""
