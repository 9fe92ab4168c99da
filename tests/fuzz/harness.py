"""A live federation for fuzzing, and the checks every fuzzed call must pass.

The federation (gateway, three carriers, eight platforms, real mTLS) runs on its own event loop
in a background thread, so its dispatcher, pushers and syncs keep working while the test thread
sends requests with plain synchronous gRPC clients. Requests go out as raw bytes (the
serializer is the identity), so a client-side check can never hide a malformed request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import sqlalchemy as sa
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from carrier_adapters.base import POLICY as CARRIER_POLICY
from gateway.policy import POLICY as GATEWAY_POLICY
from gateway.schema import (
    event_batches,
    event_cursors,
    number_ports,
    port_halves,
    release_jobs,
    release_tasks,
)
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.history import EventKind as HistoryKind
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES, SERVER_CAP_DETAILS
from numfed.scenario import demo_scenario
from numfed.timeutil import to_date, to_timestamp
from numfed.v1 import (
    carrier_pb2,
    claim_pb2,
    events_pb2,
    gateway_pb2,
    holder_pb2,
    platform_pb2,
)
from platform_stubs.reference import POLICY as PLATFORM_POLICY
from platform_stubs.store import applied_events, applied_releases, bindings
from tests.helpers.loopthread import LoopThread
from tests.integration.conftest import Federation, start_federation
from tests.integration.holder import sms_code

__all__ = [
    "BAD_CODES",
    "RPCS",
    "LiveFederation",
    "Outcome",
    "Rpc",
]

T = TypeVar("T")
M = TypeVar("M", bound=Message)

BAD_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
"""Codes that say "the server broke", never a precise answer to bad input."""
REASON = re.compile(r"^[A-Z][A-Z0-9_]*$")
UNARY_TIMEOUT = 15.0
STREAM_TIMEOUT = 1.0
"""Streams (WatchOperation) may legitimately run until the deadline: keep it short."""
CARRIER = "cmcc"
PLATFORM = "weibo"
"""The reference platform whose PlatformService is fuzzed directly."""
WORLD = demo_scenario()
SEED_TTL = 120.0
"""Seconds a set of valid seed requests is reused (claims live 10 minutes)."""
SESSION_TTL = 600.0


# -- the RPCs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One RPC of one numfed service, as its descriptor and its server's policy describe it."""

    service: str
    method: str
    request: type[Message]
    stream: bool
    allowed: frozenset[Role] | None
    """Roles the server admits; None on the plaintext holder channel (no peer identity)."""

    @property
    def path(self) -> str:
        return f"/numfed.v1.{self.service}/{self.method}"

    @property
    def id(self) -> str:
        return f"{self.service}.{self.method}"


_SERVICES: dict[str, Mapping[str, frozenset[Role]] | None] = {
    "GatewayService": GATEWAY_POLICY,
    "CarrierService": CARRIER_POLICY,
    "PlatformService": PLATFORM_POLICY,
    "HolderService": None,
}


