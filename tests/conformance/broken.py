"""Deliberately broken members, each breaking exactly one rule of ``docs/spec/``.

Each is the reference member with one realistic mistake, named by what it gets wrong; its
``breaks`` names the rule id it breaks, and the kit must fail it on that rule's check and no
other (``tests/conformance/test_mutation.py``). Every MUST rule of the spec has at least one
(``tests/conformance/test_spec.py``).

A broken platform is a :class:`PlatformServicer` subclass. Where the mistake lies in the trust
client (its state machine, its persistence, its health), the class names the
:class:`TrustClient` it runs with; where it lies in the transport (its certificate, who may
call it), :meth:`BrokenPlatform.patches` changes what the reference platform starts with. A
broken carrier is a :class:`CmccAdapter` subclass, likewise.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar
from unittest import mock

import grpc
import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message

import carrier_adapters.base as carrier_base
import numfed.rpc as numfed_rpc
import platform_stubs.conformance as platform_conformance
import platform_stubs.reference as reference
from carrier_adapters.cmcc import CmccAdapter
from numfed import pki
from numfed.claims import (
    RELEASE_GRACE,
    TENURE_CLAIM_PAYLOAD_TYPE,
    ClaimPolicy,
    Purpose,
    RecycledClaim,
    RecycledQuestion,
    TenureClaim,
    VerifiedClaim,
    require_in_plan,
    require_key_of,
    sign_claim,
    trusted_bundle,
)
from numfed.envelope import Envelope, SigningKey, pae, verification_result
from numfed.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumfedError,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
)
from numfed.events import (
    EVENT_BATCH_PAYLOAD_TYPE,
    EventKind,
    LifecycleEvent,
    VerifiedBatch,
    sign_event_batch,
    verify_event_batch,
)
from numfed.history import EventKind as HistoryKind
from numfed.identity import PeerId, Role
from numfed.portability import NumberPlan
from numfed.rpc import error_status, ok_status
from numfed.staleness import may_be_stale
from numfed.summaries import MAX_SUMMARIES_PER_CLAIM
from numfed.timecheck import check_happened, check_issued_at, check_key_window
from numfed.timeutil import from_date, from_timestamp
from numfed.trust import (
    BUNDLE_PAYLOAD_TYPE,
    ROOT_PAYLOAD_TYPE,
    CarrierKey,
    Root,
    TrustBundle,
    TrustedState,
    TrustReason,
)
from numfed.v1 import binding_pb2, claim_pb2, events_pb2, platform_pb2
from platform_stubs import sdk
from platform_stubs.events import EventApplier
from platform_stubs.rules import Binding, own, prior, summarize
from platform_stubs.sdk import PlatformServicer
from platform_stubs.store import Selector, _us, applied_releases, bindings
from platform_stubs.trustclient import TrustClient

# --- the machinery ----------------------------------------------------------------------------


class BrokenPlatform(PlatformServicer):
    """A reference platform with one rule broken."""

    breaks: ClassVar[str] = ""
    trust_client: ClassVar[type[TrustClient] | None] = None
    """The trust client it runs with, when its mistake lies there."""

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        """What the reference platform starts with instead, while this one starts."""
        if cls.trust_client is None:
            return contextlib.nullcontext()
        return mock.patch.object(reference, "TrustClient", cls.trust_client)


def _with_state(state: type[TrustedState]) -> type[TrustClient]:
    """A trust client that keeps ``state`` as its trust state machine."""
    return type(f"TrustClientWith{state.__name__}", (TrustClient,), {"state_class": state})


def lenient_claim(
    envelope: Envelope,
    trust: TrustedState,
    *,
    now: datetime,
    purposes: Sequence[Purpose],
    policy: ClaimPolicy,
    skip: frozenset[str],
) -> VerifiedClaim:
    """``numfed.claims.verify_tenure_claim`` step by step, with the steps named in ``skip``
    left out: the mistakes broken platforms make."""
    if "payload_type" not in skip and envelope.payload_type != TENURE_CLAIM_PAYLOAD_TYPE:
        raise Unauthenticated("WRONG_PAYLOAD_TYPE", "not a tenure claim")
    if "one_signature" not in skip and len(envelope.signatures) != 1:
        raise Unauthenticated("ONE_SIGNATURE_REQUIRED", "exactly one signature is required")
    message = pae(envelope.payload_type, envelope.payload)
    key: CarrierKey | None = None
    first: NumfedError | None = None
    for sig in envelope.signatures:
        try:
            candidate = trust.carrier_key(sig.keyid, now=now)
        except NumfedError as err:
            first = first or err
            continue
        if "signature" in skip or candidate.key.verify_raw(sig.sig, message):
            key = candidate
            break
        first = first or Unauthenticated("BAD_SIGNATURE", "the carrier signature does not verify")
    if key is None:
        raise first or Unauthenticated("BAD_SIGNATURE", "no signature verifies")
    bundle = trusted_bundle(trust)
    try:
        pb = claim_pb2.TenureClaim.FromString(envelope.payload)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_CLAIM", "claim payload does not parse") from exc
    if "claim_id" in skip:
        pb.claim_id = (pb.claim_id + bytes(16))[:16]
    try:
        claim = TenureClaim.from_proto(pb)
    except InvalidArgument as exc:
        if exc.reason in {"MALFORMED_NUMBER", "PURPOSE_UNSPECIFIED", "NO_BINDINGS_SELECTED"}:
            raise
        raise InvalidArgument("MALFORMED_CLAIM", exc.message) from exc
    require_key_of(key, claim.carrier_id)
    if "plan" not in skip:
        require_in_plan(bundle, claim.number)
    if "scope" not in skip and not key.covers(claim.number):
        raise PermissionDenied("KEY_OUT_OF_SCOPE", "the signing key may not attest this number")
    releases = claim.purpose in (Purpose.RELEASE_PRIOR, Purpose.RELEASE_OWN)
    grace = policy.release_grace if releases else timedelta(0)
    skew = policy.max_skew
    if "expiry" not in skip and now - claim.expires_at > skew + grace:
        raise Unauthenticated("CLAIM_EXPIRED", "the claim has expired")
    if "future" not in skip:
        check_issued_at(claim.issued_at, now, skew=skew, what="the claim")
    if claim.expires_at - claim.issued_at > policy.max_lifetime:
        raise InvalidArgument("CLAIM_LIFETIME_TOO_LONG", "the claim lives longer than allowed")
    if "window" not in skip:
        check_key_window(key, claim.issued_at, now, skew=skew, grace=grace)
    if "purpose" not in skip and claim.purpose not in purposes:
        raise InvalidArgument("WRONG_PURPOSE", f"a {claim.purpose.name} claim is not accepted")
    return VerifiedClaim(claim, key.key.key_id, key.carrier_id)


class LenientPlatform(BrokenPlatform):
    """Verifies claims with the steps in ``skips`` left out."""

    skips: ClassVar[frozenset[str]] = frozenset()

    def _policy(self, trust: TrustedState) -> ClaimPolicy:
        return sdk.platform_policy(trust)

    def _verify(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        trust = self.trust.trusted()
        now = datetime.now(UTC)
        out: list[VerifiedClaim | NumfedError] = []
        for item in items:
            try:
                out.append(
                    lenient_claim(
                        Envelope.from_proto(item.claim),
                        trust,
                        now=now,
                        purposes=purposes,
                        policy=self._policy(trust),
                        skip=self.skips,
                    )
                )
            except NumfedError as err:
                out.append(err)
        return out


def lenient_batch(
    envelope: Envelope, trust: TrustedState, *, now: datetime, skip: frozenset[str]
) -> VerifiedBatch:
    """``numfed.events.verify_event_batch`` (as from the log) with the steps in ``skip`` left
    out."""
    if envelope.payload_type != EVENT_BATCH_PAYLOAD_TYPE or len(envelope.signatures) != 1:
        raise Unauthenticated("WRONG_PAYLOAD_TYPE", "not one signed event batch")
    sig = envelope.signatures[0]
    key = trust.carrier_key(sig.keyid, now=now)
    message = pae(envelope.payload_type, envelope.payload)
    if "signature" not in skip and not key.key.verify_raw(sig.sig, message):
        raise Unauthenticated("BAD_SIGNATURE", "the carrier signature does not verify")
    bundle = trusted_bundle(trust)
    pb = events_pb2.EventBatch.FromString(envelope.payload)
    require_key_of(key, pb.carrier_id)
    issued_at = from_timestamp(pb.issued_at)
    skew = bundle.max_clock_skew
    if "times" not in skip:
        check_issued_at(issued_at, now, skew=skew, what="the event batch")
    events = tuple(LifecycleEvent.from_proto(e) for e in pb.events)
    for e in events:
        require_in_plan(bundle, e.number)
        if "scope" not in skip and not key.covers(e.number):
            raise PermissionDenied("KEY_OUT_OF_SCOPE", "the key may not speak for this number")
        if "times" not in skip:
            for name, t in e.times():
                check_happened(t, issued_at, now, skew=skew, field=name)
    return VerifiedBatch(pb.carrier_id, issued_at, events)


class _LenientEvents(EventApplier):
    skips: ClassVar[frozenset[str]] = frozenset()

    def _verify(
        self, batch: claim_pb2.Envelope, trust: TrustedState, now: datetime
    ) -> VerifiedBatch:
        return lenient_batch(Envelope.from_proto(batch), trust, now=now, skip=self.skips)


def _events_of(batches: Sequence[events_pb2.SequencedBatch]) -> list[events_pb2.LifecycleEvent]:
    out = []
    for b in batches:
        out += list(events_pb2.EventBatch.FromString(b.batch.payload).events)
    return out


# --- platforms: transport and health (PLAT-OPS) -----------------------------------------------


class PresentsAnotherIdentity(BrokenPlatform):
    """Serves with another member's certificate (the gateway's, from the same PKI)."""

    breaks = "PLAT-OPS-3"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        real = pki.server_credentials

        def other(where: Any, peer: PeerId) -> grpc.ServerCredentials:
            return real(where, pki.GATEWAY)

        return mock.patch.object(pki, "server_credentials", other)


class RequestsNoClientCertificate(BrokenPlatform):
    """Its TLS server does not ask callers for a certificate."""

    breaks = "PLAT-OPS-4"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        def lax(where: Any, peer: PeerId) -> grpc.ServerCredentials:
            layout = pki.PkiLayout(where)
            return grpc.ssl_server_credentials(
                [(layout.key_path(peer).read_bytes(), layout.cert_path(peer).read_bytes())],
                root_certificates=layout.ca_path.read_bytes(),
                require_client_auth=False,
            )

        return mock.patch.object(pki, "server_credentials", lax)


class AnswersAnyMember(BrokenPlatform):
    """Lets any member with a valid certificate call PlatformService, not just the gateway."""

    breaks = "PLAT-OPS-2"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        anyone = frozenset({Role.GATEWAY, Role.CARRIER, Role.PLATFORM})
        return mock.patch.dict(reference.POLICY, {m: anyone for m in reference.POLICY})


def _strict_pings() -> contextlib.AbstractContextManager[object]:
    """Servers on grpc's default ping policy: pings more often than every 5 minutes on a
    quiet connection count as abuse (GOAWAY too_many_pings at the third)."""
    real = numfed_rpc.server_options

    def strict(limits: Any, max_message_bytes: int = numfed_rpc.MAX_MESSAGE_BYTES) -> Any:
        return [
            (name, value)
            for name, value in real(limits, max_message_bytes)
            if name != "grpc.http2.min_ping_interval_without_data_ms"
        ]

    return mock.patch.object(numfed_rpc, "server_options", strict)


class TurnsAwayFrequentPings(BrokenPlatform):
    """Keeps grpc's default ping policy, so the gateway's keepalive pings on a quiet connection
    are answered with GOAWAY too_many_pings."""

    breaks = "PLAT-OPS-7"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return _strict_pings()


class _AlwaysReady(TrustClient):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ready.set()

    async def refresh(self, *, wait_for_ready: bool = False) -> bool:
        try:
            return await super().refresh(wait_for_ready=wait_for_ready)
        finally:
            self.ready.set()

    async def reset(self) -> None:
        await super().reset()
        self.ready.set()

    async def reload(self) -> None:
        await super().reload()
        self.ready.set()


class ServingWithoutBundle(BrokenPlatform):
    """Reports SERVING from the start, before it holds any trust bundle."""

    breaks = "PLAT-OPS-1"
    trust_client = _AlwaysReady


# --- platforms: trust (PLAT-TRUST) ------------------------------------------------------------


class _RequiresEverySignatureKnown(TrustedState):
    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        if payload_type == BUNDLE_PAYLOAD_TYPE:
            result = verification_result(
                envelope, root.keys, threshold=root.threshold, payload_type=payload_type
            )
            if result.unknown or result.bad:
                raise Unauthenticated(reason, "a signature by a key it does not know")
        super()._signed(envelope, root, payload_type, reason)


class RequiresEverySignatureKnown(BrokenPlatform):
    """Refuses a bundle that carries any signature it cannot verify, even beside a threshold."""

    breaks = "PLAT-TRUST-1"
    trust_client = _with_state(_RequiresEverySignatureKnown)


class _SkipsBundleSignature(TrustedState):
    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        if payload_type == BUNDLE_PAYLOAD_TYPE and self.bundle is None:
            if envelope.payload_type != payload_type:
                raise Unauthenticated(TrustReason.WRONG_PAYLOAD_TYPE, "not a bundle")
            return  # trust on first use: the first bundle's signatures are never looked at
        super()._signed(envelope, root, payload_type, reason)


class SkipsBundleSignature(BrokenPlatform):
    """Takes its first bundle on trust, without checking the root's signatures (it checks those
    of later ones): a gateway that serves it first owns it."""

    breaks = "PLAT-TRUST-2"
    trust_client = _with_state(_SkipsBundleSignature)


class _CountsSignaturesNotKeys(TrustedState):
    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        if envelope.payload_type != payload_type:
            raise Unauthenticated(TrustReason.WRONG_PAYLOAD_TYPE, "wrong payload type")
        message = pae(envelope.payload_type, envelope.payload)
        good = sum(
            1
            for s in envelope.signatures
            if s.keyid in root.keys and root.keys[s.keyid].verify_raw(s.sig, message)
        )
        if good < root.threshold:
            raise Unauthenticated(reason, f"{good} signatures; {root.threshold} required")


class CountsSignaturesNotKeys(BrokenPlatform):
    """Counts valid signatures toward a threshold, so one key signing twice counts twice."""

    breaks = "PLAT-TRUST-3"
    trust_client = _with_state(_CountsSignaturesNotKeys)


class _IgnoresBundlePayloadType(TrustedState):
    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        if payload_type == BUNDLE_PAYLOAD_TYPE:
            payload_type = envelope.payload_type
        super()._signed(envelope, root, payload_type, reason)


class IgnoresBundlePayloadType(BrokenPlatform):
    """Checks a bundle's signatures but not its payload_type."""

    breaks = "PLAT-TRUST-4"
    trust_client = _with_state(_IgnoresBundlePayloadType)


