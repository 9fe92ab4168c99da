"""A reference platform's conformance mode: ``PlatformConformanceService`` (test only).

Served only when the platform's config says ``conformance = true``: the conformance kit seeds
accounts and bindings at given times through it, reads them back, and asks the platform to
refresh its trust bundle now. Only the gateway's identity may call it, like PlatformService.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

import grpc
import sqlalchemy as sa

from numfed.claims import VerifiedRecycledClaim, normalize_number
from numfed.errors import AlreadyExists, InvalidArgument, NumfedError, Unavailable
from numfed.identity import Role
from numfed.rpc import error_status, ok_status
from numfed.staleness import may_be_stale
from numfed.timeutil import from_date, from_timestamp, to_date, to_timestamp
from numfed.trust import TrustedState
from numfed.v1 import binding_pb2, claim_pb2, conformance_pb2, conformance_pb2_grpc, gateway_pb2
from platform_stubs.recycled import check_recycled_answer
from platform_stubs.store import PlatformStore
from platform_stubs.trustclient import TrustClient

__all__ = ["CONFORMANCE_POLICY", "CONFORMANCE_SERVICE", "PlatformConformanceServicer"]

CONFORMANCE_SERVICE = "numfed.v1.PlatformConformanceService"
CONFORMANCE_POLICY = {
    f"/{CONFORMANCE_SERVICE}/{m}": frozenset({Role.GATEWAY})
    for m in (
        "ResetPlatformData",
        "SeedAccounts",
        "ReadAccounts",
        "CheckSmsLogin",
        "ListAppliedEvents",
        "RefreshTrustBundle",
        "ResetTrust",
        "GetTrustState",
        "ReloadTrust",
        "AskRecycledCheck",
    )
}
MAX_READ = 1000
ASK_TIMEOUT = 5.0
"""Seconds the platform waits for the gateway's CheckRecycled answer."""
_KIND_NAMES: dict[int, str] = {
    int(v): str(k).removeprefix("BINDING_KIND_") for k, v in binding_pb2.BindingKind.items()
}
_KIND_VALUES = {name: value for value, name in _KIND_NAMES.items()}


def _kind(value: int) -> str:
    if value == binding_pb2.BINDING_KIND_UNSPECIFIED:
        return "ACCOUNT_LOGIN"
    name = _KIND_NAMES.get(value)
    if name is None:
        raise InvalidArgument("BAD_BINDING_KIND", f"unknown binding kind {value}")
    return name


def _text(value: str, what: str, limit: int) -> str:
    if not value or len(value) > limit:
        raise InvalidArgument("BAD_SEED", f"{what} must have 1 to {limit} characters")
    return value


