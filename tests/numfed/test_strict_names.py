"""Ids, endpoints, prefixes and numbers in configuration and trust files are taken whole.

A trailing newline (``re.match`` with ``$``), another script's digits (``\\d``, ``int()``) or
text where a number belongs (``int("1_000")``) is refused with a precise error.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from numfed.config import Limits, load_gateway_config, load_platform_config
from numfed.envelope import SigningKey
from numfed.errors import InvalidArgument, NumfedError
from numfed.federation import create_federation
from numfed.trust import CarrierKey
from numfed.trustfiles import read_roots

GATEWAY = """
[gateway]
listen = "{listen}"
pki_dir = "pki"
trust_dir = "trust"
state_dir = "state/gw"

[[carrier]]
id = "{carrier}"
endpoint = "127.0.0.1:7001"
"""


def gateway_toml(tmp_path: Path, *, listen: str = "127.0.0.1:7000", carrier: str = "cmcc") -> Path:
    p = tmp_path / "gateway.toml"
    # TOML basic strings: \n and \u escapes put the character itself into the value.
    p.write_text(
        GATEWAY.format(
            listen=listen.encode("unicode_escape").decode(),
            carrier=carrier.encode("unicode_escape").decode(),
        )
    )
    return p


def test_the_well_formed_config_loads(tmp_path: Path) -> None:
    config = load_gateway_config(gateway_toml(tmp_path))
    assert config.carriers[0].id == "cmcc" and config.listen == "127.0.0.1:7000"


@pytest.mark.parametrize("listen", ["127.0.0.1:7000\n", "127.0.0.1:٧٠٠٠", "127.0.0.1:７０００"])
def test_endpoint_with_a_newline_or_other_digits_is_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_gateway_config(gateway_toml(tmp_path, listen=listen))
    assert e.value.reason == "BAD_CONFIG"


@pytest.mark.parametrize("value", ['"1_000"', '" 12 "', '"١٢"', "true", '"64"'])
def test_limits_are_toml_numbers_not_text(tmp_path: Path, value: str) -> None:
    p = gateway_toml(tmp_path)
    p.write_text(p.read_text() + f"\n[limits]\nmax_watches = {value}\n")
    with pytest.raises(InvalidArgument) as e:
        load_gateway_config(p)
    assert e.value.reason == "BAD_CONFIG"
    assert Limits.from_mapping({"max_watches": 64, "breaker_cooldown": 1}).breaker_cooldown == 1.0


def test_platform_numbers_are_toml_numbers_not_text(tmp_path: Path) -> None:
    lay = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    cfg = lay.platform_configs["weibo"]
    cfg.write_text(cfg.read_text().replace("[platform]", '[platform]\nlatency_ms = "1_0"', 1))
    with pytest.raises(InvalidArgument) as e:
        load_platform_config(cfg)
    assert e.value.reason == "BAD_CONFIG"


def _carrier_key(carrier_id: str = "cmcc", prefixes: tuple[str, ...] = ("+86",)) -> CarrierKey:
    now = datetime.now(UTC)
    return CarrierKey(
        SigningKey.generate().public, carrier_id, now, now + timedelta(days=1), prefixes
    )


def test_trust_bundle_carrier_ids_and_prefixes_are_matched_whole() -> None:
    assert _carrier_key().covers("+8613812345678")
    for carrier in ("cmcc\n", "\ncmcc"):
        with pytest.raises(InvalidArgument) as e:
            _carrier_key(carrier_id=carrier)
        assert e.value.reason == "MALFORMED_BUNDLE"
    for prefix in ("+86\n", "+٨٦", "+86 "):
        with pytest.raises(InvalidArgument) as e:
            _carrier_key(prefixes=(prefix,))
        assert e.value.reason == "MALFORMED_BUNDLE"


def test_root_files_are_named_with_ascii_digits_only(tmp_path: Path) -> None:
    lay = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    assert len(read_roots(lay.trust_dir)) == 1
    # "root-٢.pb" is not root version 2 (int() would read it so), and "root-02.pb" is not a
    # second spelling of it: neither is a root file, and the chain is still just root-1.
    shutil.copy(lay.trust_dir / "root-1.pb", lay.trust_dir / "root-٢.pb")
    shutil.copy(lay.trust_dir / "root-1.pb", lay.trust_dir / "root-02.pb")
    assert len(read_roots(lay.trust_dir)) == 1
    shutil.copy(lay.trust_dir / "root-1.pb", lay.trust_dir / "root-3.pb")
    with pytest.raises(NumfedError) as e:
        read_roots(lay.trust_dir)
    assert e.value.reason == "TRUST_FILES_GAP"


def test_a_holder_proof_with_stray_characters_is_malformed(tmp_path: Path) -> None:
    from numfed.proof import decode_proof
    from tests.numfed.test_proof import token

    lay = create_federation(tmp_path / "fed", carriers=("cmcc",), platforms=("weibo",))
    good = token(lay)
    assert decode_proof(good) == decode_proof(f"  {good}\n")  # pasted with whitespace around
    body = good.removeprefix("nfp1.")
    for bad in (f"nfp1.{body[:10]}\n{body[10:]}", f"nfp1.{body[:10]}!{body[10:]}", good + "+"):
        with pytest.raises(InvalidArgument) as e:
            decode_proof(bad)
        assert e.value.reason == "MALFORMED_PROOF"
