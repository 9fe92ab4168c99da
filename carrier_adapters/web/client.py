"""The page's way into the carrier: the HolderService, over the loopback holder channel.

The page is a front end like the carrier's app: it holds no rule of its own about holders,
claims or releases, and asks the same HolderService every other front end asks. A refusal comes
back as the domain exception it was (code, reason, metadata, RetryInfo), for the page to put
into words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import grpc
from google.longrunning import operations_pb2

from carrier_adapters.verification import SESSION_TTL
from numfed.rpc import error_from_rpc
from numfed.v1 import claim_pb2, gateway_pb2, holder_pb2, holder_pb2_grpc

__all__ = ["HolderClient"]

T = TypeVar("T")
SHORT = 5.0
"""Seconds for a call that stays in the carrier (verification, preview, proof)."""
LONG = 15.0
"""Seconds for a call that goes out to the federation (query, release)."""


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc


class HolderClient:
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = holder_pb2_grpc.HolderServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def start(
        self, number: str, name: str, id_number: str
    ) -> holder_pb2.StartVerificationResponse:
        return await _call(
            self.stub.StartVerification(
                holder_pb2.StartVerificationRequest(number=number, name=name, id_number=id_number),
                timeout=SHORT,
            )
        )

    async def confirm(
        self, verification_id: str, code: str
    ) -> holder_pb2.ConfirmVerificationResponse:
        return await _call(
            self.stub.ConfirmVerification(
                holder_pb2.ConfirmVerificationRequest(verification_id=verification_id, code=code),
                timeout=SHORT,
            )
        )

    async def preview(
        self, token: str, purpose: claim_pb2.Purpose.ValueType
    ) -> claim_pb2.TenureClaim:
        answer = await _call(
            self.stub.PreviewHolderClaim(
                holder_pb2.PreviewHolderClaimRequest(session_token=token, purpose=purpose),
                timeout=SHORT,
            )
        )
        return answer.claim

    async def query(
        self,
        token: str,
        scope: holder_pb2.BindingScope.ValueType,
        platform_ids: Sequence[str] = (),
    ) -> list[gateway_pb2.PlatformResult]:
        answer = await _call(
            self.stub.QueryHolderBindings(
                holder_pb2.QueryHolderBindingsRequest(
                    session_token=token, scope=scope, platform_ids=platform_ids
                ),
                timeout=LONG,
            )
        )
        return list(answer.results)

    async def release(
        self,
        token: str,
        scope: holder_pb2.BindingScope.ValueType,
        request_id: str,
        *,
        refs: Sequence[str] = (),
        platform_ids: Sequence[str] = (),
    ) -> operations_pb2.Operation:
        return await _call(
            self.stub.ReleaseHolderBindings(
                holder_pb2.ReleaseHolderBindingsRequest(
                    session_token=token,
                    scope=scope,
                    binding_refs=refs,
                    platform_ids=platform_ids,
                    request_id=request_id,
                ),
                timeout=LONG,
            )
        )

    async def watch(self, token: str, name: str) -> AsyncIterator[operations_pb2.Operation]:
        """Every state of the release until it is done (the first one at once)."""
        call = self.stub.WatchHolderRelease(
            holder_pb2.WatchHolderReleaseRequest(session_token=token, name=name),
            timeout=SESSION_TTL.total_seconds(),
        )
        try:
            async for op in call:
                yield op
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def proof(self, token: str) -> holder_pb2.IssueHolderProofResponse:
        return await _call(
            self.stub.IssueHolderProof(
                holder_pb2.IssueHolderProofRequest(session_token=token), timeout=SHORT
            )
        )
