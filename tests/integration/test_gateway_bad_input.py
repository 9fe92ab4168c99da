"""Bad input to the gateway: each refused with its code and ErrorInfo reason, nothing changed.

A real gateway on port 0 with mTLS and its SQLite file; callers use the federation's own
certificates and carrier signing keys. The platforms are not running: nothing here may reach
them, and the tests check that the gateway's database did not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from gateway.schema import release_jobs, release_tasks
from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.envelope import SigningKey
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.rpc import rpc_error_info
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

CMCC_NUMBER = "+8613812345678"
CUCC_NUMBER = "+8618611112222"
X = datetime(2022, 7, 1, 9, tzinfo=UTC)


@dataclass
class Fed:
    layout: FederationLayout
    gateway: Gateway

    def channel(self, peer: PeerId) -> grpc.aio.Channel:
        return pki.secure_channel(
            self.layout.gateway_endpoint.replace(
                self.layout.gateway_endpoint.rsplit(":", 1)[1], str(self.gateway.port)
            ),
            self.layout.pki_dir,
            peer,
        )

    def db_digest(self) -> str:
        """Jobs and which tasks exist (the dispatcher may retry a task's attempt meanwhile)."""
        h = hashlib.sha256()
        with self.gateway.store.engine.connect() as c:
            for row in c.execute(sa.select(release_jobs).order_by(release_jobs.c.job_id)).all():
                h.update(repr(tuple(row)).encode())
            keys = sa.select(release_tasks.c.job_id, release_tasks.c.platform_id).order_by(
                release_tasks.c.job_id, release_tasks.c.platform_id
            )
            for row in c.execute(keys).all():
                h.update(repr(tuple(row)).encode())
        return h.hexdigest()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> FederationLayout:
    root = tmp_path_factory.mktemp("fed")
    return create_federation(root)


@pytest.fixture
async def fed(layout: FederationLayout) -> AsyncIterator[Fed]:
    config = load_gateway_config(layout.gateway_config)
    gw = await Gateway.start(config)
    try:
        yield Fed(layout, gw)
    finally:
        await gw.stop(0)


def claim(
    fed: Fed,
    *,
    number: str = CMCC_NUMBER,
    carrier: str = "cmcc",
    signer: str = "cmcc",
    purpose: Purpose = Purpose.QUERY_PRIOR,
    now: datetime | None = None,
    lifetime: timedelta = timedelta(minutes=5),
) -> claim_pb2.Envelope:
    c = TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=X,
        purpose=purpose,
        now=now or datetime.now(UTC),
        lifetime=lifetime,
    )
    return sign_claim(c, pki.load_carrier_signer(fed.layout.pki_dir, signer)).to_proto()


async def refused(
    fed: Fed, peer: PeerId, method: str, request: object
) -> tuple[grpc.StatusCode, str | None]:
    before = fed.db_digest()
    async with fed.channel(peer) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await getattr(stub, method)(request, timeout=5)
    assert fed.db_digest() == before, "a refused request changed the gateway's database"
    info = rpc_error_info(e.value)
    return e.value.code(), info.reason if info else None


CMCC = PeerId(Role.CARRIER, "cmcc")


def release(
    envelope: claim_pb2.Envelope, request_id: str = "r1", **kw: object
) -> gateway_pb2.ReleaseBindingsRequest:
    return gateway_pb2.ReleaseBindingsRequest(request_id=request_id, claim=envelope, **kw)  # type: ignore[arg-type]


async def test_malformed_number(fed: Fed) -> None:
    good = TenureClaim.new(
        number=CMCC_NUMBER,
        carrier_id="cmcc",
        tenure_start=X,
        purpose=Purpose.RELEASE_PRIOR,
        now=datetime.now(UTC),
    )
    pb = good.to_proto()
    pb.number = "13812345678"  # not E.164
    key = pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")
    from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE
    from numfed.envelope import sign

    signed = sign(TENURE_CLAIM_PAYLOAD_TYPE, pb.SerializeToString(), [key]).to_proto()
    assert await refused(fed, CMCC, "ReleaseBindings", release(signed)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_NUMBER",
    )


async def test_unknown_carrier(fed: Fed, tmp_path: Path) -> None:
    # A certificate from the federation CA for a carrier the gateway does not know.
    other = tmp_path / "pki"
    pki.init_pki(other, carriers=("zzcc",), platforms=())
    ca = pki.CertificateAuthority.load(fed.layout.pki_dir)
    peer = PeerId(Role.CARRIER, "zzcc")
    now = datetime.now(UTC)
    cert, key = pki.issue_cert(
        ca, peer, not_before=now - timedelta(minutes=1), not_after=now + timedelta(days=1)
    )
    from cryptography.hazmat.primitives import serialization

    layout = pki.PkiLayout(other)
    layout.cert_path(peer).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    layout.key_path(peer).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    layout.ca_path.write_bytes(pki.PkiLayout(fed.layout.pki_dir).ca_path.read_bytes())
    before = fed.db_digest()
    async with pki.secure_channel(f"127.0.0.1:{fed.gateway.port}", other, peer) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ReleaseBindings(
                release(claim(fed, purpose=Purpose.RELEASE_PRIOR)), timeout=5
            )
    assert fed.db_digest() == before
    info = rpc_error_info(e.value)
    assert (e.value.code(), info.reason if info else None) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "UNKNOWN_MEMBER",
    )


