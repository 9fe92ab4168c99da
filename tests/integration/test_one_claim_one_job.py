"""One release claim makes at most one job, however it is sent, on SQLite and PostgreSQL.

Real gateways on port 0 with mTLS (two replicas on one PostgreSQL database, one on SQLite);
the platforms are not running, so the jobs stay as they were made.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import audit_log, release_jobs
from gateway.server import Gateway
from numfed import pki
from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE, Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.envelope import sign
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

CMCC_NUMBER = "+8613812345678"
CUCC_NUMBER = "+8618611112222"
X = datetime(2022, 7, 1, 9, tzinfo=UTC)
CMCC = PeerId(Role.CARRIER, "cmcc")
CUCC = PeerId(Role.CARRIER, "cucc")


@dataclasses.dataclass
class Replicas:
    layout: FederationLayout
    gateways: list[Gateway]

    def channel(self, peer: PeerId, replica: int = 0) -> grpc.aio.Channel:
        port = self.gateways[replica % len(self.gateways)].port
        return pki.secure_channel(f"127.0.0.1:{port}", self.layout.pki_dir, peer)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job_id, carrier_id, request_id) of every job."""
        j = release_jobs
        with self.gateways[0].store.engine.connect() as c:
            rows = c.execute(
                sa.select(j.c.job_id, j.c.carrier_id, j.c.request_id).order_by(j.c.job_id)
            )
            return [(r.job_id, r.carrier_id, r.request_id) for r in rows]


@pytest.fixture(name="r")
async def replicas(tmp_path: Path, db_url: str) -> AsyncIterator[Replicas]:
    count = 2 if db_url.startswith("postgresql") else 1
    layout = create_federation(tmp_path / "fed", database_url=db_url, replicas=count)
    gateways: list[Gateway] = []
    try:
        for cfg in layout.replica_configs:
            config = dataclasses.replace(load_gateway_config(cfg), listen="127.0.0.1:0")
            gateways.append(await Gateway.start(config))
        yield Replicas(layout, gateways)
    finally:
        for gw in gateways:
            await gw.stop(0)


def release_claim(
    layout: FederationLayout, carrier: str = "cmcc", number: str = CMCC_NUMBER
) -> claim_pb2.Envelope:
    c = TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=X,
        purpose=Purpose.RELEASE_PRIOR,
        now=datetime.now(UTC),
    )
    return sign_claim(c, pki.load_carrier_signer(layout.pki_dir, carrier)).to_proto()


def request(env: claim_pb2.Envelope, request_id: str) -> gateway_pb2.ReleaseBindingsRequest:
    return gateway_pb2.ReleaseBindingsRequest(request_id=request_id, claim=env)


async def send(
    r: Replicas, req: gateway_pb2.ReleaseBindingsRequest, peer: PeerId = CMCC, replica: int = 0
) -> str | tuple[grpc.StatusCode, str, dict[str, str]]:
    """The operation's name, or (code, reason, metadata) of the refusal."""
    async with r.channel(peer, replica) as ch:
        try:
            op = await gateway_pb2_grpc.GatewayServiceStub(ch).ReleaseBindings(req, timeout=10)
        except grpc.aio.AioRpcError as exc:
            info = rpc_error_info(exc)
            assert info is not None
            return exc.code(), info.reason, dict(info.metadata)
    return str(op.name)


async def test_a_used_claim_under_a_new_request_id_makes_no_second_job(r: Replicas) -> None:
    env = release_claim(r.layout)
    first = await send(r, request(env, "first"))
    assert isinstance(first, str)
    before = r.jobs()
    again = await send(r, request(env, "second"), replica=1)
    assert again == (
        grpc.StatusCode.ALREADY_EXISTS,
        "CLAIM_ALREADY_USED",
        {"operation": first},  # the caller's own job
    )
    assert r.jobs() == before and len(before) == 1
    # A retry of the accepted request still gets its operation (AIP-155), on any replica.
    assert await send(r, request(env, "first"), replica=1) == first
    assert await send(r, request(env, "second")) == again  # and the refusal stays a refusal
    await r.gateways[0].audit.flush()
    with r.gateways[0].store.engine.connect() as c:
        outcomes = list(
            c.execute(
                sa.select(audit_log.c.outcome).where(audit_log.c.event == "RELEASE_JOB")
            ).scalars()
        )
    assert "CLAIM_ALREADY_USED" in outcomes
    # cucc cannot present cmcc's claim at all ...
    refused = await send(r, request(env, "third"), peer=CUCC)
    assert not isinstance(refused, str) and refused[1] == "CALLER_NOT_SIGNER"
    # ... and its own claim reusing cmcc's claim id (and request id) is a job of its own.
    theirs = claim_pb2.TenureClaim.FromString(release_claim(r.layout, "cucc", CUCC_NUMBER).payload)
    theirs.claim_id = claim_pb2.TenureClaim.FromString(env.payload).claim_id
    signed = sign(
        TENURE_CLAIM_PAYLOAD_TYPE,
        theirs.SerializeToString(),
        [pki.load_carrier_signer(r.layout.pki_dir, "cucc")],
    ).to_proto()
    other = await send(r, request(signed, "first"), peer=CUCC, replica=1)
    assert isinstance(other, str) and other != first
    assert sorted(c for _j, c, _r in r.jobs()) == ["cmcc", "cucc"]


async def test_one_claim_sent_at_once_under_many_request_ids_makes_one_job(r: Replicas) -> None:
    used = release_claim(r.layout)
    fresh = [release_claim(r.layout) for _ in range(12)]
    # The duplicates and a dozen unrelated releases arrive together: they share group commits
    # (and, on PostgreSQL, race across two replicas); a conflict costs only its own entry.
    calls = [send(r, request(used, f"dup-{i}"), replica=i) for i in range(12)]
    calls += [send(r, request(env, f"fresh-{i}"), replica=i) for i, env in enumerate(fresh)]
    answers = await asyncio.gather(*calls)
    dup, other = answers[:12], answers[12:]
    names = [a for a in dup if isinstance(a, str)]
    assert len(names) == 1, dup
    refusals = [a for a in dup if not isinstance(a, str)]
    assert all(
        a == (grpc.StatusCode.ALREADY_EXISTS, "CLAIM_ALREADY_USED", {"operation": names[0]})
        for a in refusals
    ), refusals
    assert all(isinstance(a, str) for a in other), other
    assert len(r.jobs()) == 13
