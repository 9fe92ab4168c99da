"""The shared carrier adapter: verifies holders, signs their claims, speaks for them.

It serves ``CarrierService`` to the gateway (mTLS, gateway only) and ``HolderService`` to the
carrier's own app channel. Only a verified holder gets a claim, and a claim says nothing about
them but the number and X (the start of their tenure; a port keeps it). The holder's name, ID
number and SMS code stop here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import grpc
from google.longrunning import operations_pb2

from carrier_adapters.registry import SubscriberRegistry
from carrier_adapters.verification import Session, SmsOutbox, Verifier
from numfed import pki
from numfed.claims import Purpose, TenureClaim, normalize_number, sign_claim
from numfed.config import CarrierConfig, load_carrier_config
from numfed.envelope import SigningKey
from numfed.errors import InvalidArgument, NotFound
from numfed.identity import PeerId, Role
from numfed.rpc import MAX_MESSAGE_BYTES, ServerHandle, error_from_rpc, start_server
from numfed.scenario import demo_scenario
from numfed.serving import run_until_signalled
from numfed.timeutil import to_timestamp
from numfed.v1 import (
    carrier_pb2,
    carrier_pb2_grpc,
    claim_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    holder_pb2,
    holder_pb2_grpc,
)

__all__ = ["CarrierAdapter", "CarrierHandle"]

CARRIER_SERVICE = "numfed.v1.CarrierService"
HOLDER_SERVICE = "numfed.v1.HolderService"
_ID_NUMBER_LEN = 18


class CarrierAdapter:
    """One carrier's adapter. Subclasses state the carrier's own particulars."""

    carrier_id: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    sms_signature: ClassVar[str] = ""
    quiet_period: ClassVar[timedelta] = timedelta(days=90)

    def __init__(self, config: CarrierConfig, *, clock: Any = None) -> None:
        if config.carrier_id != self.carrier_id:
            raise InvalidArgument("BAD_CONFIG", f"config is for {config.carrier_id}")
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.registry = SubscriberRegistry(config.state_dir / "subscribers.db", self.carrier_id)
        if config.seed_scenario and self.registry.is_empty():
            world = demo_scenario()
            known = world.histories_known_to(self.carrier_id)
            holders = {e.holder_id for h in known for e in h.events if e.holder_id}
            self.registry.seed([world.holders[h] for h in sorted(holders)], known)
        self.verifier = Verifier(
            SmsOutbox(config.state_dir / "sms-outbox.jsonl", self.sms_signature), clock=self.clock
        )
        self.signer: SigningKey = pki.load_carrier_signer(config.pki_dir, self.carrier_id)
        self.peer = PeerId(Role.CARRIER, self.carrier_id)
        self.channel = pki.secure_channel(
            config.gateway,
            config.pki_dir,
            self.peer,
            server=pki.GATEWAY,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)

    # -- claims -------------------------------------------------------------------------------

    def sign(
        self, session: Session, purpose: Purpose, refs: tuple[str, ...] = ()
    ) -> claim_pb2.Envelope:
        """A claim for the verified holder's number, X = the start of their tenure."""
        now = self.clock()
        history = self.registry.history(session.number)
        tenure = history.current_tenure(now)
        if tenure is None or tenure.holder_id != session.holder_id:
            raise NotFound("NOT_THE_HOLDER", "the session's holder no longer holds the number")
        claim = TenureClaim.new(
            number=session.number,
            carrier_id=self.carrier_id,
            tenure_start=tenure.start,
            purpose=purpose,
            now=now,
            lifetime=timedelta(seconds=self.config.limits.claim_lifetime),
            binding_refs=refs,
        )
        return sign_claim(claim, self.signer).to_proto()

    def current_holder(self, number: str) -> tuple[str, str, str, datetime]:
        now = self.clock()
        history = self.registry.history(number)
        if history.carrier_at(now) != self.carrier_id:
            raise NotFound("NUMBER_NOT_SERVED", "this carrier does not serve the number")
        tenure = history.current_tenure(now)
        if tenure is None:
            raise NotFound("NO_CURRENT_HOLDER", "the number has no holder")
        h = self.registry.holder(tenure.holder_id)
        return h.holder_id, h.name, h.id_number, tenure.start

    async def close(self) -> None:
        await self.channel.close()


def _deadline(context: grpc.aio.ServicerContext[Any, Any], default: float = 10.0) -> float:
    remaining = context.time_remaining()
    return default if remaining is None else max(min(remaining - 0.05, default), 0.01)


