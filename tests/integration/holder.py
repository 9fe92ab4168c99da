"""The holder's side of the journey, through a carrier's HolderService, for tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.longrunning import operations_pb2

from numfed.scenario import Holder
from numfed.v1 import gateway_pb2, holder_pb2, holder_pb2_grpc

PRIOR = holder_pb2.BINDING_SCOPE_PRIOR
OWN = holder_pb2.BINDING_SCOPE_OWN


def sms_code(state_dir: Path, number: str) -> str:
    lines = (state_dir / "sms-outbox.jsonl").read_text(encoding="utf-8").splitlines()
    return str([json.loads(x) for x in lines if json.loads(x)["number"] == number][-1]["code"])


@dataclass
class HolderApp:
    stub: holder_pb2_grpc.HolderServiceAsyncStub
    token: str = ""

    @classmethod
    async def verified(
        cls, channel: grpc.aio.Channel, state_dir: Path, number: str, holder: Holder
    ) -> HolderApp:
        app = cls(holder_pb2_grpc.HolderServiceStub(channel))
        start = await app.stub.StartVerification(
            holder_pb2.StartVerificationRequest(
                number=number, name=holder.name, id_number=holder.id_number
            ),
            timeout=5,
        )
        session = await app.stub.ConfirmVerification(
            holder_pb2.ConfirmVerificationRequest(
                verification_id=start.verification_id, code=sms_code(state_dir, number)
            ),
            timeout=5,
        )
        app.token = session.session_token
        return app

    async def query(
        self, scope: holder_pb2.BindingScope.ValueType
    ) -> list[gateway_pb2.PlatformResult]:
        answer = await self.stub.QueryHolderBindings(
            holder_pb2.QueryHolderBindingsRequest(session_token=self.token, scope=scope),
            timeout=10,
        )
        return list(answer.results)

    async def release(
        self,
        scope: holder_pb2.BindingScope.ValueType = PRIOR,
        refs: tuple[str, ...] = (),
        request_id: str | None = None,
    ) -> operations_pb2.Operation:
        op: operations_pb2.Operation = await self.stub.ReleaseHolderBindings(
            holder_pb2.ReleaseHolderBindingsRequest(
                session_token=self.token,
                scope=scope,
                binding_refs=refs,
                request_id=request_id or uuid.uuid4().hex,
            ),
            timeout=10,
        )
        return op

    async def watch(self, name: str, timeout: float = 30) -> list[operations_pb2.Operation]:
        seen = []
        call = self.stub.WatchHolderRelease(
            holder_pb2.WatchHolderReleaseRequest(session_token=self.token, name=name),
            timeout=timeout,
        )
        async for op in call:
            seen.append(op)
        return seen


def counts(results: list[gateway_pb2.PlatformResult]) -> dict[str, int]:
    return {r.platform_id: sum(b.count for b in r.bindings) for r in results if r.bindings}


def response(op: operations_pb2.Operation) -> gateway_pb2.ReleaseResponse:
    out = gateway_pb2.ReleaseResponse()
    op.response.Unpack(out)
    return out


def metadata(op: operations_pb2.Operation) -> gateway_pb2.ReleaseMetadata:
    out = gateway_pb2.ReleaseMetadata()
    op.metadata.Unpack(out)
    return out
