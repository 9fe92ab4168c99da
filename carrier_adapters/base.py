"""The shared carrier adapter: verifies holders, signs their claims, speaks for them.

It serves two listeners. ``CarrierService`` goes to the federation over mTLS, and only the
gateway may call it. ``HolderService`` is the carrier's own app channel: a plaintext listener
that must be on loopback, because in production it sits behind the carrier's app front end
(which authenticates the app and terminates TLS), never on a network the federation reaches.

Only a verified holder gets a claim, and a claim says nothing about them but the number and X
(the start of their tenure; a port keeps it). The holder's name, ID number and SMS code stop
here. The adapter calls the gateway as ``spiffe://numfed/carrier/<id>``, each call with a
timeout taken from the holder's remaining time.

With a ``trust_dir`` (its ``root-1.pb`` pinned) the adapter also keeps the gateway's audit
checkpoints: every ``limits.audit_checkpoint_interval`` it fetches the trust bundle and the
latest checkpoint, verifies both, and keeps the largest checkpoint in its state directory
(``numfed audit checkpoint export`` hands it to the auditor). The roots and the bundle it accepts
are persisted there too (``trust/``, :class:`numfed.truststore.TrustStore`), as a platform's, so
a restarted adapter never takes an older bundle or walks the root chain again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import grpc

from carrier_adapters.carrier_service import CarrierServicer
from carrier_adapters.holder_service import HolderServicer
from carrier_adapters.registry import SubscriberRegistry, seed_from_scenario
from carrier_adapters.verification import Session, SmsOutbox, Verifier
from numfed import pki
from numfed.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointKeeper, audit_origin
from numfed.claims import Purpose, RecycledClaim, RecycledQuestion, TenureClaim, sign_claim
from numfed.config import CarrierConfig, Limits, load_carrier_config, require_loopback
from numfed.envelope import Envelope, SigningKey
from numfed.errors import FailedPrecondition, InvalidArgument, NotFound, NumfedError
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.history import MIN_QUIET_PERIOD
from numfed.identity import PeerId, Role
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.rpc import (
    MAX_MESSAGE_BYTES,
    Admission,
    RpcClass,
    ServerHandle,
    SoleGateway,
    start_server,
)
from numfed.scenario import demo_scenario
from numfed.serving import process_telemetry, run_until_signalled
from numfed.throttle import AdaptiveThrottle
from numfed.timecheck import DEFAULT_MAX_CLAIM_LIFETIME
from numfed.trust import TrustedState
from numfed.trustfiles import read_roots
from numfed.trusthints import VersionStatement
from numfed.truststore import TRUST_STORE_DIR, TrustStore
from numfed.v1 import (
    carrier_pb2_grpc,
    claim_pb2,
    conformance_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    holder_pb2_grpc,
)

if TYPE_CHECKING:
    from carrier_adapters.web.server import WebHandle

__all__ = ["CarrierAdapter", "CarrierHandle", "serve", "start_carrier"]

log = logging.getLogger(__name__)

CARRIER_SERVICE = "numfed.v1.CarrierService"
HOLDER_SERVICE = "numfed.v1.HolderService"
HOLDER_CLASSES = {
    f"/{HOLDER_SERVICE}/{method}": "holder"
    for method in (
        "StartVerification",
        "ConfirmVerification",
        "QueryHolderBindings",
        "ReleaseHolderBindings",
        "PreviewHolderClaim",
        "IssueHolderProof",
    )
} | {f"/{HOLDER_SERVICE}/WatchHolderRelease": "holder_watch"}
"""The holder channel's admission classes: calls, and release streams (held for minutes)."""
POLICY = {
    f"/{CARRIER_SERVICE}/{method}": frozenset({Role.GATEWAY})
    for method in ("ListServedNumbers", "ListPortHalves", "AnswerRecycledCheck")
}
"""Who may call what on the federation listener: the gateway, and only the gateway (rule
CARR-OPS-3)."""

THROTTLED_METHODS = ("QueryBindings", "ReleaseBindings")
"""The gateway methods holders' calls go to, each throttled on its own (numfed.throttle)."""

Clock = Callable[[], datetime]


