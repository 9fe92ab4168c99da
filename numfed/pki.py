"""The federation's keys and certificates, and the gRPC mTLS helpers that use them.

``init_pki`` writes one directory holding everything a loopback federation needs::

    DIR/ca.pem, DIR/ca.key.pem             federation CA (ECDSA P-256), issues TLS certs
    DIR/<role>/<id>/cert.pem, key.pem      one TLS server+client certificate per member
    DIR/root/root-<n>.key.pem              federation root keys (Ed25519) that sign trust files
    DIR/carrier/<id>/signing.key.pem       each carrier's claim-signing key (Ed25519)
    DIR/gateway/<id>/audit.key.pem         the gateway's audit key (Ed25519), signs checkpoints
    DIR/ca-crl.pem                         the CA's revocation list, once a certificate is revoked

Each TLS certificate names its member by one URI SAN, ``spiffe://numfed/<role>/<id>``, and can
serve on loopback (DNS ``localhost``, IP ``127.0.0.1``/``::1``) or under its own name
``<id>.<role>.numfed``, which a client sets as the TLS target name to be sure *which* member it
reached (see :func:`secure_channel`). Private key files are mode 0600.

:func:`revoke` puts a member's certificate on the CA-signed revocation list; every server reads
that list through a :class:`RevocationList` and refuses a revoked certificate before its expiry.

Only the helpers at the bottom touch grpc; everything above is plain ``cryptography``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from numfed.config import Limits
from numfed.envelope import KeyAlgorithm, SigningKey
from numfed.errors import FailedPrecondition, InvalidArgument, NumfedError, Unauthenticated
from numfed.identity import PeerId, Role

__all__ = [
    "CertificateAuthority",
    "PkiLayout",
    "Revocation",
    "RevocationList",
    "channel_credentials",
    "client_options",
    "init_pki",
    "issue_cert",
    "issue_member",
    "load_audit_signer",
    "load_carrier_signer",
    "load_crl",
    "load_root_signers",
    "peer_certificate",
    "peer_from_pem",
    "peer_identity",
    "revoke",
    "secure_channel",
    "server_credentials",
]

DEFAULT_CARRIERS = ("cmcc", "cucc", "ctcc")
DEFAULT_PLATFORMS = (
    "weibo",
    "taobao",
    "douyin",
    "toutiao",
    "meituan",
    "dianping",
    "xiaomi",
    "labels",
)
GATEWAY = PeerId(Role.GATEWAY, "main")
ROOT_KEYS = 3
"""Federation root keys made by ``init_pki``; the trust files use a threshold of 2."""
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates are valid from this long before ``now`` so peers with slow clocks accept them."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PkiLayout:
    """Where each file of a PKI directory lives. Paths only; nothing is read or checked."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key.pem"

    @property
    def crl_path(self) -> Path:
        return self.root / "ca-crl.pem"

    def member_dir(self, peer: PeerId) -> Path:
        return self.root / peer.role.value / peer.id

    def cert_path(self, peer: PeerId) -> Path:
        return self.member_dir(peer) / "cert.pem"

    def key_path(self, peer: PeerId) -> Path:
        return self.member_dir(peer) / "key.pem"

    def signing_key_path(self, carrier_id: str) -> Path:
        return self.member_dir(PeerId(Role.CARRIER, carrier_id)) / "signing.key.pem"

    def audit_key_path(self, gateway_id: str = GATEWAY.id) -> Path:
        """The gateway's audit key: it signs checkpoints of the audit log, nothing else."""
        return self.member_dir(PeerId(Role.GATEWAY, gateway_id)) / "audit.key.pem"

    def root_key_path(self, n: int) -> Path:
        return self.root / "root" / f"root-{n}.key.pem"

    def members(self) -> list[PeerId]:
        """Every member with a certificate here, gateway first, then carriers and platforms."""
        found = []
        for role in Role:
            base = self.root / role.value
            if base.is_dir():
                found += [
                    PeerId(role, d.name)
                    for d in sorted(base.iterdir())
                    if (d / "cert.pem").exists()
                ]
        return found