def _rpcs() -> list[Rpc]:
    out = []
    for module in (gateway_pb2, carrier_pb2, platform_pb2, holder_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            policy = _SERVICES[service.name]
            for m in service.methods:
                path = f"/{service.full_name}/{m.name}"
                out.append(
                    Rpc(
                        service.name,
                        m.name,
                        message_factory.GetMessageClass(m.input_type),
                        m.server_streaming,
                        None if policy is None else policy[path],
                    )
                )
    return out


RPCS = _rpcs()
"""Every RPC of every service in protos/numfed/v1, read from the generated descriptors."""


# -- calling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    status: status_pb2.Status | None
    responses: int
    body: bytes = b""
    """The answer of a unary call that succeeded."""


def _identity(b: bytes) -> bytes:
    return b


def _server_name(service: str, member: str) -> str:
    role = {"GatewayService": "gateway", "CarrierService": "carrier", "PlatformService": "platform"}
    return f"{member}.{role[service]}.numfed"


class LiveFederation:
    """A running federation in a background thread, and synchronous clients to it."""

    def __init__(self, root: Path) -> None:
        self._loop = LoopThread("fuzz-fed")
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        try:
            self.fed: Federation = self.run(
                start_federation(
                    root, limits={"recycled_rate": 10_000.0, "recycled_burst": 10_000.0}
                ),
                60,
            )
        except BaseException:
            self._loop.close()
            raise
        self._seeds: dict[str, tuple[float, list[Message]]] = {}
        self._session: tuple[float, str, str] | None = None
        self.operation = ""
        """A release operation of CARRIER (for GetOperation/WatchOperation seeds)."""
        self.holder_operation = ""
        self.calls: dict[str, int] = {}
        self.codes: dict[str, dict[str, int]] = {}
        try:
            self._setup()
        except BaseException:
            self.close()  # the fixture gets no federation to close
            raise

    # -- plumbing -------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self._loop.run(coro, timeout)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        try:
            self.run(self.fed.stop(), 60)
        finally:
            self._loop.close()

    @property
    def pki_dir(self) -> Path:
        return self.fed.layout.pki_dir

    def _target(self, rpc: Rpc, member: str) -> str:
        if rpc.service == "GatewayService":
            return f"127.0.0.1:{self.fed.gateway.port}"
        if rpc.service == "CarrierService":
            return f"127.0.0.1:{self.fed.carriers[member].port}"
        if rpc.service == "PlatformService":
            return f"127.0.0.1:{self.fed.platforms[member].port}"
        return f"127.0.0.1:{self.fed.carriers[member].holder_port}"

    def server_member(self, rpc: Rpc) -> str:
        return {"GatewayService": "main", "PlatformService": PLATFORM}.get(rpc.service, CARRIER)

    def channel(self, rpc: Rpc, peer: PeerId | None) -> grpc.Channel:
        member = self.server_member(rpc)
        target = self._target(rpc, member)
        key = (target, peer.uri if peer else "")
        ch = self._channels.get(key)
        if ch is None:
            options: list[tuple[str, int | str]] = [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)
            ]
            if peer is None:
                ch = grpc.insecure_channel(target, options=options)
            else:
                options.append(("grpc.ssl_target_name_override", _server_name(rpc.service, member)))
                creds = pki.channel_credentials(self.pki_dir, peer)
                ch = grpc.secure_channel(target, creds, options=options)
            self._channels[key] = ch
        return ch

    def call(self, rpc: Rpc, peer: PeerId | None, body: bytes) -> Outcome:
        ch = self.channel(rpc, peer)
        try:
            if rpc.stream:
                stream = ch.unary_stream(
                    rpc.path, request_serializer=_identity, response_deserializer=_identity
                )
                n = sum(1 for _ in stream(body, timeout=STREAM_TIMEOUT))
                return Outcome(grpc.StatusCode.OK, "", None, n)
            unary = ch.unary_unary(
                rpc.path, request_serializer=_identity, response_deserializer=_identity
            )
            answer: bytes = unary(body, timeout=UNARY_TIMEOUT)
            return Outcome(grpc.StatusCode.OK, "", None, 1, answer)
        except grpc.RpcError as exc:
            call = cast(grpc.Call, exc)
            return Outcome(call.code(), call.details() or "", rpc_status.from_call(call), 0)

    # -- peers --------------------------------------------------------------------------------

    def peers(self, rpc: Rpc) -> list[PeerId | None]:
        """Callers to try: each role, allowed or not (the holder channel has no peer)."""
        if rpc.allowed is None:
            return [None]
        return [
            PeerId(Role.CARRIER, CARRIER),
            PeerId(Role.PLATFORM, PLATFORM),
            PeerId(Role.GATEWAY, "main"),
        ]

    def allowed_peer(self, rpc: Rpc) -> PeerId | None:
        return next(
            p for p in self.peers(rpc) if p is None or rpc.allowed is None or p.role in rpc.allowed
        )

    # -- state ------------------------------------------------------------------------------

    def quiesce(self, timeout: float = 20.0) -> None:
        """Wait until no release job is open and every platform acknowledged every event."""
        engine = self.fed.gateway.store.engine
        end = time.monotonic() + timeout
        while True:
            with engine.connect() as c:
                open_jobs = c.execute(
                    sa.select(sa.func.count())
                    .select_from(release_jobs)
                    .where(release_jobs.c.done_us.is_(None))
                ).scalar_one()
                head = c.execute(sa.select(sa.func.max(event_batches.c.seq))).scalar_one() or 0
                acked = dict(
                    c.execute(
                        sa.select(event_cursors.c.platform_id, event_cursors.c.acked_seq)
                    ).all()
                )
            behind = [p for p in self.fed.platforms if acked.get(p, 0) < head]
            if open_jobs == 0 and not behind:
                return
            if time.monotonic() > end:
                raise AssertionError(
                    f"federation never settled: {open_jobs} open jobs, platforms {behind} "
                    f"behind event {head}"
                )
            time.sleep(0.02)

    def snapshot(self, at: datetime | None = None) -> dict[str, object]:
        """What a refused request must not change: gateway jobs, tasks, events, cursors,
        portability; each platform's bindings and applied releases and events; each carrier's
        SMS outbox (one SMS per verification started), and its sessions still valid ``at``
        with the releases each has signed.

        Not compared: what a refusal updates on purpose (audit log, rate limits, the count of
        wrong codes that voids a verification) and expired entries the carrier drops."""
        at = at or datetime.now(UTC)
        out: dict[str, object] = {}
        with self.fed.gateway.store.engine.connect() as c:
            h = hashlib.sha256()
            for q in (
                sa.select(release_jobs.c.job_id, release_jobs.c.request_digest),
                sa.select(release_tasks.c.job_id, release_tasks.c.platform_id),
                sa.select(event_batches.c.seq),
                sa.select(event_cursors.c.platform_id, event_cursors.c.acked_seq),
            ):
                for row in c.execute(q.order_by(*q.selected_columns)).all():
                    h.update(repr(tuple(row)).encode())
            out["gateway"] = h.hexdigest()
            # Who serves each number changes only through ports both carriers signed.
            for table in (number_ports, port_halves):
                for row in c.execute(sa.select(table).order_by(*table.primary_key)).all():
                    h.update(repr(tuple(row)).encode())
            out["ports"] = h.hexdigest()
        stale = sa.cast(bindings.c.stale, sa.Integer)
        for p, handle in self.fed.platforms.items():
            with handle.store.engine.connect() as c:
                out[f"platform:{p}"] = (
                    tuple(
                        c.execute(
                            sa.select(
                                sa.func.count(),
                                sa.func.count(bindings.c.released_us),
                                sa.func.coalesce(sa.func.sum(bindings.c.released_us), 0),
                                sa.func.coalesce(sa.func.sum(stale), 0),
                            ).select_from(bindings)
                        ).one()
                    ),
                    c.execute(
                        sa.select(sa.func.count()).select_from(applied_releases)
                    ).scalar_one(),
                    c.execute(sa.select(sa.func.count()).select_from(applied_events)).scalar_one(),
                )
        for cid, carrier in self.fed.carriers.items():
            v = carrier.adapter.verifier
            outbox = carrier.adapter.config.state_dir / "sms-outbox.jsonl"
            sessions = {t: s for t, s in list(v._sessions.items()) if s.expires > at}
            out[f"carrier:{cid}"] = (
                outbox.stat().st_size if outbox.exists() else 0,
                sorted((t, sorted(s._releases)) for t, s in sessions.items()),
            )
        return out

    # -- seeds: valid requests for each RPC ---------------------------------------------------

    def numbers(self, carrier: str = CARRIER) -> list[str]:
        """Numbers ``carrier`` serves now (the gateway accepts its claims for them)."""
        now = datetime.now(UTC)
        return sorted(h.number for h in WORLD.histories_served_by(carrier, now))

    def held(self) -> list[str]:
        """CARRIER's numbers that have a holder now: [session, confirm seed, start seed]."""
        now = datetime.now(UTC)
        held = [n for n in self.numbers() if WORLD.histories[n].current_tenure(now) is not None]
        assert len(held) >= 3, held
        return held

    def tenure_start(self, number: str) -> datetime:
        """X of the number's last assignment (claims need not be about a current holder)."""
        return max(e.at for e in WORLD.histories[number].events if e.kind is HistoryKind.ASSIGNED)

    def claim(
        self,
        purpose: Purpose,
        *,
        number: str | None = None,
        refs: tuple[str, ...] = (),
    ) -> claim_pb2.Envelope:
        number = number or self.numbers()[3]
        c = TenureClaim.new(
            number=number,
            carrier_id=CARRIER,
            tenure_start=self.tenure_start(number),
            purpose=purpose,
            now=_whole_second(),
            binding_refs=refs,
        )
        return sign_claim(c, pki.load_carrier_signer(self.pki_dir, CARRIER)).to_proto()

    def event_batch(self, kind: EventKind = EventKind.DEACTIVATED) -> claim_pb2.Envelope:
        now = _whole_second()
        number = self.numbers()[5]
        extras: dict[EventKind, dict[str, object]] = {
            EventKind.PENDING_RELEASE: {"as_of": now - timedelta(days=3650)},
            EventKind.REASSIGNED: {"tenure_start": self.tenure_start(number)},
            EventKind.PORTED: {"from_carrier": CARRIER, "to_carrier": "cucc"},  # the donor's half
            EventKind.DEACTIVATED: {},
        }
        event = LifecycleEvent.new(number, kind, now - timedelta(seconds=1), **extras[kind])
        key = pki.load_carrier_signer(self.pki_dir, CARRIER)
        return sign_event_batch(CARRIER, [event], key, now=now).to_proto()

    def session(self) -> str:
        """A verified holder session at CARRIER (renewed well before it expires)."""
        if self._session is None or time.monotonic() - self._session[0] > SESSION_TTL:
            number = self.held()[0]
            vid, code = self.verification(number)
            resp = self._holder_call(
                "ConfirmVerification",
                holder_pb2.ConfirmVerificationRequest(verification_id=vid, code=code),
                holder_pb2.ConfirmVerificationResponse,
            )
            self._session = (time.monotonic(), resp.session_token, number)
        return self._session[1]

    def verification(self, number: str) -> tuple[str, str]:
        """Start a verification of ``number``'s current holder; return its id and SMS code."""
        tenure = WORLD.histories[number].current_tenure(datetime.now(UTC))
        assert tenure is not None
        holder = WORLD.holders[tenure.holder_id]
        resp = self._holder_call(
            "StartVerification",
            holder_pb2.StartVerificationRequest(
                number=number, name=holder.name, id_number=holder.id_number
            ),
            holder_pb2.StartVerificationResponse,
        )
        state = self.fed.carriers[CARRIER].adapter.config.state_dir
        return resp.verification_id, sms_code(state, number)

    def request(self, rpc: Rpc, peer: PeerId | None, request: Message, response: type[M]) -> M:
        """A valid call that must succeed; its answer parsed."""
        unary = self.channel(rpc, peer).unary_unary(
            rpc.path, request_serializer=_identity, response_deserializer=_identity
        )
        raw: bytes = unary(request.SerializeToString(), timeout=UNARY_TIMEOUT)
        answer = response()
        answer.ParseFromString(raw)
        return answer

    def _holder_call(self, method: str, request: Message, response: type[M]) -> M:
        return self.request(rpc_named("HolderService", method), None, request, response)

    def _gateway_call(self, method: str, request: Message, response: type[M]) -> M:
        rpc = rpc_named("GatewayService", method)
        return self.request(rpc, PeerId(Role.CARRIER, CARRIER), request, response)

    def _setup(self) -> None:
        from google.longrunning import operations_pb2

        op = self._gateway_call(
            "ReleaseBindings",
            gateway_pb2.ReleaseBindingsRequest(
                request_id="fuzz-setup",
                claim=self.claim(Purpose.RELEASE_PRIOR, number=self.numbers()[1]),
            ),
            operations_pb2.Operation,
        )
        self.operation = op.name
        holder_op = self._holder_call(
            "ReleaseHolderBindings",
            holder_pb2.ReleaseHolderBindingsRequest(
                session_token=self.session(),
                scope=holder_pb2.BINDING_SCOPE_PRIOR,
                request_id="fuzz-setup-holder",
            ),
            operations_pb2.Operation,
        )
        self.holder_operation = holder_op.name
        self.quiesce()

    def seeds(self, rpc: Rpc, *, fresh: bool = False) -> list[Message]:
        """Valid requests of ``rpc`` (from its allowed caller), renewed every SEED_TTL."""
        cached = None if fresh else self._seeds.get(rpc.id)
        # A verification may start 5 times per number per 10 minutes: renew that one slowly.
        ttl = 2 * SEED_TTL if rpc.method == "ConfirmVerification" else SEED_TTL
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        made = list(self._make_seeds(rpc))
        assert made, f"no seed for {rpc.id}"
        self._seeds[rpc.id] = (time.monotonic(), made)
        return made

    def _make_seeds(self, rpc: Rpc) -> Iterable[Message]:
        numbers = self.numbers()
        since = to_timestamp(datetime(2020, 1, 1, tzinfo=UTC))
        day = to_date(date(2020, 1, 1))
        name = rpc.id
        if name == "GatewayService.GetTrustBundle":
            yield gateway_pb2.GetTrustBundleRequest()
            yield gateway_pb2.GetTrustBundleRequest(known_root_version=1)
        elif name == "GatewayService.QueryBindings":
            yield gateway_pb2.QueryBindingsRequest(claim=self.claim(Purpose.QUERY_PRIOR))
            yield gateway_pb2.QueryBindingsRequest(
                claim=self.claim(Purpose.QUERY_OWN), platform_ids=[PLATFORM, "labels"]
            )
        elif name == "GatewayService.ReleaseBindings":
            yield gateway_pb2.ReleaseBindingsRequest(
                request_id=f"seed-{secrets.token_hex(4)}", claim=self.claim(Purpose.RELEASE_PRIOR)
            )
            yield gateway_pb2.ReleaseBindingsRequest(
                request_id=f"seed-{secrets.token_hex(4)}",
                claim=self.claim(Purpose.RELEASE_PRIOR, number=numbers[4]),
                platform_ids=[PLATFORM],
            )
        elif name == "GatewayService.GetOperation":
            yield gateway_pb2.GetOperationRequest(name=self.operation)
        elif name == "GatewayService.WatchOperation":
            yield gateway_pb2.WatchOperationRequest(name=self.operation)
        elif name == "GatewayService.CheckRecycled":
            yield gateway_pb2.CheckRecycledRequest(number=numbers[2], specified_date=day)
            yield gateway_pb2.CheckRecycledRequest(number=numbers[2], since=since)
        elif name == "GatewayService.PublishEvents":
            for kind in EventKind:
                yield gateway_pb2.PublishEventsRequest(batch=self.event_batch(kind))
        elif name == "GatewayService.PullEvents":
            yield gateway_pb2.PullEventsRequest(ack_through_seq=0, max_batches=5)
        elif name == "CarrierService.ListServedNumbers":
            yield carrier_pb2.ListServedNumbersRequest(page_size=3)
            first = carrier_pb2.ListServedNumbersRequest(page_size=3)
            page = self._carrier_page(first)
            yield carrier_pb2.ListServedNumbersRequest(page_size=3, page_token=page)
        elif name == "CarrierService.ListPortHalves":
            yield carrier_pb2.ListPortHalvesRequest(page_size=1)
            yield carrier_pb2.ListPortHalvesRequest()
        elif name == "CarrierService.AnswerRecycledCheck":
            yield carrier_pb2.AnswerRecycledCheckRequest(
                number=numbers[2], specified_date=day, platform_id=PLATFORM
            )
            yield carrier_pb2.AnswerRecycledCheckRequest(
                number=numbers[2], since=since, platform_id=PLATFORM
            )
        elif name == "PlatformService.BatchQueryBindings":
            yield platform_pb2.BatchQueryBindingsRequest(
                items=[
                    platform_pb2.QueryItem(item_id="a", claim=self.claim(Purpose.QUERY_PRIOR)),
                    platform_pb2.QueryItem(item_id="b", claim=self.claim(Purpose.QUERY_OWN)),
                ]
            )
        elif name == "PlatformService.BatchReleaseBindings":
            yield platform_pb2.BatchReleaseBindingsRequest(
                items=[
                    platform_pb2.ReleaseItem(item_id="a", claim=self.claim(Purpose.RELEASE_PRIOR))
                ]
            )
        elif name == "PlatformService.DeliverEvents":
            yield platform_pb2.DeliverEventsRequest(
                batches=[
                    events_pb2.SequencedBatch(seq=1_000_000 + i, batch=self.event_batch(k))
                    for i, k in enumerate(EventKind)
                ]
            )
        elif name == "HolderService.StartVerification":
            number = self.held()[2]
            tenure = WORLD.histories[number].current_tenure(datetime.now(UTC))
            assert tenure is not None
            h = WORLD.holders[tenure.holder_id]
            yield holder_pb2.StartVerificationRequest(
                number=number, name=h.name, id_number=h.id_number
            )
        elif name == "HolderService.ConfirmVerification":
            vid, code = self.verification(self.held()[1])
            yield holder_pb2.ConfirmVerificationRequest(verification_id=vid, code=code)
        elif name == "HolderService.QueryHolderBindings":
            token = self.session()
            yield holder_pb2.QueryHolderBindingsRequest(
                session_token=token, scope=holder_pb2.BINDING_SCOPE_PRIOR
            )
            yield holder_pb2.QueryHolderBindingsRequest(
                session_token=token, scope=holder_pb2.BINDING_SCOPE_OWN, platform_ids=[PLATFORM]
            )
        elif name == "HolderService.ReleaseHolderBindings":
            yield holder_pb2.ReleaseHolderBindingsRequest(
                session_token=self.session(),
                scope=holder_pb2.BINDING_SCOPE_PRIOR,
                request_id=f"seed-{secrets.token_hex(4)}",
            )
        elif name == "HolderService.WatchHolderRelease":
            yield holder_pb2.WatchHolderReleaseRequest(
                session_token=self.session(), name=self.holder_operation
            )
        elif name == "HolderService.IssueHolderProof":
            yield holder_pb2.IssueHolderProofRequest(session_token=self.session())
        elif name == "HolderService.PreviewHolderClaim":
            yield holder_pb2.PreviewHolderClaimRequest(
                session_token=self.session(), purpose=claim_pb2.PURPOSE_QUERY_PRIOR
            )

    def _carrier_page(self, request: carrier_pb2.ListServedNumbersRequest) -> str:
        rpc = rpc_named("CarrierService", "ListServedNumbers")
        peer = PeerId(Role.GATEWAY, "main")
        return self.request(
            rpc, peer, request, carrier_pb2.ListServedNumbersResponse
        ).next_page_token

    # -- the check --------------------------------------------------------------------------

    def exercise(self, rpc: Rpc, peer: PeerId | None, body: bytes) -> Outcome:
        """Send ``body``; assert a precise answer and, when refused, that nothing changed."""
        self.quiesce()
        at = datetime.now(UTC)
        before = self.snapshot(at)
        out = self.call(rpc, peer, body)
        self.calls[rpc.id] = self.calls.get(rpc.id, 0) + 1
        codes = self.codes.setdefault(rpc.id, {})
        codes[out.code.name] = codes.get(out.code.name, 0) + 1
        check_outcome(rpc, peer, out, len(body))
        if out.code != grpc.StatusCode.OK:
            after = self.snapshot(at)
            changed = {k for k in before if before[k] != after[k]}
            assert not changed, f"{rpc.id} refused ({out.code.name}) but changed {changed}"
        return out

    def assert_serving(self) -> None:
        """Every server still answers a valid request (one per service, end to end)."""
        self.quiesce()
        for rpc in RPCS:
            if rpc.method not in _LIVENESS:
                continue
            seed = self.seeds(rpc)[0]
            out = self.call(rpc, self.allowed_peer(rpc), seed.SerializeToString())
            assert out.code == grpc.StatusCode.OK, f"{rpc.id} stopped answering: {out}"


