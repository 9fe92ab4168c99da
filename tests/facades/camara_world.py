"""What the CAMARA tests call the facade with: a federation in its own thread, and HTTPS clients
holding the credentials CAMARA's scenarios speak of, mapped onto numfed's certificates.

=========================================  ================================================
CAMARA's credential                        numfed's
=========================================  ================================================
a valid (two-legged) access token          a member platform's certificate (weibo)
an expired access token                    a member's certificate on the CA's revocation list
                                           (taobao): an expired certificate ends at the TLS
                                           handshake, so revocation is the credential that
                                           lapses and still gets an answer
an access token invalid for other reasons  a certificate of the federation's CA that names
                                           no single identity (two SPIFFE ids)
no Authorization header                    no client certificate
an access token without the scope          a member's certificate whose role may not ask
                                           (the carrier cmcc)
=========================================  ================================================
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from numfed import pki
from numfed.identity import PeerId, Role
from tests.facades.fedthread import FederationThread

__all__ = ["CHECK", "Credentials", "World"]

CHECK = "/number-recycling/v0.2/check"
WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")
CMCC = PeerId(Role.CARRIER, "cmcc")


@dataclass(frozen=True)
class Credentials:
    """A client certificate and key (PEM files), or none."""

    cert: Path | None = None
    key: Path | None = None


def _two_identities(pki_dir: Path, into: Path) -> Credentials:
    """A certificate the federation's CA issued that names two SPIFFE ids (so none)."""
    ca = pki.CertificateAuthority.load(pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "two")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(WEIBO.uri),
                    x509.UniformResourceIdentifier(TAOBAO.uri),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    into.mkdir(parents=True, exist_ok=True)
    (into / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (into / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Credentials(into / "cert.pem", into / "key.pem")


async def _reread_revocations(thread: FederationThread) -> None:
    thread.fed.gateway.revocations.refresh()  # at once, as on SIGHUP


@dataclass
class World:
    """The federation and the credentials of each kind."""

    thread: FederationThread
    root: Path
    credentials: dict[str, Credentials] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path, **kw: Any) -> World:
        thread = FederationThread(root / "fed", facades=True, platforms=("weibo", "taobao"), **kw)
        world = cls(thread, root)
        layout = pki.PkiLayout(world.pki_dir)

        def of(peer: PeerId) -> Credentials:
            return Credentials(layout.cert_path(peer), layout.key_path(peer))

        pki.revoke(world.pki_dir, TAOBAO)  # its certificate lapses before its expiry
        world.thread.run(_reread_revocations(thread))
        world.credentials = {
            "valid": of(WEIBO),
            "revoked": of(TAOBAO),
            "two identities": _two_identities(world.pki_dir, root / "two"),
            "none": Credentials(),
            "carrier": of(CMCC),
        }
        return world

    @property
    def pki_dir(self) -> Path:
        return self.thread.fed.layout.pki_dir

    @property
    def base(self) -> str:
        return "https://" + self.thread.fed.layout.facade_endpoints[0]

    def client(self, credentials: str) -> httpx.Client:
        """A blocking HTTPS client presenting ``credentials`` (a key of ``self.credentials``)."""
        ctx = ssl.create_default_context(cafile=str(pki.PkiLayout(self.pki_dir).ca_path))
        held = self.credentials[credentials]
        if held.cert is not None and held.key is not None:
            ctx.load_cert_chain(str(held.cert), str(held.key))
        return httpx.Client(verify=ctx, timeout=30)

    def stop(self) -> None:
        self.thread.stop()
