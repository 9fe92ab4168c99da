"""Project Wycheproof vectors through numfed's own verification wrapper (VerifyKey.verify_raw)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from numfed.envelope import VerifyKey
from numfed.errors import InvalidArgument

VECTORS = Path(__file__).parent.parent / "vectors"


def _cases(name: str) -> list[Any]:
    data = json.loads((VECTORS / name).read_text())
    cases = [
        pytest.param(group["publicKey"], test, id=f"tc{test['tcId']}")
        for group in data["testGroups"]
        for test in group["tests"]
    ]
    assert len(cases) == data["numberOfTests"]
    return cases


ED25519 = _cases("ed25519_test.json")
P256 = _cases("ecdsa_secp256r1_sha256_p1363_test.json")


def _verdict(load: Any, raw_key: bytes, test: dict[str, Any]) -> bool:
    try:
        key = load(raw_key)
    except InvalidArgument:
        return False  # a key our wrapper refuses verifies nothing
    return bool(key.verify_raw(bytes.fromhex(test["sig"]), bytes.fromhex(test["msg"])))


def _check(verdict: bool, test: dict[str, Any]) -> None:
    if test["result"] == "valid":
        assert verdict, test["comment"]
    elif test["result"] == "invalid":
        assert not verdict, test["comment"]
    # "acceptable": Wycheproof allows either answer.


@pytest.mark.parametrize(("public_key", "test"), ED25519)
def test_ed25519_vector(public_key: dict[str, Any], test: dict[str, Any]) -> None:
    _check(_verdict(VerifyKey.from_raw_ed25519, bytes.fromhex(public_key["pk"]), test), test)


@pytest.mark.parametrize(("public_key", "test"), P256)
def test_ecdsa_p256_p1363_vector(public_key: dict[str, Any], test: dict[str, Any]) -> None:
    point = bytes.fromhex(public_key["uncompressed"])
    _check(_verdict(VerifyKey.from_p256_point, point, test), test)


def test_every_vector_is_run() -> None:
    assert len(ED25519) > 100 and len(P256) > 200
    results = {t.values[1]["result"] for t in ED25519 + P256}
    assert {"valid", "invalid"} <= results