async def _gateway_call(call: Any) -> Any:
    """Await a gateway call; its failure reaches the holder with the same code and reason."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc


class CarrierServicer(carrier_pb2_grpc.CarrierServiceServicer):
    def __init__(self, adapter: CarrierAdapter) -> None:
        self.adapter = adapter

    async def ListServedNumbers(
        self,
        request: carrier_pb2.ListServedNumbersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> carrier_pb2.ListServedNumbersResponse:
        size = request.page_size or 1000
        if size > 10_000:
            raise InvalidArgument("BAD_PAGE_SIZE", "page_size is at most 10000")
        start = 0
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument("BAD_PAGE_TOKEN", "unknown page_token")
            start = int(request.page_token)
        numbers = self.adapter.registry.served_numbers(self.adapter.clock())
        page = numbers[start : start + size]
        more = start + size < len(numbers)
        return carrier_pb2.ListServedNumbersResponse(
            numbers=page, next_page_token=str(start + size) if more else ""
        )


_SCOPES = {
    holder_pb2.BINDING_SCOPE_PRIOR: (Purpose.QUERY_PRIOR, Purpose.RELEASE_PRIOR),
    holder_pb2.BINDING_SCOPE_OWN: (Purpose.QUERY_OWN, Purpose.RELEASE_OWN),
}


def _scope(scope: holder_pb2.BindingScope.ValueType) -> tuple[Purpose, Purpose]:
    if scope not in _SCOPES:
        raise InvalidArgument("BAD_SCOPE", "scope must be PRIOR or OWN")
    return _SCOPES[scope]


class HolderServicer(holder_pb2_grpc.HolderServiceServicer):
    def __init__(self, adapter: CarrierAdapter) -> None:
        self.adapter = adapter

    async def StartVerification(
        self,
        request: holder_pb2.StartVerificationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.StartVerificationResponse:
        number = normalize_number(request.number)
        if len(request.id_number) != _ID_NUMBER_LEN:
            raise InvalidArgument("MALFORMED_ID_NUMBER", "an ID number has 18 characters")
        holder_id, name, id_number, _x = self.adapter.current_holder(number)
        vid, expires = self.adapter.verifier.start(
            number, request.name, request.id_number, (holder_id, name, id_number)
        )
        return holder_pb2.StartVerificationResponse(
            verification_id=vid, expire_time=to_timestamp(expires)
        )

    async def ConfirmVerification(
        self,
        request: holder_pb2.ConfirmVerificationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.ConfirmVerificationResponse:
        session = self.adapter.verifier.confirm(
            request.verification_id,
            request.code,
            lambda number: self.adapter.current_holder(number)[3],
        )
        return holder_pb2.ConfirmVerificationResponse(
            session_token=session.token, tenure_start=to_timestamp(session.tenure_start)
        )

    async def QueryHolderBindings(
        self,
        request: holder_pb2.QueryHolderBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> holder_pb2.QueryHolderBindingsResponse:
        session = self.adapter.verifier.session(request.session_token)
        purpose, _ = _scope(request.scope)
        claim = self.adapter.sign(session, purpose)
        answer = await _gateway_call(
            self.adapter.gateway.QueryBindings(
                gateway_pb2.QueryBindingsRequest(claim=claim, platform_ids=request.platform_ids),
                timeout=_deadline(context),
            )
        )
        return holder_pb2.QueryHolderBindingsResponse(results=answer.results)

    async def ReleaseHolderBindings(
        self,
        request: holder_pb2.ReleaseHolderBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> operations_pb2.Operation:
        session = self.adapter.verifier.session(request.session_token)
        _, purpose = _scope(request.scope)
        refs = tuple(request.binding_refs)
        if purpose is Purpose.RELEASE_OWN and not refs:
            raise InvalidArgument(
                "NO_BINDINGS_SELECTED", "releasing own bindings needs each one picked explicitly"
            )
        if purpose is Purpose.RELEASE_PRIOR and refs:
            raise InvalidArgument("UNEXPECTED_BINDING_REFS", "a prior release names no bindings")
        raw = session.requests.get(request.request_id)
        if raw is None:
            claim = self.adapter.sign(session, purpose, refs)
            session.requests[request.request_id] = claim.SerializeToString()
        else:
            claim = claim_pb2.Envelope.FromString(raw)
        op = await _gateway_call(
            self.adapter.gateway.ReleaseBindings(
                gateway_pb2.ReleaseBindingsRequest(
                    request_id=request.request_id, claim=claim, platform_ids=request.platform_ids
                ),
                timeout=_deadline(context),
            )
        )
        session.operations.add(op.name)
        return op

    async def WatchHolderRelease(
        self,
        request: holder_pb2.WatchHolderReleaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[operations_pb2.Operation]:
        session = self.adapter.verifier.session(request.session_token)
        if request.name not in session.operations:
            raise NotFound("OPERATION_NOT_FOUND", "not an operation of this session")
        call = self.adapter.gateway.WatchOperation(
            gateway_pb2.WatchOperationRequest(name=request.name), timeout=_deadline(context, 60)
        )
        try:
            async for op in call:
                yield op
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc


@dataclass
class CarrierHandle:
    adapter: CarrierAdapter
    server: ServerHandle
    holder_server: ServerHandle

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def holder_port(self) -> int:
        return self.holder_server.port

    async def stop(self, grace: float = 2.0) -> None:
        await self.holder_server.stop(grace)
        await self.server.stop(grace)
        await self.adapter.close()


async def start_carrier(config: CarrierConfig) -> CarrierHandle:
    from carrier_adapters import ADAPTERS

    adapter = ADAPTERS[config.carrier_id](config)

    def register_carrier(server: grpc.aio.Server) -> str:
        carrier_pb2_grpc.add_CarrierServiceServicer_to_server(CarrierServicer(adapter), server)
        return CARRIER_SERVICE

    def register_holder(server: grpc.aio.Server) -> str:
        holder_pb2_grpc.add_HolderServiceServicer_to_server(HolderServicer(adapter), server)
        return HOLDER_SERVICE

    server = await start_server(
        register=[register_carrier],
        credentials=pki.server_credentials(config.pki_dir, adapter.peer),
        policy={f"/{CARRIER_SERVICE}/ListServedNumbers": frozenset({Role.GATEWAY})},
        bind=config.listen,
    )
    # The carrier's own app channel: in production behind the carrier's app front end.
    holder = await start_server(
        register=[register_holder], credentials=None, policy=None, bind=config.holder_listen
    )
    return CarrierHandle(adapter, server, holder)


async def serve(config_path: Path) -> None:
    handle = await start_carrier(load_carrier_config(config_path))
    print(
        f"carrier {handle.adapter.carrier_id} listening on ports {handle.port} "
        f"(federation) and {handle.holder_port} (holder app)",
        flush=True,
    )
    await run_until_signalled(handle.stop)