def _version(envelope: Envelope) -> int:
    from numfed.v1 import trust_pb2

    return int(trust_pb2.TrustBundle.FromString(envelope.payload).version)


class _AcceptsBundleRollback(TrustedState):
    def update_bundle(self, envelope: Envelope, *, now: datetime) -> Any:
        if self.bundle is not None and _version(envelope) < self.bundle.version:
            self._bundle = self._bundle_envelope = None  # "a different bundle: take it"
        return super().update_bundle(envelope, now=now)


class AcceptsBundleRollback(BrokenPlatform):
    """Takes whatever bundle the gateway serves now, an older version too."""

    breaks = "PLAT-TRUST-5"
    trust_client = _with_state(_AcceptsBundleRollback)


class _InMemoryOnly(TrustClient):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._store = None


class TrustInMemoryOnly(BrokenPlatform):
    """Keeps the trust it accepted only in memory: after a restart it starts from its pin."""

    breaks = "PLAT-TRUST-6"
    trust_client = _InMemoryOnly


class _RequiresNextBundleVersion(TrustedState):
    def update_bundle(self, envelope: Envelope, *, now: datetime) -> Any:
        held = self.bundle
        if held is not None and _version(envelope) > held.version + 1:
            raise Unauthenticated("BUNDLE_VERSION_SKIPPED", "expected the next version")
        return super().update_bundle(envelope, now=now)


