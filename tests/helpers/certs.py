"""Certificates for peers the federation does not expect: issued by its own CA, or another one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from numfed import pki
from numfed.identity import PeerId

__all__ = ["crl_signed_by", "issue_member"]


def issue_member(pki_dir: Path, peer: PeerId, into: Path) -> Path:
    """A PKI directory ``into`` holding the federation's CA certificate and a certificate for
    ``peer`` that the federation's CA issued (as for a removed member, or a stranger)."""
    ca = pki.CertificateAuthority.load(pki_dir)
    now = datetime.now(UTC)
    cert, key = pki.issue_cert(
        ca, peer, not_before=now - timedelta(minutes=1), not_after=now + timedelta(days=1)
    )
    layout = pki.PkiLayout(into)
    layout.member_dir(peer).mkdir(parents=True, exist_ok=True)
    layout.ca_path.write_bytes(ca.pem)
    layout.cert_path(peer).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    layout.key_path(peer).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return into


def crl_signed_by(ca: pki.CertificateAuthority, serials: list[int], number: int) -> bytes:
    """A PEM revocation list naming ``serials``, signed by ``ca`` (any CA: the test's choice)."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