_LIVENESS = {"QueryBindings", "ListServedNumbers", "BatchQueryBindings", "QueryHolderBindings"}
"""One valid request per service: each goes through every layer of its server."""


def _whole_second() -> datetime:
    """Now, without the fraction: seeds then serialise to the same length every time, so the
    byte mutations drawn from them keep the same shape (hypothesis replays them)."""
    return datetime.now(UTC).replace(microsecond=0)


def rpc_named(service: str, method: str) -> Rpc:
    return next(r for r in RPCS if r.service == service and r.method == method)


def check_outcome(rpc: Rpc, peer: PeerId | None, out: Outcome, size: int) -> None:
    """A precise answer: never INTERNAL/UNKNOWN/DATA_LOSS, and every error carries one
    ErrorInfo with a reason. DEADLINE_EXCEEDED only ends a stream (the client's deadline)."""
    where = f"{rpc.id} as {peer.uri if peer else 'holder app'}"
    assert out.code not in BAD_CODES, f"{where}: {out.code.name} {out.details!r}"
    if out.code == grpc.StatusCode.OK:
        return
    if out.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert rpc.stream, f"{where}: unary call ran out of time: {out.details!r}"
        if out.status is None:
            return  # the client's own deadline ended the stream
    if size > MAX_MESSAGE_BYTES:
        # gRPC refuses an oversized message before any numfed code runs: no ErrorInfo.
        assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{where}: {out.code.name}"
        return
    if (out.code, out.details, out.status) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        SERVER_CAP_DETAILS,
        None,
    ):
        return  # gRPC's own refusal at the server's cap, as gateway.proto documents: no ErrorInfo
    assert out.status is not None, f"{where}: {out.code.name} without google.rpc.Status"
    assert out.status.code == out.code.value[0], f"{where}: status code differs"
    infos = []
    for d in out.status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"{where}: {len(infos)} ErrorInfo in {out.code.name} {out.details!r}"
    assert REASON.match(infos[0].reason), f"{where}: reason {infos[0].reason!r}"
    if peer is not None and rpc.allowed is not None and peer.role not in rpc.allowed:
        assert (out.code, infos[0].reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        ), f"{where}: a role that is not allowed got {out.code.name} {infos[0].reason}"
