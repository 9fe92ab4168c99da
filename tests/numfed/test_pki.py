"""The federation PKI on disk: files, permissions, names, chains and signing keys."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from numfed import envelope, pki
from numfed.envelope import KeyAlgorithm
from numfed.errors import FailedPrecondition, InvalidArgument
from numfed.identity import PeerId, Role

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CARRIERS = ("cmcc", "cucc", "ctcc")
PLATFORMS = ("weibo", "taobao", "douyin", "toutiao", "meituan", "dianping", "xiaomi", "labels")
PEERS = [
    PeerId(Role.GATEWAY, "main"),
    *(PeerId(Role.CARRIER, c) for c in CARRIERS),
    *(PeerId(Role.PLATFORM, p) for p in PLATFORMS),
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiLayout:
    return pki.init_pki(tmp_path_factory.mktemp("pki") / "pki", now=NOW)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_every_file(layout: pki.PkiLayout) -> None:
    expected = {"ca.pem", "ca.key.pem", "root/root-1.key.pem", "root/root-2.key.pem"}
    expected |= {"root/root-3.key.pem"}
    for peer in PEERS:
        expected |= {
            f"{peer.role.value}/{peer.id}/cert.pem",
            f"{peer.role.value}/{peer.id}/key.pem",
        }
    expected |= {f"carrier/{c}/signing.key.pem" for c in CARRIERS}
    expected |= {"gateway/main/audit.key.pem"}
    assert files_under(layout.root) == expected
    assert layout.members() == PEERS[:1] + sorted(PEERS[1:4], key=lambda p: p.id) + sorted(
        PEERS[4:], key=lambda p: p.id
    )
    assert layout.ca_path == layout.root / "ca.pem"
    assert layout.cert_path(PEERS[-1]) == layout.root / "platform/labels/cert.pem"
    assert layout.key_path(PEERS[1]) == layout.root / "carrier/cmcc/key.pem"


def test_private_keys_are_readable_by_owner_only(layout: pki.PkiLayout) -> None:
    keys = sorted(layout.root.rglob("*key.pem"))
    assert len(keys) == 1 + len(PEERS) + 3 + len(CARRIERS) + 1  # ... and the audit key
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(layout.ca_path.stat().st_mode) == 0o644


@pytest.mark.parametrize("peer", PEERS, ids=str)
def test_each_cert_names_its_member_and_chains_to_the_ca(
    layout: pki.PkiLayout, peer: PeerId
) -> None:
    ca = load_cert(layout.ca_path)
    cert = load_cert(layout.cert_path(peer))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [peer.uri]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)

    # A full RFC 5280 path validation, once as a TLS client and once as a TLS server.
    builder = PolicyBuilder().store(Store([ca])).time(NOW + timedelta(days=1))
    client = builder.build_client_verifier().verify(cert, [])
    assert client.subjects is not None
    assert x509.UniformResourceIdentifier(peer.uri) in client.subjects
    assert client.chain[-1] == ca
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        assert builder.build_server_verifier(name).verify(cert, [])[-1] == ca


def test_the_key_file_matches_the_cert(layout: pki.PkiLayout) -> None:
    from cryptography.hazmat.primitives import serialization

    peer = PeerId(Role.PLATFORM, "weibo")
    key = serialization.load_pem_private_key(layout.key_path(peer).read_bytes(), password=None)
    assert key.public_key() == load_cert(layout.cert_path(peer)).public_key()


def test_a_cert_from_another_pki_does_not_chain(layout: pki.PkiLayout, tmp_path: Path) -> None:
    other = pki.init_pki(tmp_path / "other", carriers=(), platforms=("weibo",), now=NOW)
    cert = load_cert(other.cert_path(PeerId(Role.PLATFORM, "weibo")))
    verifier = (
        PolicyBuilder()
        .store(Store([load_cert(layout.ca_path)]))
        .time(NOW + timedelta(days=1))
        .build_client_verifier()
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(cert, [])


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FailedPrecondition) as info:
        pki.init_pki(target, now=NOW)
    assert info.value.reason == "PKI_EXISTS"
    assert files_under(target) == {"precious.txt"}
    assert (target / "precious.txt").read_text() == "keep me"


def test_refuses_a_second_init(layout: pki.PkiLayout) -> None:
    before = layout.ca_path.read_bytes()
    with pytest.raises(FailedPrecondition):
        pki.init_pki(layout.root, now=NOW)
    assert layout.ca_path.read_bytes() == before


def test_fills_an_existing_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    target.mkdir()
    pki.init_pki(target, carriers=("cmcc",), platforms=("weibo",), now=NOW)
    assert (target / "ca.pem").exists()
    assert pki.PkiLayout(target).members() == [
        PeerId(Role.GATEWAY, "main"),
        PeerId(Role.CARRIER, "cmcc"),
        PeerId(Role.PLATFORM, "weibo"),
    ]


@pytest.mark.parametrize(
    ("carriers", "platforms", "reason"),
    [
        (("cmcc", "cmcc"), ("weibo",), "DUPLICATE_MEMBER_ID"),
        (("cmcc",), ("Weibo",), "BAD_MEMBER_ID"),
        (("cmcc",), ("../x",), "BAD_MEMBER_ID"),
    ],
)
def test_bad_member_ids_leave_nothing_behind(
    tmp_path: Path, carriers: tuple[str, ...], platforms: tuple[str, ...], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        pki.init_pki(tmp_path / "pki", carriers=carriers, platforms=platforms, now=NOW)
    assert info.value.reason == reason
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> envelope.SigningKey:
        raise OSError("disk full")

    monkeypatch.setattr(envelope.SigningKey, "generate", broken)
    with pytest.raises(OSError, match="disk full"):
        pki.init_pki(tmp_path / "pki", now=NOW)
    assert list(tmp_path.iterdir()) == []


def test_signing_keys_load_and_are_ed25519(layout: pki.PkiLayout) -> None:
    roots = pki.load_root_signers(layout.root)
    assert len(roots) == 3
    carriers = [pki.load_carrier_signer(layout, c) for c in CARRIERS]
    everyone = roots + carriers
    assert all(k.algorithm is KeyAlgorithm.ED25519 for k in everyone)
    assert len({k.key_id for k in everyone}) == len(everyone)
    # The same key comes back on every load, and it signs.
    assert pki.load_carrier_signer(layout.root, "cmcc").key_id == carriers[0].key_id
    signed = envelope.sign("application/x-test", b"hello", roots[:2])
    verified = envelope.verify(
        signed,
        envelope.key_map(k.public for k in roots),
        threshold=2,
        payload_type=signed.payload_type,
    )
    assert verified == {roots[0].key_id, roots[1].key_id}


def test_missing_signing_keys_are_a_failed_precondition(
    layout: pki.PkiLayout, tmp_path: Path
) -> None:
    with pytest.raises(FailedPrecondition) as info:
        pki.load_carrier_signer(layout, "weibo")  # a platform has no claim-signing key
    assert info.value.reason == "PKI_FILE_MISSING"
    with pytest.raises(FailedPrecondition):
        pki.load_root_signers(tmp_path)


def test_validity_follows_now(tmp_path: Path) -> None:
    then = datetime(2020, 1, 1, tzinfo=UTC)
    layout = pki.init_pki(
        tmp_path / "pki", carriers=(), platforms=(), now=then, validity=timedelta(days=2)
    )
    for path in (layout.ca_path, layout.cert_path(PeerId(Role.GATEWAY, "main"))):
        cert = load_cert(path)
        assert cert.not_valid_before_utc < then < cert.not_valid_after_utc
        assert cert.not_valid_after_utc == then + timedelta(days=2)


def test_issue_cert_takes_any_window(layout: pki.PkiLayout) -> None:
    ca = pki.CertificateAuthority.load(layout)
    start = datetime(2019, 1, 1, tzinfo=UTC)
    cert, _ = pki.issue_cert(
        ca, PeerId(Role.PLATFORM, "weibo"), not_before=start, not_after=start + timedelta(hours=1)
    )
    assert cert.not_valid_after_utc == start + timedelta(hours=1)
    assert cert.issuer == ca.cert.subject