class RequiresNextBundleVersion(BrokenPlatform):
    """Takes only the bundle version right after the one it holds."""

    breaks = "PLAT-TRUST-7"
    trust_client = _with_state(_RequiresNextBundleVersion)


class _ReplacesEqualVersion(TrustedState):
    def update_bundle(self, envelope: Envelope, *, now: datetime) -> Any:
        held, bundle = self.bundle_envelope, self.bundle
        other_bytes = held is not None and held.payload != envelope.payload
        if other_bytes and bundle is not None and _version(envelope) == bundle.version:
            self._bundle = self._bundle_envelope = None  # "new bytes: a new bundle"
        return super().update_bundle(envelope, now=now)


class ReplacesEqualVersion(BrokenPlatform):
    """Takes a bundle with the held version when its bytes differ."""

    breaks = "PLAT-TRUST-8"
    trust_client = _with_state(_ReplacesEqualVersion)


class _AcceptsExpiredBundle(TrustedState):
    def update_bundle(self, envelope: Envelope, *, now: datetime) -> Any:
        from numfed.v1 import trust_pb2

        expires = from_timestamp(trust_pb2.TrustBundle.FromString(envelope.payload).expires_at)
        return super().update_bundle(envelope, now=min(now, expires - timedelta(seconds=1)))


class AcceptsExpiredBundle(BrokenPlatform):
    """Does not check a new bundle's expiry."""

    breaks = "PLAT-TRUST-9"
    trust_client = _with_state(_AcceptsExpiredBundle)


class _KeepsUsingExpiredBundle(TrustedState):
    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        if self.bundle is not None:
            now = min(now, self.bundle.expires_at - timedelta(seconds=1))
        return super().carrier_key(key_id, now=now)


class KeepsUsingExpiredBundle(BrokenPlatform):
    """Verifies claims under the bundle it holds even after that bundle expired."""

    breaks = "PLAT-TRUST-10"
    trust_client = _with_state(_KeepsUsingExpiredBundle)


class _OneRootPerRefresh(TrustedState):
    def update_roots(self, roots: Sequence[Envelope], **kw: Any) -> None:
        newer = [r for r in roots if _root_version(r) > self.root.version]
        super().update_roots(newer[:1], **kw)


def _root_version(envelope: Envelope) -> int:
    from numfed.v1 import trust_pb2

    return int(trust_pb2.RootMetadata.FromString(envelope.payload).version)


class OneRootPerRefresh(BrokenPlatform):
    """Applies only the first new root of an answer, then judges the bundle under it."""

    breaks = "PLAT-TRUST-11"
    trust_client = _with_state(_OneRootPerRefresh)


class _SkipsOldRootThreshold(TrustedState):
    def _signed(
        self, envelope: Envelope, root: Root, payload_type: str, reason: TrustReason
    ) -> None:
        if payload_type == ROOT_PAYLOAD_TYPE and root is self.root:
            return  # only checks that the new root signed itself
        super()._signed(envelope, root, payload_type, reason)


class SkipsOldRootThreshold(BrokenPlatform):
    """Accepts a new root signed by its own keys, without the old root's threshold."""

    breaks = "PLAT-TRUST-12"
    trust_client = _with_state(_SkipsOldRootThreshold)


class _AcceptsRootSkip(TrustedState):
    def _check_next(self, new: Root) -> None:
        if new.version <= self.root.version:
            super()._check_next(new)


class AcceptsRootSkip(BrokenPlatform):
    """Accepts any newer root version signed by the held root, not only the next one."""

    breaks = "PLAT-TRUST-13"
    trust_client = _with_state(_AcceptsRootSkip)


class _ChecksIntermediateRootExpiry(TrustedState):
    def update_root(self, envelope: Envelope) -> None:
        if self.root.expires_at <= datetime.now(UTC):
            raise Unauthenticated(TrustReason.ROOT_EXPIRED, "will not rotate from an expired root")
        super().update_root(envelope)


class ChecksIntermediateRootExpiry(BrokenPlatform):
    """Refuses to walk on from a root that has expired, though a newer one follows it."""

    breaks = "PLAT-TRUST-14"
    trust_client = _with_state(_ChecksIntermediateRootExpiry)


