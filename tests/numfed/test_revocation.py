"""Certificate revocation: ``pki.revoke`` and ``numfed pki revoke`` write a CA-signed list; a
``RevocationList`` trusts only a list the CA signed, never an older one, and keeps the list in
force when the file goes bad."""

from __future__ import annotations

import logging
import stat
import timeit
from pathlib import Path

import pytest
from cryptography import x509

from numfed import cli, pki
from numfed.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from numfed.identity import PeerId, Role
from tests.helpers.certs import crl_signed_by

WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")


@pytest.fixture
def layout(tmp_path: Path) -> pki.PkiLayout:
    return pki.init_pki(tmp_path / "pki", carriers=("cmcc",), platforms=("weibo", "taobao"))


@pytest.fixture
def other_ca(tmp_path: Path) -> pki.CertificateAuthority:
    """Another federation's CA, with the same subject name as ours."""
    return pki.CertificateAuthority.load(
        pki.init_pki(tmp_path / "other", carriers=(), platforms=())
    )


def pem(layout: pki.PkiLayout, peer: PeerId) -> bytes:
    return layout.cert_path(peer).read_bytes()


def serial(layout: pki.PkiLayout, peer: PeerId) -> int:
    return x509.load_pem_x509_certificate(pem(layout, peer)).serial_number


def is_revoked(revocations: pki.RevocationList, cert: bytes) -> bool:
    try:
        revocations.check(cert)
    except Unauthenticated as err:
        assert err.reason == "CERTIFICATE_REVOKED"
        return True
    return False


def test_revoke_writes_a_list_the_ca_signed_naming_the_certificate(
    layout: pki.PkiLayout,
) -> None:
    done = pki.revoke(layout, WEIBO)
    assert (done.serial, done.crl_number, done.revoked, done.already) == (
        serial(layout, WEIBO),
        1,
        1,
        False,
    )
    ca = pki.CertificateAuthority.load(layout)
    crl = pki.load_crl(layout.crl_path.read_bytes(), ca.cert)
    assert [e.serial_number for e in crl] == [serial(layout, WEIBO)]
    assert stat.S_IMODE(layout.crl_path.stat().st_mode) == 0o644
    assert not list(layout.root.glob(".ca-crl.pem.*")), "a temporary file was left behind"


def test_revoking_again_changes_nothing_and_the_next_keeps_the_first(
    layout: pki.PkiLayout,
) -> None:
    pki.revoke(layout, WEIBO)
    first = layout.crl_path.read_bytes()
    again = pki.revoke(layout, WEIBO)
    assert again.already and again.crl_number == 1
    assert layout.crl_path.read_bytes() == first
    second = pki.revoke(layout, TAOBAO)
    assert (second.crl_number, second.revoked) == (2, 2)
    crl = pki.load_crl(layout.crl_path.read_bytes(), pki.CertificateAuthority.load(layout).cert)
    assert {e.serial_number for e in crl} == {serial(layout, WEIBO), serial(layout, TAOBAO)}


def test_revoke_refuses_a_certificate_another_ca_issued(
    layout: pki.PkiLayout, tmp_path: Path
) -> None:
    foreign = pki.init_pki(tmp_path / "foreign", carriers=(), platforms=("weibo",))
    layout.cert_path(WEIBO).write_bytes(foreign.cert_path(WEIBO).read_bytes())
    with pytest.raises(FailedPrecondition) as e:
        pki.revoke(layout, WEIBO)
    assert e.value.reason == "NOT_ISSUED_BY_CA"
    assert not layout.crl_path.exists()


def test_revoke_never_overwrites_a_list_the_ca_did_not_sign(
    layout: pki.PkiLayout, other_ca: pki.CertificateAuthority
) -> None:
    planted = crl_signed_by(other_ca, [], 7)
    layout.crl_path.write_bytes(planted)
    with pytest.raises(InvalidArgument) as e:
        pki.revoke(layout, WEIBO)
    assert e.value.reason == "BAD_CRL"
    assert layout.crl_path.read_bytes() == planted