_PLAINTEXT_HOLDER = "the plaintext holder channels listen"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CarrierAdapter:
    """One carrier's adapter. Subclasses state the carrier's own particulars."""

    carrier_id: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    display_name_zh: ClassVar[str] = ""
    """The carrier's name in Chinese, as holders know it (中国移动)."""
    sms_signature: ClassVar[str] = ""
    """The sender text an SMS starts with, e.g. 【中国移动】."""
    quiet_period: ClassVar[timedelta] = MIN_QUIET_PERIOD
    """How long the carrier keeps a deactivated number before reassigning it; its registry
    refuses records that reassign sooner."""
    time_zone: ClassVar[tzinfo] = UTC
    """The zone whose calendar days the recycled check answers about (``specified_date``);
    each carrier states its own (a ``zoneinfo.ZoneInfo``)."""

    def __init__(self, config: CarrierConfig, *, clock: Clock = _utc_now) -> None:
        if config.carrier_id != self.carrier_id:
            raise InvalidArgument("BAD_CONFIG", f"config is for {config.carrier_id}")
        self.config = config
        self.clock = clock
        self.registry = SubscriberRegistry(
            config.state_dir / "subscribers.db", self.carrier_id, quiet_period=self.quiet_period
        )
        if config.seed_scenario and self.registry.is_empty():
            seed_from_scenario(self.registry, demo_scenario())
        outbox = SmsOutbox(config.state_dir / "sms-outbox.jsonl", self.sms_signature)
        self.verifier = Verifier(outbox, clock=clock)
        self.signer: SigningKey = pki.load_carrier_signer(config.pki_dir, self.carrier_id)
        self._request_id_key = hashlib.sha256(
            b"numfed request ids\0" + self.signer.to_pem()
        ).digest()
        self.peer = PeerId(Role.CARRIER, self.carrier_id)
        self.trust: TrustedState | None = None
        self.trust_store: TrustStore = TrustStore(config.state_dir / TRUST_STORE_DIR)
        self.checkpoints: CheckpointKeeper | None = None
        if config.trust_dir is not None:
            pinned = Envelope.from_proto(read_roots(config.trust_dir)[0])
            self.trust = self.trust_store.restore(pinned, now=datetime.now(UTC))
            path = config.state_dir / CHECKPOINT_FILE
            self.checkpoints = CheckpointKeeper(
                path, origin=audit_origin(pinned), holder=self.peer.uri
            )
        trust = self.trust
        self.channel = pki.secure_channel(
            config.gateway,
            config.pki_dir,
            self.peer,
            server=pki.GATEWAY,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Started before its gateway, the adapter reaches it within 2 s of it coming up
                # (gRPC's default backoff grows to two minutes).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
            # Holding trust, it says which versions in each call: the gateway's answers then
            # leave out a version hint that would tell it nothing (numfed.trusthints).
            interceptors=[VersionStatement(lambda: trust.versions)] if trust else [],
            limits=config.limits,
        )
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.gateway_throttles = {m: AdaptiveThrottle() for m in THROTTLED_METHODS}
        """Per gateway method, holders' calls refused here while the gateway refuses most
        (numfed.throttle). One each: the gateway bounds queries and releases apart (its
        admission classes), so a crowd of refused queries must not hold back releases."""

    async def keep_checkpoint(self) -> Checkpoint | None:
        """Fetch the trust bundle and the gateway's latest audit checkpoint, verify both, and
        keep the checkpoint (a smaller one than held changes nothing; one that contradicts a
        held one raises AUDIT_EQUIVOCATION, both kept as evidence). Returns the one held."""
        if self.trust is None or self.checkpoints is None:
            return None
        answer = await self.gateway.GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(known_root_version=self.trust.root.version),
            timeout=self.config.limits.default_call_timeout,
            wait_for_ready=True,
        )
        now = datetime.now(UTC)
        self.trust_store.update(
            self.trust,
            [Envelope.from_proto(r) for r in answer.roots],
            Envelope.from_proto(answer.bundle),
            now=now,
        )
        if answer.HasField("checkpoint") and self.trust.bundle is not None:
            self.checkpoints.offer(
                Envelope.from_proto(answer.checkpoint), self.trust.bundle, now=now
            )
        return self.checkpoints.latest

    async def keep_checkpoints(self) -> None:
        """:meth:`keep_checkpoint` every ``limits.audit_checkpoint_interval`` seconds."""
        failing = RetrySummary(
            log,
            "keeping the gateway's audit checkpoint failed",
            "keeping the gateway's audit checkpoint working again",
            level=logging.INFO,
        )
        while True:
            try:
                await self.keep_checkpoint()
                failing.succeeded()
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                failing.failed(failure_reason(exc))
            await asyncio.sleep(self.config.limits.audit_checkpoint_interval)

    def claim(
        self,
        session: Session,
        purpose: Purpose,
        refs: tuple[str, ...] = (),
        *,
        lifetime: timedelta | None = None,
    ) -> TenureClaim:
        """The claim for the session's holder, who must still hold the number since the same X:
        what :meth:`sign` signs, and what the holder is shown before anything is sent.

        Rule CARR-CLAIM-1.
        """
        now = self.clock()
        current = self.registry.current_holder(session.number, now)
        if (current.holder.holder_id, current.tenure_start) != (
            session.holder_id,
            session.tenure_start,
        ):
            raise FailedPrecondition("NOT_THE_HOLDER", "the session's holder no longer holds it")
        return TenureClaim.new(
            number=session.number,
            carrier_id=self.carrier_id,
            tenure_start=current.tenure_start,
            purpose=purpose,
            now=now,
            lifetime=self.lifetime_at(now, lifetime),
            binding_refs=refs,
        )

    def sign(
        self,
        session: Session,
        purpose: Purpose,
        refs: tuple[str, ...] = (),
        *,
        lifetime: timedelta | None = None,
    ) -> claim_pb2.Envelope:
        """A signed claim for the session's holder (see :meth:`claim`)."""
        claim = self.claim(session, purpose, refs, lifetime=lifetime)
        return sign_claim(claim, self.signer).to_proto()

    def gateway_request_id(self, holder_id: str, request_id: str) -> str:
        """The request_id the gateway sees for a holder's own request_id.

        The gateway keys jobs by (carrier, request_id); holders pick their ids themselves, so two
        holders' ids may collide, and the second would learn that the first used it. A keyed
        hash of (holder, id) keeps each holder's ids apart and tells the gateway nothing.
        """
        mac = hmac.new(self._request_id_key, f"{holder_id}\0{request_id}".encode(), "sha256")
        return mac.hexdigest()

    def answer_recycled(
        self, number: str, question: RecycledQuestion, platform_id: str
    ) -> claim_pb2.Envelope:
        """Has ``number`` changed holder after the end of the day asked about (in the carrier's
        time zone)? One signed bit for ``platform_id``, stating the day; never a time of day.

        Rule CARR-REC-1.
        """
        now = self.clock()
        history = self.registry.history(number)
        if history.carrier_at(now) != self.carrier_id:
            raise NotFound("NUMBER_NOT_SERVED", "this carrier does not serve the number")
        if question.specified_date is not None:
            answer = history.recycled_after(question.specified_date, self.time_zone, now)
        else:
            assert question.since is not None
            answer = history.recycled_since(question.since, self.time_zone, now)
        claim = RecycledClaim(
            number=number,
            carrier_id=self.carrier_id,
            since=answer.as_of,
            changed=answer.changed,
            platform_id=PeerId(Role.PLATFORM, platform_id).id,
            issued_at=now,
            expires_at=now + self.lifetime_at(now),
            specified_date=answer.day,
        )
        return sign_claim(claim, self.signer).to_proto()

    def issue_claim(
        self, number: str, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        """Conformance mode only: a claim for the number's current holder, unverified."""
        now = self.clock()
        current = self.registry.current_holder(number, now)
        claim = TenureClaim.new(
            number=number,
            carrier_id=self.carrier_id,
            tenure_start=current.tenure_start,
            purpose=purpose,
            now=now,
            lifetime=self.lifetime_at(now),
            binding_refs=refs,
        )
        return sign_claim(claim, self.signer).to_proto()

    def port_halves(self) -> list[LifecycleEvent]:
        """This carrier's half of every port it took part in, as donor or recipient, up to now.

        Each half is a PORTED event whose event_id derives from its fields and this carrier, so
        the same half always carries the same id (platforms apply an event once by its id). The
        number moves for the federation only once the other carrier's half is in too
        (docs/authority.md).

        Rule CARR-NUM-2.
        """
        now = self.clock()
        halves = []
        for history in self.registry.histories():
            for at, donor, recipient in history.ports():
                if at > now or self.carrier_id not in (donor, recipient):
                    continue
                seed = f"numfed port half\0{history.number}\0{donor}\0{recipient}\0{at.isoformat()}"
                event_id = hashlib.sha256(f"{seed}\0{self.carrier_id}".encode()).digest()[:16]
                halves.append(
                    LifecycleEvent(
                        event_id,
                        history.number,
                        EventKind.PORTED,
                        at,
                        from_carrier=donor,
                        to_carrier=recipient,
                    )
                )
        return halves

    def sign_events(self, events: Sequence[LifecycleEvent]) -> claim_pb2.Envelope:
        """A batch of lifecycle events signed as the carrier publishes it.

        Rule CARR-EVT-1.
        """
        return sign_event_batch(self.carrier_id, events, self.signer, now=self.clock()).to_proto()

    @property
    def claim_lifetime(self) -> timedelta:
        """How long the claims this adapter signs live: ``limits.claim_lifetime``, but never
        longer than the federation allows, the ``max_claim_lifetime`` of the trust bundle held
        (30 minutes while none is held, as verifiers assume without one). Verifiers refuse a
        longer claim (INVALID_ARGUMENT ``CLAIM_LIFETIME_TOO_LONG``), so a bundle that shortens
        the lifetime takes effect here at the next bundle fetch, with no change of config.

        Rule CARR-CLAIM-1."""
        bundle = self.trust.bundle if self.trust is not None else None
        ceiling = bundle.max_claim_lifetime if bundle is not None else DEFAULT_MAX_CLAIM_LIFETIME
        return min(timedelta(seconds=self.config.limits.claim_lifetime), ceiling)

    def lifetime_at(self, now: datetime, lifetime: timedelta | None = None) -> timedelta:
        """How long what this adapter signs at ``now`` lives: ``lifetime`` (a holder proof's)
        or :attr:`claim_lifetime`, but never past the end of its signing key's window in the
        trust bundle held. Verifiers refuse whatever a key signed once its window has closed
        (UNAUTHENTICATED ``KEY_OUT_OF_WINDOW``), so a claim, answer or proof living longer
        would say it is valid when it is not. (A key whose window has closed already gets
        nothing shortened: what it signs is refused whatever it says.)

        Rule CARR-CLAIM-1."""
        life = lifetime or self.claim_lifetime
        bundle = self.trust.bundle if self.trust is not None else None
        key = bundle.carrier_keys.get(self.signer.public.key_id) if bundle is not None else None
        if key is not None and key.not_after > now:
            life = min(life, key.not_after - now)
        return life

    async def close(self) -> None:
        await self.channel.close()
        self.registry.close()


def holder_admission(limits: Limits) -> Admission:
    """Bounded concurrency and a small queue on the holder channel: a crowd of holders gets
    RESOURCE_EXHAUSTED at once (with RetryInfo) instead of piling up calls to the gateway."""
    return Admission(
        [
            RpcClass(
                "holder",
                limits.max_concurrent_holder_calls,
                limits.max_queued_holder_calls,
                limits.admission_queue_wait,
            ),
            RpcClass("holder_watch", limits.max_holder_watches, 0, 0.0),
        ],
        HOLDER_CLASSES,
    )


@dataclass
class CarrierHandle:
    adapter: CarrierAdapter
    server: ServerHandle
    holder_server: ServerHandle
    web: WebHandle | None = None
    """The holder's page, when the config names ``holder_web_listen``."""

    @property
    def web_port(self) -> int:
        """The holder's page's (loopback, HTTP) port."""
        if self.web is None:
            raise ValueError("this carrier serves no holder's page")
        return self.web.port

    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The federation (mTLS, CarrierService) port."""
        return self.server.port

    @property
    def holder_port(self) -> int:
        """The carrier app's (loopback, HolderService) port."""
        return self.holder_server.port

    async def stop(self, grace: float = 2.0) -> None:
        if self.web is not None:
            await self.web.stop(grace)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.holder_server.stop(grace)
        await self.server.stop(grace)
        await self.adapter.close()


async def start_carrier(
    config: CarrierConfig,
    *,
    clock: Clock = _utc_now,
    adapter_class: type[CarrierAdapter] | None = None,
) -> CarrierHandle:
    """Start the adapter for ``config.carrier_id`` on both listeners (port 0 allowed).

    ``adapter_class`` lets tests start a deliberately broken carrier. With
    ``config.conformance`` the federation listener also serves CarrierConformanceService.
    """
    from carrier_adapters import adapter_for
    from carrier_adapters.conformance import (
        CONFORMANCE_POLICY,
        CONFORMANCE_SERVICE,
        CarrierConformanceServicer,
    )

    require_loopback(config.holder_listen, "holder_listen", _PLAINTEXT_HOLDER)
    if config.holder_web_listen is not None:
        require_loopback(config.holder_web_listen, "holder_web_listen", _PLAINTEXT_HOLDER)
    kind = adapter_class or adapter_for(config)
    adapter = kind(config, clock=clock)

    def register_carrier(server: grpc.aio.Server) -> str:
        servicer = CarrierServicer(adapter)
        carrier_pb2_grpc.add_CarrierServiceServicer_to_server(servicer, server)
        return CARRIER_SERVICE

    def register_conformance(server: grpc.aio.Server) -> str:
        conformance_pb2_grpc.add_CarrierConformanceServiceServicer_to_server(
            CarrierConformanceServicer(adapter), server
        )
        return CONFORMANCE_SERVICE

    def register_holder(server: grpc.aio.Server) -> str:
        holder_pb2_grpc.add_HolderServiceServicer_to_server(HolderServicer(adapter), server)
        return HOLDER_SERVICE

    started: list[ServerHandle] = []
    try:
        started.append(
            await start_server(
                register=[register_carrier, register_conformance]
                if config.conformance
                else [register_carrier],
                credentials=pki.server_credentials(config.pki_dir, adapter.peer),
                policy={**POLICY, **CONFORMANCE_POLICY} if config.conformance else POLICY,
                bind=config.listen,
                members=SoleGateway(pki.GATEWAY),
                revocations=pki.RevocationList(config.pki_dir),
                limits=config.limits,
            )
        )
        started.append(
            await start_server(
                register=[register_holder],
                credentials=None,
                policy=None,
                bind=config.holder_listen,
                admission=holder_admission(config.limits),
                limits=config.limits,
            )
        )
        web = await _start_web(adapter, started[1].port) if config.holder_web_listen else None
    except BaseException:
        for s in started:
            await s.stop(0)
        await adapter.close()
        raise
    handle = CarrierHandle(adapter, started[0], started[1], web)
    if adapter.checkpoints is not None:
        handle.tasks.append(asyncio.create_task(adapter.keep_checkpoints()))
    return handle


async def _start_web(adapter: CarrierAdapter, holder_port: int) -> WebHandle:
    """The holder's page, calling this adapter's HolderService over the loopback channel as
    any front end of the carrier would."""
    from carrier_adapters.web.app import CarrierFacts
    from carrier_adapters.web.server import start_holder_web

    config = adapter.config
    assert config.holder_web_listen is not None
    host = config.holder_listen.rsplit(":", 1)[0]
    facts = CarrierFacts(
        adapter.carrier_id,
        adapter.display_name_zh or adapter.display_name,
        adapter.display_name,
        adapter.time_zone,
    )
    return await start_holder_web(
        config.holder_web_listen, f"{host}:{holder_port}", facts, config.limits
    )


async def serve(config_path: Path) -> None:
    """Run the adapter of ``config_path`` until SIGTERM or SIGINT, then stop gracefully."""
    config = load_carrier_config(config_path)
    async with process_telemetry(f"carrier-{config.carrier_id}", config.telemetry):
        handle = await start_carrier(config)
        log.info(
            "carrier %s (%s) serving the federation on port %d and the holder app on port %d",
            handle.adapter.carrier_id,
            handle.adapter.display_name,
            handle.port,
            handle.holder_port,
        )
        if handle.web is not None:
            log.info("the holder's page is on port %d", handle.web.port)
        await run_until_signalled(handle.stop)