class _IgnoresFinalRootExpiry(TrustedState):
    def check_final_root(self, now: datetime) -> None:
        return None


class IgnoresFinalRootExpiry(BrokenPlatform):
    """Never checks whether its newest root has expired."""

    breaks = "PLAT-TRUST-15"
    trust_client = _with_state(_IgnoresFinalRootExpiry)


class _KeepsBundleAcrossRotation(TrustedState):
    def update_root(self, envelope: Envelope) -> None:
        bundle, held = self.bundle, self.bundle_envelope
        super().update_root(envelope)
        self._bundle, self._bundle_envelope = bundle, held


class KeepsBundleAcrossRotation(BrokenPlatform):
    """Keeps its bundle (and the version floor it sets) through a rotation that does not sign
    it, so it never recovers from a fast-forward."""

    breaks = "PLAT-TRUST-16"
    trust_client = _with_state(_KeepsBundleAcrossRotation)


class _DeafToHints(TrustClient):
    def notice(self, versions: tuple[int, int]) -> None:
        return None


class IgnoresVersionHints(BrokenPlatform):
    """Refreshes on its own schedule only, whatever the gateway's calls say it holds."""

    breaks = "PLAT-TRUST-17"
    trust_client = _DeafToHints


class NeverRefreshesBeforeRefusing(BrokenPlatform):
    """Refuses a claim signed by a key it does not know yet without fetching the bundle."""

    breaks = "PLAT-TRUST-18"

    async def _judge(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        return await self._served(self._verify(items, purposes))


# --- platforms: claims (PLAT-CLAIM) -----------------------------------------------------------


class SkipsSignatureCheck(LenientPlatform):
    """Finds the claim's key in the bundle but never verifies the signature with it."""

    breaks = "PLAT-CLAIM-1"
    skips = frozenset({"signature"})


class AcceptsAnyOfSeveralSignatures(LenientPlatform):
    """Takes a claim when any of its signatures verifies."""

    breaks = "PLAT-CLAIM-2"
    skips = frozenset({"one_signature"})


class IgnoresClaimPayloadType(LenientPlatform):
    """Verifies the signature over the envelope's own payload_type, whatever that is."""

    breaks = "PLAT-CLAIM-3"
    skips = frozenset({"payload_type"})


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


_MEMBER = re.compile(r"[a-z0-9_-]{1,32}")


def _named_carrier(trust: TrustedState, payload: bytes, message: type[Message]) -> Any:
    """``trust`` as a platform sees it that believes the carrier id in ``payload``."""
    try:
        carrier_id = message.FromString(payload).carrier_id  # type: ignore[attr-defined]
    except DecodeError:
        return trust
    return _KeysOfNamedCarrier(trust, carrier_id) if _MEMBER.fullmatch(carrier_id) else trust


class TrustsClaimedCarrier(BrokenPlatform):
    """Believes the carrier a claim names, whichever carrier's key of the bundle signed it."""

    breaks = "PLAT-CLAIM-KEY-CARRIER"

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
                    lenient_claim(
                        env,
                        _named_carrier(trust, env.payload, claim_pb2.TenureClaim),
                        now=now,
                        purposes=purposes,
                        policy=sdk.platform_policy(trust),
                        skip=frozenset(),
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


class TrustsBatchCarrier(BrokenPlatform):
    """Believes the carrier an event batch names, whichever carrier's key of the bundle signed
    it (claims are checked right)."""

    breaks = "PLAT-CLAIM-KEY-CARRIER"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _BatchCarrierBelieved(trust=self.trust, store=self.store)


class _IgnoresRevocations(TrustedState):
    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        bundle = self.bundle
        if bundle is not None and key_id in bundle.revoked_key_ids:
            self.check_final_root(now)
            return bundle.carrier_keys[key_id]
        return super().carrier_key(key_id, now=now)


class IgnoresRevocations(BrokenPlatform):
    """Reads the bundle's keys but not its list of revoked ones."""

    breaks = "PLAT-CLAIM-4"
    trust_client = _with_state(_IgnoresRevocations)


class IgnoresKeyScope(LenientPlatform):
    """Does not check that the signing key's prefixes cover the claim's number."""

    breaks = "PLAT-CLAIM-5"
    skips = frozenset({"scope"})


class IgnoresKeyWindow(LenientPlatform):
    """Does not check the signing key's validity window."""

    breaks = "PLAT-CLAIM-6"
    skips = frozenset({"window"})


class IgnoresClaimExpiry(LenientPlatform):
    """Does not check a claim's expires_at."""

    breaks = "PLAT-CLAIM-7"
    skips = frozenset({"expiry"})


class IgnoresIssuedInFuture(LenientPlatform):
    """Does not check that a claim was issued before now."""

    breaks = "PLAT-CLAIM-8"
    skips = frozenset({"future"})


class UsesDefaultTimeRules(LenientPlatform):
    """Judges claim times with numfed's defaults (60 s, 30 min), not with the bundle's."""

    breaks = "PLAT-CLAIM-9"

    def _policy(self, trust: TrustedState) -> ClaimPolicy:
        return ClaimPolicy(release_grace=RELEASE_GRACE)


class LenientClaimFields(LenientPlatform):
    """Takes a claim_id of any length (padding it), where exactly 16 bytes are required."""

    breaks = "PLAT-CLAIM-10"
    skips = frozenset({"claim_id"})


class IgnoresNumberPlan(LenientPlatform):
    """Does not check that the claim's number lies in the numbering plan."""

    breaks = "PLAT-CLAIM-11"
    skips = frozenset({"plan"})


class IgnoresServingCarrier(BrokenPlatform):
    """Believes any carrier's claim about any number its key covers (no port state)."""

    breaks = "PLAT-CLAIM-12"

    async def _served(
        self, verified: list[VerifiedClaim | NumfedError]
    ) -> list[VerifiedClaim | NumfedError]:
        return verified


class IgnoresPurpose(LenientPlatform):
    """Does not check that a claim's purpose fits the RPC."""

    breaks = "PLAT-CLAIM-13"
    skips = frozenset({"purpose"})


# --- platforms: answers (PLAT-ANS) ------------------------------------------------------------


class RefusesWholeBatchOnOneBadItem(BrokenPlatform):
    """When one item of a batch is refused, answers every item with that refusal."""

    breaks = "PLAT-ANS-1"

    @staticmethod
    def _spread(results: Sequence[Any]) -> None:
        bad = next((r.status for r in results if r.status.code != 0), None)
        if bad is None or len(results) < 2:
            return
        for r in results:
            r.status.CopyFrom(bad)
            r.ClearField("bindings" if hasattr(r, "bindings") else "released")

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        request.ClearField("sparse_answers")  # every item answered, so every item is spread to
        answer = await super().BatchQueryBindings(request, context)
        self._spread(answer.results)
        return answer

    async def BatchReleaseBindings(
        self, request: platform_pb2.BatchReleaseBindingsRequest, context: Any
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        answer = await super().BatchReleaseBindings(request, context)
        self._spread(answer.results)
        return answer


class AcceptsRepeatedItemIds(BrokenPlatform):
    """Answers a batch whose item ids repeat (each item on its own)."""

    breaks = "PLAT-ANS-2"

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        ids = [i.item_id for i in request.items]
        if not ids or len(set(ids)) == len(ids):
            return await super().BatchQueryBindings(request, context)
        unique = platform_pb2.BatchQueryBindingsRequest()
        unique.CopyFrom(request)
        for n, item in enumerate(unique.items):
            item.item_id = f"{n}:{item.item_id or 'x'}"
        answer = await super().BatchQueryBindings(unique, context)
        for r, original in zip(answer.results, ids, strict=True):
            r.item_id = original
        return answer


class ChecksPurposeFirst(BrokenPlatform):
    """Refuses a claim of the wrong purpose before looking at anything else in it."""

    breaks = "PLAT-ANS-3"

    def _verify(
        self, items: Sequence[Any], purposes: Sequence[Purpose]
    ) -> list[VerifiedClaim | NumfedError]:
        out = super()._verify(items, purposes)
        for i, item in enumerate(items):
            try:
                purpose = claim_pb2.TenureClaim.FromString(item.claim.payload).purpose
                wrong = purpose != 0 and Purpose(purpose) not in purposes
            except (DecodeError, ValueError):
                continue
            if wrong:
                out[i] = InvalidArgument("WRONG_PURPOSE", "not accepted here")
        return out


class RefusesFinallyWithoutBundle(BrokenPlatform):
    """Answers every item FAILED_PRECONDITION while it holds no bundle, as "not ready"."""

    breaks = "PLAT-ANS-4"

    def _not_ready(self, item_ids: Sequence[str]) -> list[Any]:
        status = error_status(FailedPrecondition("NOT_READY", "no trust bundle yet"))
        return [{"item_id": i, "status": status} for i in item_ids]

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        if self.trust.ready.is_set():
            return await super().BatchQueryBindings(request, context)
        items = [i.item_id for i in request.items]
        return platform_pb2.BatchQueryBindingsResponse(
            results=[platform_pb2.QueryItemResult(**r) for r in self._not_ready(items)]
        )

    async def BatchReleaseBindings(
        self, request: platform_pb2.BatchReleaseBindingsRequest, context: Any
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        if self.trust.ready.is_set():
            return await super().BatchReleaseBindings(request, context)
        items = [i.item_id for i in request.items]
        return platform_pb2.BatchReleaseBindingsResponse(
            results=[platform_pb2.ReleaseItemResult(**r) for r in self._not_ready(items)]
        )


class LeaksAccountId(BrokenPlatform):
    """Puts the raw account id into the summary's label."""

    breaks = "PLAT-ANS-5"

    def _summaries(self, found: Sequence[Binding], *, with_refs: bool) -> tuple[list[Any], int]:
        summaries, omitted = super()._summaries(found, with_refs=with_refs)
        for s, b in zip(summaries, found, strict=False):  # fewer summaries: merged, capped
            s.masked_label = f"account {b.account_id}"
        return summaries, omitted


def _one_summary(p: PlatformServicer, b: Binding, *, with_refs: bool) -> Any:
    """The binding as a summary of its own (count 1), as the SDK masks it."""
    return binding_pb2.BindingSummary(
        platform_id=p.platform_id,
        kind=sdk.KINDS.get(b.kind, binding_pb2.BINDING_KIND_ACCOUNT_LOGIN),
        masked_label=p.masker.label(b),
        count=1,
        binding_ref=p.masker.ref(b) if with_refs else "",
    )


class ListsIdenticalSummariesApart(BrokenPlatform):
    """Lists one summary per binding, identical ones too (capped all the same)."""

    breaks = "PLAT-ANS-6"

    def _summaries(self, found: Sequence[Binding], *, with_refs: bool) -> tuple[list[Any], int]:
        summaries = [_one_summary(self, b, with_refs=with_refs) for b in found]
        listed = summaries[:MAX_SUMMARIES_PER_CLAIM]
        return listed, len(summaries) - len(listed)


class ListsEverySummary(BrokenPlatform):
    """Merges identical summaries but lists them all, however many: nothing is omitted."""

    breaks = "PLAT-ANS-7"

    def _summaries(self, found: Sequence[Binding], *, with_refs: bool) -> tuple[list[Any], int]:
        merged = summarize(found, self.masker, with_refs=with_refs)
        return [
            binding_pb2.BindingSummary(
                platform_id=self.platform_id,
                kind=sdk.KINDS.get(s.kind, binding_pb2.BINDING_KIND_ACCOUNT_LOGIN),
                masked_label=s.masked_label,
                count=s.count,
                binding_ref=s.binding_ref,
            )
            for s in merged
        ], 0


# --- platforms: releases and queries (PLAT-REL) -----------------------------------------------


class _Selecting(BrokenPlatform):
    """Chooses the bindings a release claim touches with :meth:`choose`."""

    def choose(self, v: VerifiedClaim, bindings: list[Binding]) -> list[Binding] | None:
        """The bindings to release, or None to do as the reference does."""
        return None

    def _selector(self, v: VerifiedClaim) -> Selector:
        reference_select = super()._selector(v)

        def select(found: list[Binding]) -> tuple[list[int], bytes]:
            chosen = self.choose(v, found)
            if chosen is None:
                return reference_select(found)
            own_tenure = v.claim.purpose is Purpose.RELEASE_OWN
            released, omitted = self._summaries(chosen, with_refs=own_tenure)
            result = platform_pb2.ReleaseItemResult(
                status=ok_status(), released=released, omitted_bindings=omitted
            )
            return [b.binding_id for b in chosen], result.SerializeToString()

        return select


class ReleasesAtX(_Selecting):
    """Releases bindings with bound_at <= X: the current holder's binding made at X goes too."""

    breaks = "PLAT-REL-1"

    def choose(self, v: VerifiedClaim, bindings: list[Binding]) -> list[Binding] | None:
        if v.claim.purpose is not Purpose.RELEASE_PRIOR:
            return None
        return [b for b in bindings if b.active and b.bound_at <= v.claim.tenure_start]


class ReleasesOnlyNewestBeforeX(_Selecting):
    """Releases only the most recent binding made before X (the "current" one it assumes)."""

    breaks = "PLAT-REL-2"

    def choose(self, v: VerifiedClaim, bindings: list[Binding]) -> list[Binding] | None:
        if v.claim.purpose is not Purpose.RELEASE_PRIOR:
            return None
        before = prior(bindings, v.claim.tenure_start)
        return [max(before, key=lambda b: b.bound_at)] if before else []


class AppliesReplayTwice(BrokenPlatform):
    """Does not look up its stored results before applying a release claim that is still valid,
    so a retried claim is applied again."""

    breaks = "PLAT-REL-3"

    async def BatchReleaseBindings(
        self, request: platform_pb2.BatchReleaseBindingsRequest, context: Any
    ) -> platform_pb2.BatchReleaseBindingsResponse:
        ids = []
        now = datetime.now(UTC)
        for item in request.items:
            try:
                pb = claim_pb2.TenureClaim.FromString(item.claim.payload)
            except DecodeError:
                continue
            if from_timestamp(pb.expires_at) > now:
                ids.append(pb.claim_id)
        store = self.store

        def forget() -> None:
            with store.engine.begin() as c:
                c.execute(sa.delete(applied_releases).where(applied_releases.c.claim_id.in_(ids)))

        await store.run(forget)
        return await super().BatchReleaseBindings(request, context)


class NoReleaseGrace(LenientPlatform):
    """Refuses a release claim the moment it expires, as a query claim."""

    breaks = "PLAT-REL-4"

    def _policy(self, trust: TrustedState) -> ClaimPolicy:
        return ClaimPolicy.from_bundle(trust.bundle)


class ReleaseOwnPartial(_Selecting):
    """Releases the refs of a RELEASE_OWN claim it knows and skips the others."""

    breaks = "PLAT-REL-5"

    def choose(self, v: VerifiedClaim, bindings: list[Binding]) -> list[Binding] | None:
        if v.claim.purpose is not Purpose.RELEASE_OWN:
            return None
        mine = {self.masker.ref(b): b for b in own(bindings, v.claim.tenure_start)}
        return [mine[r] for r in v.claim.binding_refs if r in mine]


class ReleaseOwnIgnoresTenure(_Selecting):
    """Looks a RELEASE_OWN ref up among all the number's active bindings, not only those made
    since X."""

    breaks = "PLAT-REL-6"

    def choose(self, v: VerifiedClaim, bindings: list[Binding]) -> list[Binding] | None:
        if v.claim.purpose is not Purpose.RELEASE_OWN:
            return None
        active = {self.masker.ref(b): b for b in bindings if b.active}
        chosen = []
        for ref in v.claim.binding_refs:
            if ref not in active:
                raise FailedPrecondition("UNKNOWN_BINDING_REF", "unknown binding ref")
            chosen.append(active[ref])
        return chosen

    def _selector(self, v: VerifiedClaim) -> Selector:
        inner = super()._selector(v)

        def select(found: list[Binding]) -> tuple[list[int], bytes]:
            try:
                return inner(found)
            except NumfedError as err:
                result = platform_pb2.ReleaseItemResult(status=error_status(err))
                return [], result.SerializeToString()

        return select


class ListsReleasedBindings(BrokenPlatform):
    """Lists every binding made before X for QUERY_PRIOR, released ones too."""

    breaks = "PLAT-REL-7"

    def _listed(self, v: VerifiedClaim, bindings: list[Binding]) -> tuple[list[Any], int]:
        if v.claim.purpose is not Purpose.QUERY_PRIOR:
            return super()._listed(v, bindings)
        found = [b for b in bindings if b.bound_at < v.claim.tenure_start]
        return self._summaries(found, with_refs=False)


class CountsUnset(BrokenPlatform):
    """Never sets BindingSummary.count (proto3's default 0)."""

    breaks = "PLAT-REL-8"

    def _summaries(self, found: Sequence[Binding], *, with_refs: bool) -> tuple[list[Any], int]:
        summaries, omitted = super()._summaries(found, with_refs=with_refs)
        for s in summaries:
            s.ClearField("count")
        return summaries, omitted


# --- platforms: events (PLAT-EVT) -------------------------------------------------------------


class _UnverifiedEvents(_LenientEvents):
    skips = frozenset({"signature"})


class AppliesUnverifiedBatches(BrokenPlatform):
    """Looks up an event batch's key but never verifies the signature with it."""

    breaks = "PLAT-EVT-1"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _UnverifiedEvents(trust=self.trust, store=self.store)


class _ScopelessEvents(_LenientEvents):
    skips = frozenset({"scope"})


class EventScopeUnchecked(BrokenPlatform):
    """Does not check that an event's number lies in the signing key's prefixes."""

    breaks = "PLAT-EVT-2"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _ScopelessEvents(trust=self.trust, store=self.store)


class _TimelessEvents(_LenientEvents):
    skips = frozenset({"times"})


class IgnoresEventTimes(BrokenPlatform):
    """Believes the times in an event batch as signed."""

    breaks = "PLAT-EVT-3"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _TimelessEvents(trust=self.trust, store=self.store)


class _ForgetfulEvents(EventApplier):
    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        from platform_stubs.store import applied_events

        ids = [e.event_id for e in _events_of(batches)]
        store = self._store

        def forget() -> None:
            with store.engine.begin() as c:
                c.execute(sa.delete(applied_events).where(applied_events.c.event_id.in_(ids)))

        await store.run(forget)
        return await super().apply(batches)


class AppliesEventTwice(BrokenPlatform):
    """Does not remember applied event ids, so a re-delivered event is applied again."""

    breaks = "PLAT-EVT-4"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _ForgetfulEvents(trust=self.trust, store=self.store)


class _ContiguousOnly(EventApplier):
    async def apply(self, batches: Sequence[events_pb2.SequencedBatch]) -> int:
        seqs = [b.seq for b in batches]
        if any(b != a + 1 for a, b in itertools.pairwise(seqs)):
            raise InvalidArgument("SEQ_GAP", "batches must be contiguous")
        return await super().apply(batches)


class RequiresContiguousSeq(BrokenPlatform):
    """Refuses a delivery whose seqs have gaps, taking a gap for a lost batch."""

    breaks = "PLAT-EVT-5"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _ContiguousOnly(trust=self.trust, store=self.store)


class _AcksWhatItCannotJudge(EventApplier):
    async def _handle(self, seq: int, batch: claim_pb2.Envelope, *, listed: bool) -> bool:
        err = await self._try(seq, batch)
        if may_be_stale(err):
            await self._trust.refresh_if_behind()
            err = await self._try(seq, batch)
        if err is not None:
            now = datetime.now(UTC)
            await self._set_aside(seq, batch, err, 1, now, now)
        return True


class AcksUnjudgedBatches(BrokenPlatform):
    """Sets aside and acknowledges a batch it cannot judge yet, as if it never would verify."""

    breaks = "PLAT-EVT-6"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _AcksWhatItCannotJudge(trust=self.trust, store=self.store)


class _AfterEvents(EventApplier):
    """Does what the reference does with a batch, then :meth:`also` with its events."""

    def also(self, c: sa.Connection, e: LifecycleEvent) -> None:
        raise NotImplementedError

    async def _try(self, seq: int, batch: claim_pb2.Envelope) -> NumfedError | None:
        store = self._store
        before = set(await store.run(store.applied_event_ids))
        err = await super()._try(seq, batch)
        if err is not None:
            return err
        events = [
            LifecycleEvent.from_proto(e)
            for e in events_pb2.EventBatch.FromString(batch.payload).events
            if e.event_id not in before
        ]

        def after() -> None:
            with store.engine.begin() as c:
                for e in events:
                    self.also(c, e)

        await store.run(after)
        return None


class _StaleUndone(_AfterEvents):
    def also(self, c: sa.Connection, e: LifecycleEvent) -> None:
        if e.kind is EventKind.REASSIGNED:
            c.execute(sa.update(bindings).where(bindings.c.number == e.number).values(stale=False))


class IgnoresReassigned(BrokenPlatform):
    """Applies REASSIGNED events without marking older bindings stale."""

    breaks = "PLAT-EVT-7"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _StaleUndone(trust=self.trust, store=self.store)


class _InclusiveAsOf(_AfterEvents):
    def also(self, c: sa.Connection, e: LifecycleEvent) -> None:
        if e.kind is EventKind.PENDING_RELEASE and e.as_of is not None:
            c.execute(
                sa.update(bindings)
                .where(
                    bindings.c.number == e.number,
                    bindings.c.released_us.is_(None),
                    bindings.c.bound_us <= _us(e.as_of),
                )
                .values(released_us=_us(datetime.now(UTC)))
            )


class PendingReleaseInclusive(BrokenPlatform):
    """Releases the bindings made at as_of too (bound_at <= as_of)."""

    breaks = "PLAT-EVT-8"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _InclusiveAsOf(trust=self.trust, store=self.store)


class _ReleaseOnDeactivated(_AfterEvents):
    def also(self, c: sa.Connection, e: LifecycleEvent) -> None:
        if e.kind is EventKind.DEACTIVATED:
            c.execute(
                sa.update(bindings)
                .where(bindings.c.number == e.number, bindings.c.released_us.is_(None))
                .values(released_us=_us(datetime.now(UTC)))
            )


class ReleasesOnDeactivated(BrokenPlatform):
    """Releases every binding of a number when its holder gives it up (DEACTIVATED)."""

    breaks = "PLAT-EVT-9"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _ReleaseOnDeactivated(trust=self.trust, store=self.store)


class _AnyCarriersEvents(EventApplier):
    async def _try(self, seq: int, batch: claim_pb2.Envelope) -> NumfedError | None:
        now = datetime.now(UTC)
        try:
            trust = self._trust.trusted()
            verified = self._verify(batch, trust, now)
            plan = NumberPlan.from_bundle(trust.bundle)
            signer = verified.carrier_id
            if all(e.kind is not EventKind.PORTED for e in verified.events):
                numbers = [e.number for e in verified.events]
                serving = await self._store.run(self._store.serving_carriers, numbers, plan)
                signer = serving[numbers[0]] or signer  # "the batch is about its numbers"
            await self._store.run(self._store.apply_events, seq, signer, verified.events, now, plan)
        except NumfedError as err:
            return err
        return None


class AppliesEventsFromAnyCarrier(BrokenPlatform):
    """Applies lifecycle events whichever carrier signed them, as from the number's own."""

    breaks = "PLAT-EVT-10"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events = _AnyCarriersEvents(trust=self.trust, store=self.store)


class _AnswersAnyQuestion(platform_conformance.PlatformConformanceServicer):
    def check_answer(
        self,
        answer: claim_pb2.Envelope,
        trust: TrustedState,
        number: str,
        specified_date: date,
        now: datetime,
    ) -> Any:
        pb = claim_pb2.RecycledClaim.FromString(answer.payload)  # the answer's own question
        return super().check_answer(answer, trust, pb.number, from_date(pb.specified_date), now)


class BelievesAnswersToOtherQuestions(BrokenPlatform):
    """Verifies a recycled answer's signature, audience and carrier, but not that it answers the
    number and the day it asked about."""

    breaks = "PLAT-REC-1"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return mock.patch.object(reference, "PlatformConformanceServicer", _AnswersAnyQuestion)


class SparseHidesRefusals(BrokenPlatform):
    """Asked for sparse answers, leaves refused claims out too, as if nothing were bound."""

    breaks = "PLAT-ANS-8"

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        answer = await super().BatchQueryBindings(request, context)
        if answer.sparse:
            kept = [r for r in answer.results if r.status.code == 0]
            del answer.results[:]
            answer.results.extend(kept)
        return answer


class SparseUnasked(BrokenPlatform):
    """Answers sparsely whether or not the gateway asked it to."""

    breaks = "PLAT-ANS-8"

    async def BatchQueryBindings(
        self, request: platform_pb2.BatchQueryBindingsRequest, context: Any
    ) -> platform_pb2.BatchQueryBindingsResponse:
        request.sparse_answers = True
        return await super().BatchQueryBindings(request, context)


BROKEN_PLATFORMS: dict[str, type[BrokenPlatform]] = {
    c.__name__: c
    for c in (
        PresentsAnotherIdentity,
        RequestsNoClientCertificate,
        AnswersAnyMember,
        TurnsAwayFrequentPings,
        ServingWithoutBundle,
        RequiresEverySignatureKnown,
        SkipsBundleSignature,
        CountsSignaturesNotKeys,
        IgnoresBundlePayloadType,
        AcceptsBundleRollback,
        TrustInMemoryOnly,
        RequiresNextBundleVersion,
        ReplacesEqualVersion,
        AcceptsExpiredBundle,
        KeepsUsingExpiredBundle,
        OneRootPerRefresh,
        SkipsOldRootThreshold,
        AcceptsRootSkip,
        ChecksIntermediateRootExpiry,
        IgnoresFinalRootExpiry,
        KeepsBundleAcrossRotation,
        IgnoresVersionHints,
        NeverRefreshesBeforeRefusing,
        SkipsSignatureCheck,
        AcceptsAnyOfSeveralSignatures,
        IgnoresClaimPayloadType,
        TrustsClaimedCarrier,
        TrustsBatchCarrier,
        IgnoresRevocations,
        IgnoresKeyScope,
        IgnoresKeyWindow,
        IgnoresClaimExpiry,
        IgnoresIssuedInFuture,
        UsesDefaultTimeRules,
        LenientClaimFields,
        IgnoresNumberPlan,
        IgnoresServingCarrier,
        IgnoresPurpose,
        RefusesWholeBatchOnOneBadItem,
        AcceptsRepeatedItemIds,
        ChecksPurposeFirst,
        RefusesFinallyWithoutBundle,
        LeaksAccountId,
        ListsIdenticalSummariesApart,
        ListsEverySummary,
        ReleasesAtX,
        ReleasesOnlyNewestBeforeX,
        AppliesReplayTwice,
        NoReleaseGrace,
        ReleaseOwnPartial,
        ReleaseOwnIgnoresTenure,
        ListsReleasedBindings,
        CountsUnset,
        AppliesUnverifiedBatches,
        EventScopeUnchecked,
        IgnoresEventTimes,
        AppliesEventTwice,
        RequiresContiguousSeq,
        AcksUnjudgedBatches,
        IgnoresReassigned,
        PendingReleaseInclusive,
        ReleasesOnDeactivated,
        AppliesEventsFromAnyCarrier,
        BelievesAnswersToOtherQuestions,
        SparseHidesRefusals,
        SparseUnasked,
    )
}
"""Every broken platform by name."""


# --- carriers ---------------------------------------------------------------------------------


class BrokenCarrier(CmccAdapter):
    """The cmcc reference adapter with one rule broken."""

    breaks: ClassVar[str] = ""

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


class CarrierPresentsAnotherIdentity(BrokenCarrier):
    """Serves with another member's certificate (the gateway's, from the same PKI)."""

    breaks = "CARR-OPS-1"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return PresentsAnotherIdentity.patches()


class CarrierRequestsNoClientCertificate(BrokenCarrier):
    """Its TLS server does not ask callers for a certificate."""

    breaks = "CARR-OPS-2"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return RequestsNoClientCertificate.patches()


class CarrierAnswersAnyMember(BrokenCarrier):
    """Lets any member with a valid certificate call CarrierService."""

    breaks = "CARR-OPS-3"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        anyone = frozenset({Role.GATEWAY, Role.CARRIER, Role.PLATFORM})
        return mock.patch.dict(carrier_base.POLICY, {m: anyone for m in carrier_base.POLICY})


class _SigningCarrier(BrokenCarrier):
    def _sign_claim(
        self,
        number: str,
        purpose: Purpose,
        x: datetime,
        refs: tuple[str, ...],
        lifetime: timedelta | None = None,
    ) -> claim_pb2.Envelope:
        claim = TenureClaim.new(
            number=number,
            carrier_id=self.carrier_id,
            tenure_start=x,
            purpose=purpose,
            now=self.clock(),
            lifetime=lifetime or self.claim_lifetime,
            binding_refs=refs,
        )
        return sign_claim(claim, self.signer).to_proto()


class ClaimsOutliveBundleLifetime(_SigningCarrier):
    """Signs claims valid for two hours, past the bundle's maximum claim lifetime."""

    breaks = "CARR-CLAIM-1"

    def issue_claim(
        self, number: str, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        current = self.registry.current_holder(number, self.clock())
        return self._sign_claim(number, purpose, current.tenure_start, refs, timedelta(hours=2))


class XFromFirstAssignment(_SigningCarrier):
    """Takes X from the number's first assignment ever, not its current holder's."""

    breaks = "CARR-CLAIM-2"

    def issue_claim(
        self, number: str, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        self.registry.current_holder(number, self.clock())  # same refusals as the reference
        events = self.registry.history(number).events
        x = min(e.at for e in events if e.kind is HistoryKind.ASSIGNED)
        return self._sign_claim(number, purpose, x, refs)


class PortMovesX(_SigningCarrier):
    """Takes X from the latest assignment *or port*, so a port resets the holder's tenure."""

    breaks = "CARR-CLAIM-3"

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
        return self._sign_claim(number, purpose, x, refs)


class ClaimsForNumbersNotHeld(_SigningCarrier):
    """Signs a claim for any number it has a record of, ported away or given up too."""

    breaks = "CARR-CLAIM-4"

    def issue_claim(
        self, number: str, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        try:
            return super().issue_claim(number, purpose, refs)
        except NotFound:
            history = self.registry.history(number)
            x = max(e.at for e in history.events if e.kind is HistoryKind.ASSIGNED)
            return self._sign_claim(number, purpose, x, refs)


class ChangedOnDayOfX(BrokenCarrier):
    """Answers the recycled check as of the start of the day asked about, not its end: a platform
    asking about the day the tenure began is told the number changed holder, though the holder at
    the end of that day holds it still."""

    breaks = "CARR-REC-1"

    def answer_recycled(
        self, number: str, question: RecycledQuestion, platform_id: str
    ) -> claim_pb2.Envelope:
        from numfed.history import day_end

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


class AnswersDaysBeforeHistory(BrokenCarrier):
    """Answers "changed" for a day before its history of the number, instead of OUT_OF_RANGE."""

    breaks = "CARR-REC-2"

    def answer_recycled(
        self, number: str, question: RecycledQuestion, platform_id: str
    ) -> claim_pb2.Envelope:
        try:
            return super().answer_recycled(number, question, platform_id)
        except OutOfRange as err:
            if not err.reason.endswith("_BEFORE_HISTORY"):
                raise
        now = self.clock()
        day = question.specified_date or now.date()
        claim = RecycledClaim(
            number=number,
            carrier_id=self.carrier_id,
            since=now,
            changed=True,
            platform_id=PeerId(Role.PLATFORM, platform_id).id,
            issued_at=now,
            expires_at=now + self.claim_lifetime,
            specified_date=day,
        )
        return sign_claim(claim, self.signer).to_proto()


class ListsPortedOutNumbers(BrokenCarrier):
    """Lists every number it has a record of as served, those ported away too."""

    breaks = "CARR-NUM-1"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        registry = self.registry

        def every(now: datetime) -> list[str]:
            return [h.number for h in registry.histories()]

        registry.served_numbers = every  # type: ignore[method-assign]


class ListsOnlyDonorHalves(BrokenCarrier):
    """Lists its half of the ports it gave numbers away in, not of those it took numbers in."""

    breaks = "CARR-NUM-2"

    def port_halves(self) -> list[LifecycleEvent]:
        return [h for h in super().port_halves() if h.from_carrier == self.carrier_id]


class SignsEventsWithStaleKey(BrokenCarrier):
    """Signs event batches with an old key that is no longer in the trust bundle."""

    breaks = "CARR-EVT-1"

    _old_key = SigningKey.generate()

    def sign_events(self, events: Sequence[LifecycleEvent]) -> claim_pb2.Envelope:
        return sign_event_batch(self.carrier_id, events, self._old_key, now=self.clock()).to_proto()


class CarrierTurnsAwayFrequentPings(BrokenCarrier):
    """Keeps grpc's default ping policy (as :class:`TurnsAwayFrequentPings`)."""

    breaks = "CARR-OPS-7"

    @classmethod
    def patches(cls) -> contextlib.AbstractContextManager[object]:
        return _strict_pings()


BROKEN_CARRIERS: dict[str, type[BrokenCarrier]] = {
    c.__name__: c
    for c in (
        CarrierPresentsAnotherIdentity,
        CarrierRequestsNoClientCertificate,
        CarrierAnswersAnyMember,
        CarrierTurnsAwayFrequentPings,
        ClaimsOutliveBundleLifetime,
        XFromFirstAssignment,
        PortMovesX,
        ClaimsForNumbersNotHeld,
        ChangedOnDayOfX,
        AnswersDaysBeforeHistory,
        ListsPortedOutNumbers,
        ListsOnlyDonorHalves,
        SignsEventsWithStaleKey,
    )
}
"""Every broken carrier (all cmcc) by name."""


__all__ = ["BROKEN_CARRIERS", "BROKEN_PLATFORMS", "BrokenCarrier", "BrokenPlatform"]
