"""An operator's mistake is one ``numfed: error:`` line and exit status 2, never a traceback.

Each case runs the real command as a process, the way an operator types it: an address in use
(every serve command, the conformance kit's ``--listen``, the metrics endpoint), configs that
do not load, files that cannot be read; and ``numfed verify`` tells a forged proof (exit 1,
"does not verify") from one it cannot read (exit 2).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.envelope import Envelope
from numfed.federation import NUMBER_RANGES, FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.proof import decode_proof, encode_proof

GRPC_CORE_LINE = re.compile(r"^[EWID]\d{4} ")
"""A line gRPC's C core writes itself (``E1129 12:00:00.000 add_port.cc] …``)."""


def numfed(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "numfed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], reason: str) -> str:
    """Exit 2; the last line of stderr is the one ``numfed: error: REASON: …`` line; no
    traceback and nothing from gRPC's core anywhere."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out, out
    assert not any(GRPC_CORE_LINE.match(line) for line in out.splitlines()), out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("numfed: error:")]
    assert errors == [lines[-1]], out
    assert errors[0].startswith(f"numfed: error: {reason}: "), out
    return errors[0]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> FederationLayout:
    return create_federation(
        tmp_path_factory.mktemp("errors") / "fed", carriers=("cmcc",), platforms=("weibo",)
    )


@pytest.fixture
def occupied() -> Iterator[socket.socket]:
    """A loopback port some other program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def with_setting(path: Path, old: str, new: str, to: Path) -> Path:
    text = path.read_text()
    assert old in text
    to.write_text(text.replace(old, new))
    return to


@pytest.mark.parametrize(
    ("role", "setting"),
    [
        ("gateway", "listen"),
        ("carrier", "listen"),
        ("carrier", "holder_listen"),
        ("platform", "listen"),
    ],
)
def test_an_address_in_use_is_one_line(
    layout: FederationLayout, occupied: socket.socket, role: str, setting: str
) -> None:
    config = {
        "gateway": layout.gateway_config,
        "carrier": layout.carrier_configs["cmcc"],
        "platform": layout.platform_configs["weibo"],
    }[role]
    endpoint = {
        ("gateway", "listen"): layout.gateway_endpoint,
        ("carrier", "listen"): layout.carrier_endpoints["cmcc"],
        ("carrier", "holder_listen"): layout.holder_endpoints["cmcc"],
        ("platform", "listen"): layout.platform_endpoints["weibo"],
    }[(role, setting)]
    busy = f"127.0.0.1:{occupied.getsockname()[1]}"
    edited = with_setting(
        config,
        f'{setting} = "{endpoint}"',
        f'{setting} = "{busy}"',
        config.with_name(f"busy-{role}-{setting}.toml"),
    )
    line = assert_one_error_line(numfed(role, "serve", "--config", str(edited)), "CANNOT_LISTEN")
    assert busy in line and "address already in use" in line


def test_a_metrics_endpoint_in_use_is_one_line(
    layout: FederationLayout, occupied: socket.socket
) -> None:
    busy = f"127.0.0.1:{occupied.getsockname()[1]}"
    config = layout.platform_configs["weibo"].with_name("busy-metrics.toml")
    config.write_text(
        layout.platform_configs["weibo"].read_text() + f'\n[telemetry]\nmetrics_listen = "{busy}"\n'
    )
    line = assert_one_error_line(
        numfed("platform", "serve", "--config", str(config)), "CANNOT_LISTEN"
    )
    assert "metrics_listen" in line


def test_the_conformance_kit_listening_on_an_address_in_use_is_one_line(
    layout: FederationLayout, occupied: socket.socket
) -> None:
    busy = f"127.0.0.1:{occupied.getsockname()[1]}"
    result = numfed(
        "conformance",
        "platform",
        "--target",
        layout.platform_endpoints["weibo"],
        "--platform-id",
        "weibo",
        "--pki",
        str(layout.pki_dir),
        "--listen",
        busy,
    )
    assert busy in assert_one_error_line(result, "CANNOT_LISTEN")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (("", "listen = = ["), "BAD_CONFIG"),  # not TOML
        (("", '\n[telemetry]\nmetrics_listen = "10.0.0.1:9464"\n'), "BAD_CONFIG"),
        (("", '\n[telemetry]\notlp_endpoint = "collector:4317"\n'), "BAD_CONFIG"),
        (("", "\n[telemetry]\ntrace_sample_ratio = 2\n"), "BAD_CONFIG"),
        (("", "\n[telemetry]\nmetrics = true\n"), "BAD_CONFIG"),
        (('pki_dir = "pki"', 'pki_dir = "no-such-pki"'), "PKI_FILE_MISSING"),
        (('trust_dir = "trust"', 'trust_dir = "no-such-trust"'), "TRUST_FILES_MISSING"),
        (
            ('state_dir = "state/gateway"', 'database_url = "mysql://x"\nstate_dir = "s"'),
            "BAD_CONFIG",
        ),
    ],
    ids=[
        "not-toml",
        "metrics-not-loopback",
        "otlp-not-a-url",
        "sample-ratio",
        "unknown-telemetry",
        "pki-missing",
        "trust-missing",
        "database-url",
    ],
)
def test_a_gateway_config_that_does_not_work_is_one_line(
    layout: FederationLayout, tmp_path: Path, edit: tuple[str, str], reason: str
) -> None:
    text = layout.gateway_config.read_text()
    old, new = edit
    config = layout.root / f"bad-{tmp_path.name}.toml"
    config.write_text(new + text if old == "" else text.replace(old, new, 1))
    assert_one_error_line(numfed("gateway", "serve", "--config", str(config)), reason)


