"""Conformance mode: the test-only ConformanceService a reference platform serves to the kit.

Served only when the platform's config says ``conformance = true``; it writes accounts and
bindings that no holder made, so a platform in production never serves it.
"""

from __future__ import annotations

from typing import Any

import grpc

from numfed.claims import normalize_number
from numfed.errors import InvalidArgument, NumfedError, Unavailable
from numfed.rpc import error_status, ok_status
from numfed.timeutil import from_timestamp, to_timestamp
from numfed.v1 import binding_pb2, conformance_pb2, conformance_pb2_grpc
from platform_stubs.events import EventApplier
from platform_stubs.store import PlatformStore
from platform_stubs.trustclient import TrustClient

__all__ = ["SERVICE", "ConformanceServicer"]

SERVICE = "numfed.v1.ConformanceService"
MAX_SEED = 500
_KIND_NAMES = {v: k.removeprefix("BINDING_KIND_") for k, v in binding_pb2.BindingKind.items()}


class ConformanceServicer(conformance_pb2_grpc.ConformanceServiceServicer):
    def __init__(self, *, store: PlatformStore, trust: TrustClient, events: EventApplier) -> None:
        self.store = store
        self.trust = trust
        self.events = events

    async def ResetState(
        self,
        request: conformance_pb2.ResetStateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ResetStateResponse:
        await self.store.run(self.store.reset)
        return conformance_pb2.ResetStateResponse()

    async def SeedBindings(
        self,
        request: conformance_pb2.SeedBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.SeedBindingsResponse:
        if not 1 <= len(request.bindings) <= MAX_SEED:
            raise InvalidArgument("BAD_SEED", f"seed 1 to {MAX_SEED} bindings at once")
        rows = []
        for b in request.bindings:
            if not b.account_id or not b.HasField("bound_at"):
                raise InvalidArgument("BAD_SEED", "each binding needs an account_id and bound_at")
            kind = _KIND_NAMES.get(b.kind, "UNSPECIFIED")
            if kind == "UNSPECIFIED":
                raise InvalidArgument("BAD_SEED", "each binding needs a kind")
            number = normalize_number(b.number)
            rows.append((b.account_id, b.nickname, number, kind, from_timestamp(b.bound_at)))
        await self.store.run(self.store.bind, rows)
        return conformance_pb2.SeedBindingsResponse()

    async def ListSeededBindings(
        self,
        request: conformance_pb2.ListSeededBindingsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ListSeededBindingsResponse:
        number = normalize_number(request.number)
        found = (await self.store.run(self.store.bindings_for, [number]))[number]
        present = await self.store.run(self.store.existing_accounts, [b.account_id for b in found])
        out = []
        for b in found:
            pb = conformance_pb2.SeededBinding(
                account_id=b.account_id,
                nickname=b.nickname,
                number=b.number,
                kind=binding_pb2.BindingKind.Value("BINDING_KIND_" + b.kind),
                bound_at=to_timestamp(b.bound_at),
                stale=b.stale,
                account_exists=b.account_id in present,
            )
            if b.released_at is not None:
                pb.released_at.CopyFrom(to_timestamp(b.released_at))
            out.append(pb)
        return conformance_pb2.ListSeededBindingsResponse(bindings=out)

    async def CheckSmsLogin(
        self,
        request: conformance_pb2.CheckSmsLoginRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.CheckSmsLoginResponse:
        number = normalize_number(request.number)
        allowed = await self.store.run(self.store.login_by_sms, number, request.account_id)
        return conformance_pb2.CheckSmsLoginResponse(allowed=allowed)

    async def RefreshTrust(
        self,
        request: conformance_pb2.RefreshTrustRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.RefreshTrustResponse:
        try:
            await self.trust.refresh()
            status = ok_status()
        except NumfedError as err:
            status = error_status(err)
        except grpc.aio.AioRpcError as err:
            status = error_status(Unavailable("GATEWAY_UNREACHABLE", str(err.details())))
        bundle = self.trust.state.bundle
        return conformance_pb2.RefreshTrustResponse(
            bundle_version=0 if bundle is None else bundle.version, status=status
        )

    async def ListAppliedEvents(
        self,
        request: conformance_pb2.ListAppliedEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ListAppliedEventsResponse:
        ids = await self.store.run(self.store.applied_event_ids)
        return conformance_pb2.ListAppliedEventsResponse(event_ids=ids)