def _layout(where: PkiLayout | Path) -> PkiLayout:
    return where if isinstance(where, PkiLayout) else PkiLayout(where)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition("PKI_FILE_MISSING", f"cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A secret is created 0600 from the start, never readable by others even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """The federation CA: a self-signed P-256 certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(
        cls, *, now: datetime, validity: timedelta, name: str = "numfed federation CA"
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "numfed"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, where: PkiLayout | Path) -> CertificateAuthority:
        layout = _layout(where)
        cert = x509.load_pem_x509_certificate(_read(layout.ca_path))
        key = serialization.load_pem_private_key(_read(layout.ca_key_path), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument("BAD_PRIVATE_KEY", f"{layout.ca_key_path} is not a P-256 key")
        return cls(cert, key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _dns_name(peer: PeerId) -> str:
    # Never resolved, only compared by TLS hostname verification (which accepts "_").
    return f"{peer.id}.{peer.role.value}.numfed"


def issue_cert(
    ca: CertificateAuthority,
    peer: PeerId,
    *,
    not_before: datetime,
    not_after: datetime,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server+client certificate for ``peer`` signed by ``ca`` (a new key unless given).

    The validity window is taken as given, so tests can make expired or not-yet-valid
    certificates signed by the real CA.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "numfed"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, peer.role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, peer.id),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(peer.uri),
                    x509.DNSName(_dns_name(peer)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def _check_ids(kind: str, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        raise InvalidArgument("DUPLICATE_MEMBER_ID", f"{kind} ids repeat: {list(ids)}")


def init_pki(
    directory: Path,
    *,
    carriers: Sequence[str] = DEFAULT_CARRIERS,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    now: datetime | None = None,
    validity: timedelta = timedelta(days=365),
) -> PkiLayout:
    """Create a federation CA, TLS certificates for the gateway and every member, the root keys,
    each carrier's claim-signing key and the gateway's audit key in ``directory``, which must be
    absent or empty.

    Everything is written to a temporary sibling first and moved into place at the end, so a
    failure leaves no half-made PKI behind.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FailedPrecondition(
            "PKI_EXISTS", f"{directory} exists and is not empty; refusing to overwrite it"
        )
    if validity <= timedelta(0):
        raise InvalidArgument("BAD_VALIDITY", "validity must be positive")
    _check_ids("carrier", carriers)
    _check_ids("platform", platforms)
    peers = [
        GATEWAY,
        *(PeerId(Role.CARRIER, c) for c in carriers),
        *(PeerId(Role.PLATFORM, p) for p in platforms),
    ]
    now = now or datetime.now(UTC)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        staging.chmod(0o755)
        layout = PkiLayout(staging)
        ca = CertificateAuthority.generate(now=now, validity=validity)
        _write(layout.ca_path, ca.pem)
        _write(layout.ca_key_path, _private_pem(ca.key), secret=True)
        for peer in peers:
            cert, key = issue_cert(ca, peer, not_before=now - CLOCK_SKEW, not_after=now + validity)
            _write(layout.cert_path(peer), cert.public_bytes(serialization.Encoding.PEM))
            _write(layout.key_path(peer), _private_pem(key), secret=True)
        for n in range(1, ROOT_KEYS + 1):
            _write(layout.root_key_path(n), SigningKey.generate().to_pem(), secret=True)
        for carrier in carriers:
            _write(layout.signing_key_path(carrier), SigningKey.generate().to_pem(), secret=True)
        _write(layout.audit_key_path(), SigningKey.generate().to_pem(), secret=True)
        try:
            if directory.exists():
                directory.rmdir()  # empty, checked above; rename cannot replace it portably
            staging.rename(directory)
        except OSError as exc:  # another init won the race
            raise FailedPrecondition(
                "PKI_EXISTS", f"{directory} was filled while this PKI was made: {exc.strerror}"
            ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PkiLayout(directory)


def issue_member(
    where: PkiLayout | Path,
    peer: PeerId,
    *,
    now: datetime | None = None,
    validity: timedelta = timedelta(days=365),
) -> PkiLayout:
    """Add one member to an existing PKI: a certificate from its CA (which needs the CA key)
    and, for a carrier, a claim-signing key. A member that has a certificate already is
    FAILED_PRECONDITION ``MEMBER_EXISTS`` and nothing is written."""
    layout = _layout(where)
    if layout.cert_path(peer).exists() or layout.key_path(peer).exists():
        raise FailedPrecondition("MEMBER_EXISTS", f"{peer.uri} has a certificate already")
    if validity <= timedelta(0):
        raise InvalidArgument("BAD_VALIDITY", "validity must be positive")
    ca = CertificateAuthority.load(layout)
    now = now or datetime.now(UTC)
    cert, key = issue_cert(ca, peer, not_before=now - CLOCK_SKEW, not_after=now + validity)
    _write(layout.key_path(peer), _private_pem(key), secret=True)
    _write(layout.cert_path(peer), cert.public_bytes(serialization.Encoding.PEM))
    if peer.role is Role.CARRIER:
        _write(layout.signing_key_path(peer.id), SigningKey.generate().to_pem(), secret=True)
    return layout


def _load_signer(path: Path) -> SigningKey:
    try:
        key = SigningKey.from_pem(_read(path))
    except (ValueError, TypeError) as exc:  # not PEM, or encrypted
        raise InvalidArgument("BAD_PRIVATE_KEY", f"{path} holds no usable private key") from exc
    if key.algorithm is not KeyAlgorithm.ED25519:
        raise InvalidArgument("BAD_PRIVATE_KEY", f"{path} is not an Ed25519 key")
    return key


def load_root_signers(where: PkiLayout | Path) -> list[SigningKey]:
    """The federation root keys, ``root-1`` first."""
    layout = _layout(where)
    keys = []
    n = 1
    while layout.root_key_path(n).exists():
        keys.append(_load_signer(layout.root_key_path(n)))
        n += 1
    if not keys:
        raise FailedPrecondition("PKI_FILE_MISSING", f"no root keys in {layout.root / 'root'}")
    return keys


def load_carrier_signer(where: PkiLayout | Path, carrier_id: str) -> SigningKey:
    """The claim-signing key of ``carrier_id``."""
    return _load_signer(_layout(where).signing_key_path(carrier_id))


def load_audit_signer(where: PkiLayout | Path, gateway_id: str = GATEWAY.id) -> SigningKey:
    """The gateway's audit key, which signs checkpoints of its audit log."""
    return _load_signer(_layout(where).audit_key_path(gateway_id))


# --- revocation -------------------------------------------------------------------------------


def load_crl(data: bytes, ca: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a PEM revocation list and check that ``ca`` issued and signed it.

    Raises ``InvalidArgument`` (``BAD_CRL``) for anything else: a list that does not parse,
    names another issuer, carries no CRL number, or whose signature does not verify.
    """
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise InvalidArgument("BAD_CRL", f"not a PEM revocation list: {exc}") from exc
    if crl.issuer != ca.subject:
        raise InvalidArgument("BAD_CRL", f"issued by {crl.issuer.rfc4514_string()}, not the CA")
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise InvalidArgument("BAD_CRL", "its signature does not verify with the CA's key")
    _crl_number(crl)
    return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound as exc:
        raise InvalidArgument("BAD_CRL", "the list has no CRL number") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a reader sees the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Revocation:
    """What :func:`revoke` did."""

    peer: PeerId
    serial: int
    crl_number: int
    revoked: int
    """Certificates the list now names."""
    already: bool
    """The certificate was on the list before; nothing was written."""


def revoke(where: PkiLayout | Path, peer: PeerId, *, now: datetime | None = None) -> Revocation:
    """Put ``peer``'s certificate (``DIR/<role>/<id>/cert.pem``) on the CA's revocation list.

    Needs the CA key. The new list keeps every earlier entry, has the next CRL number, and
    replaces ``DIR/ca-crl.pem`` atomically; revoking a certificate twice changes nothing. An
    existing list that the CA did not sign is refused (``BAD_CRL``), not overwritten.
    """
    layout = _layout(where)
    ca = CertificateAuthority.load(layout)
    cert = x509.load_pem_x509_certificate(_read(layout.cert_path(peer)))
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, exceptions.InvalidSignature) as exc:
        raise FailedPrecondition(
            "NOT_ISSUED_BY_CA", f"{layout.cert_path(peer)} was not issued by this CA"
        ) from exc
    serial = cert.serial_number
    entries: list[x509.RevokedCertificate] = []
    number = 0
    if layout.crl_path.exists():
        current = load_crl(_read(layout.crl_path), ca.cert)
        entries = list(current)
        number = _crl_number(current)
        if any(e.serial_number == serial for e in entries):
            return Revocation(peer, serial, number, len(entries), already=True)
    now = now or datetime.now(UTC)
    entries.append(
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(max(ca.cert.not_valid_after_utc, now))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    _write_atomically(layout.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return Revocation(peer, serial, number + 1, len(entries), already=False)


@functools.lru_cache(maxsize=1024)
def _serial_from_pem(pem: bytes) -> int:
    try:
        return x509.load_pem_x509_certificate(pem).serial_number
    except ValueError as exc:
        raise Unauthenticated("NO_PEER_IDENTITY", "peer certificate does not parse") from exc


class RevocationList:
    """The CA's revocation list as a server applies it, re-read when its file changes.

    :meth:`check` looks at the file at most once per ``recheck`` seconds (one ``stat``) and
    loads it only when it changed. A list replaces the one in force only if the CA in
    ``ca.pem`` signed it and its CRL number is not lower; anything else is logged once and
    ignored, and the list in force stays (so does it when the file is deleted). Until a list
    appears, nothing is revoked. Each distinct certificate is parsed once.
    """

    def __init__(self, where: PkiLayout | Path, *, recheck: float = 1.0) -> None:
        layout = _layout(where)
        self.path = layout.crl_path
        self._ca = x509.load_pem_x509_certificate(_read(layout.ca_path))
        self._recheck = recheck
        self._serials: frozenset[int] = frozenset()
        self._number = -1
        """CRL number in force; -1 while there is none."""
        self._seen: tuple[int, int, int] | None = None
        """(mtime, size, inode) of the file last looked at."""
        self._next_look = 0.0
        self.refresh()

    @property
    def crl_number(self) -> int | None:
        """The CRL number in force, None before any list was loaded."""
        return self._number if self._number >= 0 else None

    def __len__(self) -> int:
        return len(self._serials)

    def refresh(self) -> None:
        """Look at the file now, and load it if it changed since the last look."""
        self._next_look = time.monotonic() + self._recheck
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._seen is not None and self._number >= 0:
                log.warning("%s was removed; the revocation list in force stays", self.path)
            self._seen = None
            return
        except OSError as exc:
            log.warning(
                "cannot look at %s (%s); the revocation list in force stays", self.path, exc
            )
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            crl = load_crl(self.path.read_bytes(), self._ca)
        except (OSError, NumfedError) as exc:
            log.warning("ignoring %s (%s); the revocation list in force stays", self.path, exc)
            return
        number = _crl_number(crl)
        if number < self._number:
            log.warning(
                "ignoring %s: CRL number %d is older than %d in force",
                self.path,
                number,
                self._number,
            )
            return
        self._serials = frozenset(e.serial_number for e in crl)
        self._number = number
        log.info("revocation list %d in force: %d certificates revoked", number, len(self._serials))

    def check(self, pem: bytes) -> None:
        """Raise ``Unauthenticated`` (``CERTIFICATE_REVOKED``) if the PEM certificate is revoked."""
        if time.monotonic() >= self._next_look:
            self.refresh()
        if self._serials and (serial := _serial_from_pem(pem)) in self._serials:
            raise Unauthenticated(
                "CERTIFICATE_REVOKED",
                "the caller's certificate is revoked",
                metadata={"serial": f"{serial:x}"},
            )


# --- gRPC -------------------------------------------------------------------------------------


def _tls_files(where: PkiLayout | Path, peer: PeerId) -> tuple[bytes, bytes, bytes]:
    """The CA, ``peer``'s certificate and its key as PEM, checked to parse and to belong
    together, so that a garbled or mismatched file is one precise error (``BAD_PKI_FILE``)
    rather than gRPC refusing to listen or to connect."""
    layout = _layout(where)
    ca, cert, key = layout.ca_path, layout.cert_path(peer), layout.key_path(peer)
    ca_pem, cert_pem, key_pem = _read(ca), _read(cert), _read(key)
    try:
        x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise InvalidArgument("BAD_PKI_FILE", f"{ca} is not a PEM certificate") from exc
    try:
        public = x509.load_pem_x509_certificate(cert_pem).public_key()
    except ValueError as exc:
        raise InvalidArgument("BAD_PKI_FILE", f"{cert} is not a PEM certificate") from exc
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("BAD_PKI_FILE", f"{key} holds no usable private key") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        raise InvalidArgument("BAD_PKI_FILE", f"{key} is not the key of {cert}")
    return ca_pem, cert_pem, key_pem


def server_credentials(where: PkiLayout | Path, peer: PeerId) -> grpc.ServerCredentials:
    """TLS credentials for serving as ``peer``; every client must present a cert from the CA.

    Rules: PLAT-OPS-3, PLAT-OPS-4, CARR-OPS-1, CARR-OPS-2.
    """
    ca, cert, key = _tls_files(where, peer)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(where: PkiLayout | Path, peer: PeerId) -> grpc.ChannelCredentials:
    """TLS credentials for calling as ``peer``: its cert and key, and the CA to check servers."""
    ca, cert, key = _tls_files(where, peer)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def secure_channel(
    target: str,
    where: PkiLayout | Path,
    peer: PeerId,
    *,
    server: PeerId | None = None,
    options: Iterable[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    limits: Limits | None = None,
    traced: bool = True,
) -> grpc.aio.Channel:
    """An mTLS ``grpc.aio`` channel to ``target``, calling as ``peer``.

    Every channel keeps its connections alive by the caller's ``limits`` (default: the
    :class:`Limits` defaults; see :func:`client_options`), so a server that dies or freezes
    is noticed within ``keepalive_time + keepalive_timeout`` and the channel's calls and
    streams on it end then, not at their deadlines.

    Any member's certificate is valid for loopback addresses, so with ``server`` given the TLS
    target name is set to that member's own DNS name and the handshake fails unless the server
    presents *that* member's certificate.

    ``target`` may list several replicas, ``"10.0.0.1:7000,10.0.0.2:7000"`` (IP addresses), or
    name one DNS name that resolves to several; calls are spread over them round-robin, and
    calls to the gateway that are safe to repeat are retried on another replica when one is
    UNAVAILABLE (see :data:`GATEWAY_SERVICE_CONFIG`). ``interceptors`` wrap every call (a
    member's reader of the gateway's trust version hints, say); with tracing on, the W3C
    trace context's interceptor comes first (:mod:`numfed.observability.tracing`), unless
    ``traced`` is False: the caller then traces each call itself (``tracing.client_call``).
    """
    opts = [*client_options(limits or Limits()), *options]
    if server is not None:
        opts.append(("grpc.ssl_target_name_override", _dns_name(server)))
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if len(parts) > 1:
        target = "ipv4:" + ",".join(parts)
    config = GATEWAY_SERVICE_CONFIG if server == GATEWAY else {"loadBalancingConfig": _RR}
    opts.append(("grpc.service_config", json.dumps(config)))
    from numfed.observability import tracing

    return grpc.aio.secure_channel(
        target,
        channel_credentials(where, peer),
        options=opts,
        interceptors=[*(tracing.client_interceptors() if traced else ()), *interceptors] or None,
    )


def client_options(limits: Limits) -> list[tuple[str, int]]:
    """Keepalive options of every numfed client channel (:func:`secure_channel`).

    The channel pings a connection quiet for ``keepalive_time``, with or without calls open,
    and closes it when a ping goes unanswered for ``keepalive_timeout`` (grpc waits for a
    keepalive ping's ack ``grpc.http2.ping_timeout_ms``, so both are set). Servers accept
    pings this often (``numfed.rpc.server_options``).
    """
    timeout_ms = max(int(limits.keepalive_timeout * 1000), 1)
    return [
        ("grpc.keepalive_time_ms", max(int(limits.keepalive_time * 1000), 1)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


_RR: list[dict[str, object]] = [{"round_robin": {}}]
_IDEMPOTENT = (
    "GetTrustBundle",  # reads
    "QueryBindings",
    "GetOperation",
    "CheckRecycled",
    "ReleaseBindings",  # idempotent on its request_id (AIP-155)
    "PullEvents",  # an acknowledgement only moves forward
)
GATEWAY_SERVICE_CONFIG: dict[str, object] = {
    "loadBalancingConfig": _RR,
    "methodConfig": [
        {
            "name": [{"service": "numfed.v1.GatewayService", "method": m} for m in _IDEMPOTENT],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
"""How members call the gateway: round-robin over its replicas; only calls that are safe to
repeat are retried, and only on UNAVAILABLE (PublishEvents is not retried by the channel: a
carrier re-publishes a batch itself, and platforms apply each event once)."""


@functools.lru_cache(maxsize=1024)
def peer_from_pem(pem: bytes) -> PeerId:
    """The identity a verified PEM certificate names: its one SPIFFE URI SAN (parsed once)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise Unauthenticated("NO_PEER_IDENTITY", "peer certificate has no usable SAN") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise Unauthenticated(
            "BAD_PEER_IDENTITY", f"peer certificate has {len(uris)} URI SANs; exactly 1 required"
        )
    return PeerId.parse(uris[0])


def peer_certificate(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
) -> bytes:
    """The caller's client certificate (PEM), as the TLS handshake verified it.

    grpc puts a certificate in the auth context only after the handshake verified it against
    the CA, so the certificate here is trusted as is (revocation aside: see
    :class:`RevocationList`).
    """
    auth = context.auth_context()
    value = auth.get("x509_pem_cert", ())
    pems = [value] if isinstance(value, bytes) else list(value)
    if len(pems) != 1:
        raise Unauthenticated("NO_PEER_IDENTITY", "the caller presented no client certificate")
    return pems[0]


def peer_identity(context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any]) -> PeerId:
    """The caller's identity: the one SPIFFE URI SAN of its verified client certificate."""
    return peer_from_pem(peer_certificate(context))
