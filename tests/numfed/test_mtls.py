"""mTLS with real grpc.aio servers on port 0: who gets in, and who the server says they are.

Refused handshakes surface at the client as UNAVAILABLE (grpc reports every connection
failure so), and the handler is never reached; a certificate that passes TLS but names no
numfed identity reaches the handler and is refused there with UNAUTHENTICATED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from numfed import pki
from numfed.errors import Unauthenticated
from numfed.identity import PeerId, Role

GATEWAY = PeerId(Role.GATEWAY, "main")
WEIBO = PeerId(Role.PLATFORM, "weibo")
CMCC = PeerId(Role.CARRIER, "cmcc")
WHOAMI = "/numfed.test.WhoAmI/WhoAmI"
TIMEOUT = 5.0


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiLayout:
    return pki.init_pki(
        tmp_path_factory.mktemp("mtls") / "pki", carriers=("cmcc",), platforms=("weibo",)
    )


@pytest.fixture(scope="session")
def other_layout(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiLayout:
    """A second federation with the same member names but its own CA."""
    return pki.init_pki(
        tmp_path_factory.mktemp("mtls-other") / "pki", carriers=("cmcc",), platforms=("weibo",)
    )


@dataclass
class Server:
    port: int
    calls: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def server(layout: pki.PkiLayout) -> AsyncIterator[Server]:
    """The gateway's mTLS server: WhoAmI returns the caller's SPIFFE id, plus health."""
    srv = grpc.aio.server()
    state = Server(port=0)

    async def whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            peer = pki.peer_identity(context)
        except Unauthenticated as err:
            state.calls.append(err.reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, err.reason)
        state.calls.append(peer.uri)
        return peer.uri.encode()

    srv.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "numfed.test.WhoAmI", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), srv)
    state.port = srv.add_secure_port("127.0.0.1:0", pki.server_credentials(layout, GATEWAY))
    assert state.port > 0
    await srv.start()
    try:
        yield state
    finally:
        await srv.stop(None)


async def whoami(channel: grpc.aio.Channel) -> str:
    async with channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(WHOAMI)
        reply = await call(b"", timeout=TIMEOUT)
        return reply.decode()


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(channel)
    return info.value


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def channel_with(
    layout: pki.PkiLayout, target: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=layout.ca_path.read_bytes(),
        private_key=pem_key(key),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    return grpc.aio.secure_channel(target, creds)


def cert_with_sans(
    ca: pki.CertificateAuthority, sans: list[x509.GeneralName]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A valid client certificate from the real CA with whatever SANs a test wants."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


@pytest.mark.parametrize("peer", [WEIBO, CMCC, GATEWAY], ids=str)
async def test_a_good_cert_is_read_as_its_spiffe_id(
    layout: pki.PkiLayout, server: Server, peer: PeerId
) -> None:
    got = await whoami(pki.secure_channel(server.target, layout, peer))
    assert got == peer.uri
    assert server.calls == [peer.uri]


async def test_weibo_is_exactly_weibo(layout: pki.PkiLayout, server: Server) -> None:
    channel = grpc.aio.secure_channel(server.target, pki.channel_credentials(layout, WEIBO))
    assert await whoami(channel) == "spiffe://numfed/platform/weibo"


async def test_localhost_works_too(layout: pki.PkiLayout, server: Server) -> None:
    target = f"localhost:{server.port}"
    assert await whoami(pki.secure_channel(target, layout, WEIBO)) == WEIBO.uri


async def test_health_over_mtls(layout: pki.PkiLayout, server: Server) -> None:
    async with pki.secure_channel(server.target, layout, WEIBO) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_without_a_cert_is_refused(layout: pki.PkiLayout, server: Server) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=layout.ca_path.read_bytes())
    err = await refused(grpc.aio.secure_channel(server.target, creds))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


async def test_a_plaintext_client_is_refused(server: Server) -> None:
    err = await refused(grpc.aio.insecure_channel(server.target))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


async def test_a_cert_from_another_ca_is_refused(
    layout: pki.PkiLayout, other_layout: pki.PkiLayout, server: Server
) -> None:
    # Same SPIFFE id, right trust anchor for the server — but the client cert is not ours.
    creds = grpc.ssl_channel_credentials(
        root_certificates=layout.ca_path.read_bytes(),
        private_key=other_layout.key_path(WEIBO).read_bytes(),
        certificate_chain=other_layout.cert_path(WEIBO).read_bytes(),
    )
    err = await refused(grpc.aio.secure_channel(server.target, creds))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


@pytest.mark.parametrize(
    ("start", "end", "admitted"),
    [
        (timedelta(days=-10), timedelta(days=-1), False),  # expired
        (timedelta(seconds=-60), timedelta(seconds=-1), False),  # expired a second ago
        (timedelta(days=1), timedelta(days=10), False),  # not yet valid
        (timedelta(days=-10), timedelta(days=1), True),  # control: same recipe, valid now
    ],
    ids=["expired", "just-expired", "not-yet-valid", "valid"],
)
async def test_a_cert_outside_its_validity_is_refused(
    layout: pki.PkiLayout, server: Server, start: timedelta, end: timedelta, admitted: bool
) -> None:
    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.load(layout)
    cert, key = pki.issue_cert(ca, WEIBO, not_before=now + start, not_after=now + end)
    channel = channel_with(layout, server.target, cert, key)
    if admitted:
        assert await whoami(channel) == WEIBO.uri
        return
    err = await refused(channel)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


@pytest.mark.parametrize(
    ("sans", "reason"),
    [
        ([x509.UniformResourceIdentifier("spiffe://other/platform/weibo")], "BAD_PEER_IDENTITY"),
        ([x509.UniformResourceIdentifier("spiffe://numfed/admin/root")], "BAD_PEER_IDENTITY"),
        (
            [
                x509.UniformResourceIdentifier(WEIBO.uri),
                x509.UniformResourceIdentifier(CMCC.uri),
            ],
            "BAD_PEER_IDENTITY",
        ),
        ([x509.DNSName("weibo.platform.numfed")], "BAD_PEER_IDENTITY"),
        ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], "BAD_PEER_IDENTITY"),
    ],
    ids=["foreign-trust-domain", "unknown-role", "two-uris", "dns-only", "ip-only"],
)
async def test_a_ca_signed_cert_without_one_numfed_id_is_unauthenticated(
    layout: pki.PkiLayout, server: Server, sans: list[x509.GeneralName], reason: str
) -> None:
    cert, key = cert_with_sans(pki.CertificateAuthority.load(layout), sans)
    err = await refused(channel_with(layout, server.target, cert, key))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == reason
    assert server.calls == [reason]


async def test_a_client_can_pin_the_server_it_expects(
    layout: pki.PkiLayout, server: Server
) -> None:
    assert await whoami(pki.secure_channel(server.target, layout, WEIBO, server=GATEWAY)) == (
        WEIBO.uri
    )
    # The server is the gateway; a client that expects weibo refuses it during the handshake.
    err = await refused(pki.secure_channel(server.target, layout, CMCC, server=WEIBO))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == [WEIBO.uri]


async def test_a_client_refuses_a_server_from_another_ca(
    other_layout: pki.PkiLayout, server: Server
) -> None:
    err = await refused(pki.secure_channel(server.target, other_layout, WEIBO))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


class FakeContext:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"transport_security_type": [b"insecure"]},
        {"x509_pem_cert": []},
    ],
    ids=["empty", "insecure", "no-cert"],
)
def test_no_certificate_means_no_peer_identity(auth: dict[str, list[bytes]]) -> None:
    context = cast(Any, FakeContext(auth))
    with pytest.raises(Unauthenticated) as info:
        pki.peer_identity(context)
    assert info.value.reason == "NO_PEER_IDENTITY"


def test_peer_identity_reads_the_pem_cert(layout: pki.PkiLayout) -> None:
    context = cast(Any, FakeContext({"x509_pem_cert": [layout.cert_path(CMCC).read_bytes()]}))
    assert pki.peer_identity(context) == CMCC