def test_a_server_list_refuses_revoked_certificates_only(layout: pki.PkiLayout) -> None:
    assert pki.RevocationList(layout).crl_number is None
    revocations = pki.RevocationList(layout, recheck=0)
    assert not is_revoked(revocations, pem(layout, WEIBO))  # no list yet: nothing revoked
    pki.revoke(layout, WEIBO)
    assert is_revoked(revocations, pem(layout, WEIBO))  # picked up on the next call
    assert not is_revoked(revocations, pem(layout, TAOBAO))
    assert (revocations.crl_number, len(revocations)) == (1, 1)


def test_a_list_another_ca_signed_is_ignored_and_the_list_in_force_stays(
    layout: pki.PkiLayout,
    other_ca: pki.CertificateAuthority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    revocations = pki.RevocationList(layout, recheck=0)
    # First no list in force: a forged one revoking weibo is ignored.
    layout.crl_path.write_bytes(crl_signed_by(other_ca, [serial(layout, WEIBO)], 5))
    with caplog.at_level(logging.WARNING, logger="numfed.pki"):
        assert not is_revoked(revocations, pem(layout, WEIBO))
    assert "does not verify" in caplog.text
    # Then a real list in force: a forged one with a higher number does not replace it.
    layout.crl_path.unlink()  # pki.revoke itself refuses to build on the forged list
    pki.revoke(layout, TAOBAO)
    assert is_revoked(revocations, pem(layout, TAOBAO))
    layout.crl_path.write_bytes(crl_signed_by(other_ca, [serial(layout, WEIBO)], 9))
    assert is_revoked(revocations, pem(layout, TAOBAO))
    assert not is_revoked(revocations, pem(layout, WEIBO))
    assert revocations.crl_number == 1


def test_an_older_list_garbage_or_no_file_leave_the_list_in_force(
    layout: pki.PkiLayout, caplog: pytest.LogCaptureFixture
) -> None:
    revocations = pki.RevocationList(layout, recheck=0)
    pki.revoke(layout, WEIBO)
    older = layout.crl_path.read_bytes()
    pki.revoke(layout, TAOBAO)
    assert is_revoked(revocations, pem(layout, TAOBAO))
    with caplog.at_level(logging.WARNING, logger="numfed.pki"):
        layout.crl_path.write_bytes(older)  # a rollback to CRL number 1
        assert is_revoked(revocations, pem(layout, TAOBAO))
        assert "older than 2" in caplog.text
        layout.crl_path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n")
        assert is_revoked(revocations, pem(layout, TAOBAO))
        layout.crl_path.unlink()
        assert is_revoked(revocations, pem(layout, TAOBAO))
        assert is_revoked(revocations, pem(layout, WEIBO))


def test_the_list_is_looked_at_once_per_recheck_interval(layout: pki.PkiLayout) -> None:
    revocations = pki.RevocationList(layout, recheck=3600)
    pki.revoke(layout, WEIBO)
    assert not is_revoked(revocations, pem(layout, WEIBO))  # not looked at again yet
    revocations.refresh()  # SIGHUP, or the interval passing
    assert is_revoked(revocations, pem(layout, WEIBO))


def test_a_check_costs_about_a_microsecond(layout: pki.PkiLayout) -> None:
    revocations = pki.RevocationList(layout)
    pki.revoke(layout, WEIBO)
    revocations.refresh()
    cert = pem(layout, TAOBAO)
    n = 20_000
    per_call = timeit.timeit(lambda: revocations.check(bytes(cert)), number=n) / n
    print(f"RevocationList.check: {per_call * 1e6:.2f} us per call")
    assert per_call < 50e-6  # parsing the PEM each call would cost far more


def test_cli_revokes_a_member(layout: pki.PkiLayout, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pki", "revoke", str(layout.root), "--member", WEIBO.uri]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"revoked {WEIBO.uri} (serial {serial(layout, WEIBO):x})" in out
    assert "CRL number 1" in out
    assert cli.main(argv) == 0
    assert "already revoked" in capsys.readouterr().out
    # A member without a certificate in DIR, or a malformed id: one clean line, status 2.
    stranger = ["pki", "revoke", str(layout.root), "--member", "spiffe://numfed/platform/evil"]
    assert cli.main(stranger) == 2
    assert "PKI_FILE_MISSING" in capsys.readouterr().err
    assert cli.main(["pki", "revoke", str(layout.root), "--member", "weibo"]) == 2
    assert "BAD_MEMBER_ID" in capsys.readouterr().err