async def test_carrier_attesting_a_number_it_does_not_serve(fed: Fed) -> None:
    env = claim(fed, number=CUCC_NUMBER, purpose=Purpose.RELEASE_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NUMBER_NOT_SERVED",
    )


async def test_claim_signed_by_another_carriers_key(fed: Fed) -> None:
    env = claim(fed, carrier="cmcc", signer="cucc", purpose=Purpose.RELEASE_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CARRIER_KEY_MISMATCH",
    )


async def test_claim_of_another_carrier_presented_by_this_one(fed: Fed) -> None:
    env = claim(fed, number=CUCC_NUMBER, carrier="cucc", signer="cucc", purpose=Purpose.QUERY_PRIOR)
    assert await refused(
        fed, CMCC, "QueryBindings", gateway_pb2.QueryBindingsRequest(claim=env)
    ) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_NOT_SIGNER",
    )


async def test_forged_claim(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    env.signatures[0].sig = SigningKey.generate().sign_raw(b"anything")
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_SIGNATURE",
    )


async def test_expired_claim(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR, now=datetime.now(UTC) - timedelta(hours=1))
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CLAIM_EXPIRED",
    )


async def test_wrong_purpose(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.QUERY_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "WRONG_PURPOSE",
    )


async def test_unknown_platform(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    req = release(env, platform_ids=["weibo", "myspace"])
    assert await refused(fed, CMCC, "ReleaseBindings", req) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_PLATFORM",
    )


async def test_platform_calling_a_carrier_only_rpc(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    assert await refused(fed, PeerId(Role.PLATFORM, "weibo"), "ReleaseBindings", release(env)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


async def test_oversized_message(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    env.payload = env.payload + b"\x00" * (5 * 1024 * 1024)
    code, _ = await refused(fed, CMCC, "ReleaseBindings", release(env))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_oversized_envelope_within_message_limit(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    env.signatures.append(claim_pb2.Signature(keyid="x", sig=b"\x00" * 70_000))
    assert await refused(fed, CMCC, "ReleaseBindings", release(env)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ENVELOPE_TOO_LARGE",
    )


async def test_no_client_cert_and_foreign_ca(fed: Fed, tmp_path: Path) -> None:
    ca = pki.PkiLayout(fed.layout.pki_dir).ca_path.read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{fed.gateway.port}", creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(), timeout=5
            )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    foreign = tmp_path / "foreign"
    pki.init_pki(foreign, carriers=("cmcc",), platforms=())
    foreign_creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki.PkiLayout(foreign).key_path(CMCC).read_bytes(),
        certificate_chain=pki.PkiLayout(foreign).cert_path(CMCC).read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{fed.gateway.port}", foreign_creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(), timeout=5
            )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_duplicate_request_id_with_a_different_body(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    async with fed.channel(CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        op = await stub.ReleaseBindings(release(env, request_id="dup"), timeout=5)
        again = await stub.ReleaseBindings(release(env, request_id="dup"), timeout=5)
        assert again.name == op.name  # same body: same operation (AIP-155)
    other = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    assert await refused(fed, CMCC, "ReleaseBindings", release(other, request_id="dup")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )


async def test_operation_of_another_carrier_is_not_found(fed: Fed) -> None:
    env = claim(fed, purpose=Purpose.RELEASE_PRIOR)
    async with fed.channel(CMCC) as ch:
        op = await gateway_pb2_grpc.GatewayServiceStub(ch).ReleaseBindings(
            release(env, request_id="mine"), timeout=5
        )
    cucc = PeerId(Role.CARRIER, "cucc")
    req = gateway_pb2.GetOperationRequest(name=op.name)
    assert await refused(fed, cucc, "GetOperation", req) == (
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
    )
    bad = gateway_pb2.GetOperationRequest(name="operations/../../etc")
    assert await refused(fed, CMCC, "GetOperation", bad) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_OPERATION_NAME",
    )


async def test_trust_bundle_served_to_any_member(fed: Fed) -> None:
    async with fed.channel(PeerId(Role.PLATFORM, "weibo")) as ch:
        resp = await gateway_pb2_grpc.GatewayServiceStub(ch).GetTrustBundle(
            gateway_pb2.GetTrustBundleRequest(), timeout=5
        )
    assert len(resp.roots) == 1 and resp.bundle.payload_type.endswith("trust-bundle+proto")