class PlatformConformanceServicer(conformance_pb2_grpc.PlatformConformanceServiceServicer):
    def __init__(self, *, platform_id: str, store: PlatformStore, trust: TrustClient) -> None:
        self._platform_id = platform_id
        self._store = store
        self._trust = trust

    async def ResetPlatformData(
        self,
        request: conformance_pb2.ResetPlatformDataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ResetPlatformDataResponse:
        removed = await self._store.run(self._store.reset)
        return conformance_pb2.ResetPlatformDataResponse(accounts_removed=removed)

    async def SeedAccounts(
        self,
        request: conformance_pb2.SeedAccountsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.SeedAccountsResponse:
        accounts = []
        for a in request.accounts:
            if not a.HasField("created_at"):
                raise InvalidArgument("BAD_SEED", "an account needs created_at")
            accounts.append(
                (
                    _text(a.account_id, "account_id", 64),
                    _text(a.nickname, "nickname", 128),
                    from_timestamp(a.created_at),
                )
            )
        bindings = []
        for b in request.bindings:
            if not b.HasField("bound_at"):
                raise InvalidArgument("BAD_SEED", "a binding needs bound_at")
            bindings.append(
                (
                    _text(b.account_id, "account_id", 64),
                    normalize_number(b.number),
                    _kind(b.kind),
                    from_timestamp(b.bound_at),
                )
            )
        new_ids = {a[0] for a in accounts}
        if len(new_ids) != len(accounts):
            raise InvalidArgument("BAD_SEED", "account ids repeat")
        others = sorted({b[0] for b in bindings} - new_ids)
        if others:
            known = await self._store.run(self._store.accounts_with_bindings, others)
            if any(v is None for v in known.values()):
                raise InvalidArgument("BAD_SEED", "a binding names an unknown account")
        try:
            created = await self._store.run(self._store.seed_accounts, accounts, bindings)
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists("ACCOUNT_EXISTS", "an account id is already taken") from exc
        return conformance_pb2.SeedAccountsResponse(bindings_created=created)

    async def ReadAccounts(
        self,
        request: conformance_pb2.ReadAccountsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ReadAccountsResponse:
        ids = list(request.account_ids)
        if not 1 <= len(ids) <= MAX_READ:
            raise InvalidArgument("BAD_READ", f"name 1 to {MAX_READ} account ids")
        found = await self._store.run(self._store.accounts_with_bindings, ids)
        out = []
        for account_id in ids:
            rows = found[account_id]
            out.append(
                conformance_pb2.AccountState(
                    account_id=account_id,
                    exists=rows is not None,
                    bindings=[
                        conformance_pb2.BindingState(
                            number=b.number,
                            kind=binding_pb2.BindingKind.ValueType(
                                _KIND_VALUES.get(b.kind, binding_pb2.BINDING_KIND_ACCOUNT_LOGIN)
                            ),
                            bound_at=to_timestamp(b.bound_at),
                            released=b.released_at is not None,
                            stale=b.stale,
                        )
                        for b in rows or []
                    ],
                )
            )
        return conformance_pb2.ReadAccountsResponse(accounts=out)

    async def CheckSmsLogin(
        self,
        request: conformance_pb2.CheckSmsLoginRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.CheckSmsLoginResponse:
        number = normalize_number(request.number)
        opens = await self._store.run(self._store.login_by_sms, number, request.account_id)
        return conformance_pb2.CheckSmsLoginResponse(opens=opens)

    async def ListAppliedEvents(
        self,
        request: conformance_pb2.ListAppliedEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ListAppliedEventsResponse:
        ids = await self._store.run(self._store.applied_event_ids)
        return conformance_pb2.ListAppliedEventsResponse(event_ids=ids)

    async def RefreshTrustBundle(
        self,
        request: conformance_pb2.RefreshTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.RefreshTrustBundleResponse:
        try:
            await self._trust.refresh(wait_for_ready=True)
            status = ok_status()
        except NumfedError as err:
            status = error_status(err)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable("GATEWAY_UNAVAILABLE", f"no trust bundle: {exc.code().name}") from exc
        bundle = self._trust.state.bundle
        return conformance_pb2.RefreshTrustBundleResponse(
            status=status, bundle_version=bundle.version if bundle is not None else 0
        )

    async def ResetTrust(
        self,
        request: conformance_pb2.ResetTrustRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ResetTrustResponse:
        await self._trust.reset()
        return conformance_pb2.ResetTrustResponse(state=trust_state(self._trust.state))

    async def GetTrustState(
        self,
        request: conformance_pb2.GetTrustStateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.GetTrustStateResponse:
        return conformance_pb2.GetTrustStateResponse(state=trust_state(self._trust.state))

    async def ReloadTrust(
        self,
        request: conformance_pb2.ReloadTrustRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.ReloadTrustResponse:
        await self._trust.reload()
        return conformance_pb2.ReloadTrustResponse(state=trust_state(self._trust.state))

    def check_answer(
        self,
        answer: claim_pb2.Envelope,
        trust: TrustedState,
        number: str,
        specified_date: date,
        now: datetime,
    ) -> VerifiedRecycledClaim:
        """Judge the gateway's answer to the platform's question as the platform does before it
        acts on one (rule PLAT-REC-1). Blocking: one read of the store."""
        return check_recycled_answer(
            answer,
            trust=trust,
            store=self._store,
            platform_id=self._platform_id,
            number=number,
            specified_date=specified_date,
            now=now,
        )

    async def AskRecycledCheck(
        self,
        request: conformance_pb2.AskRecycledCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> conformance_pb2.AskRecycledCheckResponse:
        number = normalize_number(request.number)
        day = from_date(request.specified_date)
        try:
            got = await self._trust.gateway.CheckRecycled(
                gateway_pb2.CheckRecycledRequest(number=number, specified_date=to_date(day)),
                timeout=ASK_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                "GATEWAY_UNAVAILABLE", f"no answer from the gateway: {exc.code().name}"
            ) from exc

        async def judge() -> conformance_pb2.AskRecycledCheckResponse:
            trust = self._trust.trusted()
            verified = await self._store.run(
                self.check_answer, got.answer, trust, number, day, datetime.now(UTC)
            )
            return conformance_pb2.AskRecycledCheckResponse(
                status=ok_status(), changed=verified.claim.changed
            )

        try:
            try:
                return await judge()
            except NumfedError as err:
                if not may_be_stale(err):
                    raise
                await self._trust.refresh_if_behind()  # refresh before refusing (PLAT-TRUST-18)
                return await judge()
        except NumfedError as err:
            if isinstance(err, Unavailable):
                raise
            return conformance_pb2.AskRecycledCheckResponse(status=error_status(err))


def trust_state(state: TrustedState) -> conformance_pb2.TrustState:
    """The versions held and the SHA-256 of each held envelope's signed payload."""
    bundle = state.bundle_envelope
    return conformance_pb2.TrustState(
        root_version=state.root.version,
        bundle_version=state.bundle.version if state.bundle is not None else 0,
        root_digest=hashlib.sha256(state.root_envelope.payload).digest(),
        bundle_digest=hashlib.sha256(bundle.payload).digest() if bundle is not None else b"",
    )