def test_unreadable_files_are_one_line(layout: FederationLayout, tmp_path: Path) -> None:
    """A config that is not there; a carrier whose signing key, or a platform whose
    certificate, is garbled (gRPC would refuse to listen without saying why)."""
    for role in ("gateway", "carrier", "platform"):
        line = assert_one_error_line(
            numfed(role, "serve", "--config", str(tmp_path / "nope.toml")), "BAD_CONFIG"
        )
        assert "nope.toml" in line
    pki_copy = tmp_path / "pki"
    subprocess.run(["cp", "-r", str(layout.pki_dir), str(pki_copy)], check=True)
    (pki_copy / "carrier" / "cmcc" / "signing.key.pem").write_text("not a key\n")
    config = with_setting(
        layout.carrier_configs["cmcc"],
        'pki_dir = "pki"',
        f'pki_dir = "{pki_copy}"',
        tmp_path / "carrier.toml",
    )
    text = config.read_text().replace('state_dir = "', f'state_dir = "{layout.root}/')
    config.write_text(text)
    line = assert_one_error_line(
        numfed("carrier", "serve", "--config", str(config)), "BAD_PRIVATE_KEY"
    )
    assert "signing.key.pem" in line
    (pki_copy / "platform" / "weibo" / "cert.pem").write_text("not a certificate\n")
    platform = with_setting(
        layout.platform_configs["weibo"],
        'pki_dir = "pki"',
        f'pki_dir = "{pki_copy}"',
        tmp_path / "platform.toml",
    )
    platform.write_text(
        platform.read_text()
        .replace('state_dir = "', f'state_dir = "{layout.root}/')
        .replace('trust_dir = "', f'trust_dir = "{layout.root}/')
    )
    line = assert_one_error_line(
        numfed("platform", "serve", "--config", str(platform)), "BAD_PKI_FILE"
    )
    assert "cert.pem is not a PEM certificate" in line


def holder_proof(layout: FederationLayout) -> str:
    now = datetime.now(UTC)
    claim = TenureClaim.new(
        number="+8613812345678",
        carrier_id="cmcc",
        tenure_start=datetime(2022, 7, 1, 9, tzinfo=UTC),
        purpose=Purpose.HOLDER_PROOF,
        now=now,
        lifetime=timedelta(days=30),
    )
    return encode_proof(sign_claim(claim, pki.load_carrier_signer(layout.pki_dir, "cmcc")))


def test_verify_tells_a_forged_proof_from_an_unreadable_one(
    layout: FederationLayout, tmp_path: Path
) -> None:
    trust = str(layout.trust_dir)
    good = holder_proof(layout)
    ok = numfed("verify", good, "--trust", trust)
    assert ok.returncode == 0 and "valid holder proof" in ok.stdout, ok.stderr
    envelope = decode_proof(good)
    forged_payload = envelope.payload.replace(b"+8613812345678", b"+8613812345679")
    forged = encode_proof(Envelope(forged_payload, envelope.payload_type, envelope.signatures))
    refused = numfed("verify", forged, "--trust", trust)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (
        refused.stdout.strip().splitlines() == [refused.stdout.strip().splitlines()[0]]
        and "does not verify" in refused.stdout
    )
    assert "BAD_SIGNATURE" in refused.stdout and "Traceback" not in refused.stderr
    (tmp_path / "proof.txt").write_text(forged)
    assert numfed("verify", f"@{tmp_path / 'proof.txt'}", "--trust", trust).returncode == 1
    assert_one_error_line(numfed("verify", "nfp1.@@@@", "--trust", trust), "MALFORMED_PROOF")
    assert_one_error_line(numfed("verify", "hello", "--trust", trust), "NOT_A_PROOF")
    assert_one_error_line(
        numfed("verify", f"@{tmp_path / 'missing.txt'}", "--trust", trust), "FILE_NOT_FOUND"
    )
    assert_one_error_line(
        numfed("verify", good, "--trust", str(tmp_path / "no-trust")), "TRUST_FILES_MISSING"
    )


def test_pki_and_federation_refuse_a_directory_in_use(layout: FederationLayout) -> None:
    assert_one_error_line(numfed("pki", "init", str(layout.pki_dir)), "PKI_EXISTS")
    assert_one_error_line(
        numfed("pki", "revoke", str(layout.pki_dir), "--member", "spiffe://numfed/x"),
        "BAD_MEMBER_ID",
    )
    assert_one_error_line(
        numfed("federation", "init", str(layout.root), "--carrier", "cmcc"), "FEDERATION_EXISTS"
    )
    assert_one_error_line(
        numfed("federation", "add-member", str(layout.root), "--platform", "weibo"),
        "MEMBER_EXISTS",
    )


def test_adding_a_carrier_with_a_block_another_carrier_holds_writes_nothing(
    layout: FederationLayout,
) -> None:
    """``add-member --carrier`` publishes the next bundle as ``numfed trust publish`` does, whose
    ``--ranges`` would move a block; a block another carrier holds is refused first, and no
    certificate, key, config or bundle is written."""
    bundle = (layout.trust_dir / "bundle.pb").read_bytes()
    gateway = layout.gateway_config.read_text()
    held = NUMBER_RANGES["cmcc"][0]
    line = assert_one_error_line(
        numfed("federation", "add-member", str(layout.root), "--carrier", "cucc", "--range", held),
        "RANGE_HELD",
    )
    assert held in line and "cmcc" in line
    assert not pki.PkiLayout(layout.pki_dir).member_dir(PeerId(Role.CARRIER, "cucc")).exists()
    assert not (layout.root / "carrier-cucc.toml").exists()
    assert (layout.trust_dir / "bundle.pb").read_bytes() == bundle
    assert layout.gateway_config.read_text() == gateway
