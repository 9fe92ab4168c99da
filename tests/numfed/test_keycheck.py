"""Every key is checked before it is trusted: where roots and bundles are built, and where they
are verified.

The vectors: the eight small-order Ed25519 points (libsodium's blocklist, C2SP's CCTV vectors),
non-canonical encodings (y >= p, a negative zero x), a point off the curve, a point with a
small-order component; for P-256 a point off the curve, a coordinate not below p, the point at
infinity, a compressed point, explicit curve parameters, another curve's OID; keys of other
algorithms (RSA, X25519, Ed448) and DER with bytes after it. Each is refused by
``check_public_key`` (a bundle cannot be built with it) and, in a bundle or root built by hand
around the key check and signed correctly by the root keys, by every verifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

from numfed.envelope import KeyAlgorithm, SigningKey, VerifyKey, check_public_key, sign
from numfed.errors import InvalidArgument
from numfed.trust import (
    BUNDLE_PAYLOAD_TYPE,
    ROOT_PAYLOAD_TYPE,
    TrustedState,
)
from numfed.v1 import trust_pb2
from tests.helpers.federation import NOW, Federation, make_federation

VECTORS = Path(__file__).parent.parent / "vectors"
ED = KeyAlgorithm.ED25519
P256 = KeyAlgorithm.ECDSA_P256_SHA256
P = 2**255 - 19
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B

SMALL_ORDER = {
    "identity": "0100000000000000000000000000000000000000000000000000000000000000",
    "order 2": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "order 4": "0000000000000000000000000000000000000000000000000000000000000000",
    "order 4, other": "0000000000000000000000000000000000000000000000000000000000000080",
    "order 8": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order 8, b": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order 8, c": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order 8, d": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
}
"""The eight points of small order, canonically encoded: what libsodium's blocklist holds."""

NON_CANONICAL = {
    "identity, x = -0": "0100000000000000000000000000000000000000000000000000000000000080",
    "order 2, x = -0": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "y = p": "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "y = p + 1 (the identity)": "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "y = p, x sign set": "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "y = p + 3": "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "y = 2^255 - 1": "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
}

OTHER_ED25519 = {
    "off the curve (y = 2)": "0200000000000000000000000000000000000000000000000000000000000000",
    "mixed order (y = 3)": "0300000000000000000000000000000000000000000000000000000000000000",
}

EXPLICIT_P256 = bytes.fromhex(
    "3082014b3082010306072a8648ce3d02013081f7020101302c06072a8648ce3d0101022100ffffffff000000010000"
    "00000000000000000000ffffffffffffffffffffffff305b0420ffffffff0000000100000000000000000000000"
    "0fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d260"
    "4b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037"
    "d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
    "022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101034200044a830f72"
    "3141ec0604728b31db0167d6a435dba5d8a2231506f778b71475530ccedd69f2eedb5784dc472af3136556ff6e"
    "016eb9f3bf07fe182e3149795b1e26"
)
"""A P-256 key under explicit curve parameters instead of the named curve's OID (made with
``openssl ec -pubout -param_enc explicit``)."""

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
P256_COMPRESSED_PREFIX = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _honest_ed25519() -> bytes:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _plus_order_2_point(raw: bytes) -> bytes:
    """``A + (0, -1)`` = ``(-x, -y)``: an honest key plus the point of order 2."""
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    return ((P - y) | ((1 - sign) << 255)).to_bytes(32, "little")


def _p256_point_with_small_x() -> tuple[int, int]:
    """A point of P-256 with x so small that x + p still fits in 32 bytes."""
    for x in range(1, 1000):
        rhs = (x**3 - 3 * x + P256_B) % P256_P
        y = pow(rhs, (P256_P + 1) // 4, P256_P)  # p = 3 mod 4
        if y * y % P256_P == rhs:
            return x, y
    raise AssertionError("no small x found")


def _fixed(spki: bytes) -> Callable[[], bytes]:
    return lambda: spki


def _bad_keys() -> list[tuple[str, KeyAlgorithm, Callable[[], bytes]]]:
    """(name, algorithm, spki) for every key that must be refused."""
    out: list[tuple[str, KeyAlgorithm, Callable[[], bytes]]] = []
    for group in (SMALL_ORDER, NON_CANONICAL, OTHER_ED25519):
        for name, hexkey in group.items():
            out.append((f"ed25519 {name}", ED, _fixed(ED25519_SPKI_PREFIX + bytes.fromhex(hexkey))))
    out.append(
        (
            "ed25519 honest key plus the order-2 point",
            ED,
            lambda: ED25519_SPKI_PREFIX + _plus_order_2_point(_honest_ed25519()),
        )
    )

    def honest_p256() -> ec.EllipticCurvePublicKey:
        return ec.generate_private_key(ec.SECP256R1()).public_key()

    def off_curve() -> bytes:
        spki = bytearray(_spki(honest_p256()))
        spki[-1] ^= 1
        return bytes(spki)

    def x_not_below_p() -> bytes:
        x, y = _p256_point_with_small_x()
        return P256_SPKI_PREFIX + b"\x04" + (x + P256_P).to_bytes(32, "big") + y.to_bytes(32, "big")

    def compressed() -> bytes:
        point = honest_p256().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        return P256_COMPRESSED_PREFIX + point

    def infinity() -> bytes:
        return bytes.fromhex("301a301306072a8648ce3d020106082a8648ce3d03010703030000")

    out += [
        ("p256 point off the curve", P256, off_curve),
        ("p256 x coordinate not below p", P256, x_not_below_p),
        ("p256 point at infinity", P256, infinity),
        ("p256 compressed point", P256, compressed),
        ("p256 explicit curve parameters", P256, _fixed(EXPLICIT_P256)),
        (
            "secp256k1 key (another curve's OID)",
            P256,
            lambda: _spki(ec.generate_private_key(ec.SECP256K1()).public_key()),
        ),
        ("p256 key with a byte after it", P256, lambda: _spki(honest_p256()) + b"\x00"),
        (
            "RSA key as P-256",
            P256,
            lambda: _spki(
                rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
            ),
        ),
        (
            "RSA key as Ed25519",
            ED,
            lambda: _spki(
                rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
            ),
        ),
        (
            "X25519 key (another OID) as Ed25519",
            ED,
            lambda: _spki(x25519.X25519PrivateKey.generate().public_key()),
        ),
        ("Ed448 key as Ed25519", ED, lambda: _spki(ed448.Ed448PrivateKey.generate().public_key())),
        ("Ed25519 key as P-256", P256, lambda: ED25519_SPKI_PREFIX + _honest_ed25519()),
        ("P-256 key as Ed25519", ED, lambda: _spki(honest_p256())),
        (
            "ed25519 key in BER (long-form length)",
            ED,
            lambda: bytes.fromhex("30812a300506032b6570032100") + _honest_ed25519(),
        ),
    ]
    return out


BAD = _bad_keys()
BAD_IDS = [name for name, _, _ in BAD]


@pytest.fixture(scope="module")
def fed() -> Federation:
    return make_federation()


@pytest.mark.parametrize(("name", "algorithm", "make"), BAD, ids=BAD_IDS)
def test_a_bad_key_cannot_go_into_a_bundle(
    name: str, algorithm: KeyAlgorithm, make: Callable[[], bytes]
) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_public_key(algorithm, make())
    assert e.value.reason == "BAD_PUBLIC_KEY", name


def _public_key_pb(algorithm: KeyAlgorithm, spki: bytes) -> trust_pb2.PublicKey:
    return trust_pb2.PublicKey(
        key_id=hashlib.sha256(spki).hexdigest(), algorithm=algorithm.value, public_key_spki=spki
    )


@pytest.mark.parametrize(("name", "algorithm", "make"), BAD, ids=BAD_IDS)
def test_a_signed_bundle_holding_a_bad_key_is_refused(
    fed: Federation, name: str, algorithm: KeyAlgorithm, make: Callable[[], bytes]
) -> None:
    """Built by hand around the key check and signed correctly by the root keys."""
    pb = fed.next_bundle().to_proto()
    spki = make()
    pb.carrier_keys.append(
        trust_pb2.CarrierKey(
            key=_public_key_pb(algorithm, spki),
            carrier_id="cmcc",
            not_before=pb.issued_at,
            not_after=pb.expires_at,
            number_prefixes=["+86"],
        )
    )
    envelope = sign(
        BUNDLE_PAYLOAD_TYPE, pb.SerializeToString(deterministic=True), fed.root_keys[:2]
    )
    state = fed.state()
    with pytest.raises(InvalidArgument) as e:
        state.update_bundle(envelope, now=NOW)
    assert e.value.reason == "BAD_PUBLIC_KEY", name
    assert e.value.metadata == {"in": "bundle", "key_id": hashlib.sha256(spki).hexdigest()[:16]}
    assert state.bundle is not None and state.bundle.version == 1  # nothing of it was taken
    fresh = TrustedState(fed.root_envelope, now=NOW)
    with pytest.raises(InvalidArgument) as e:
        fresh.update_bundle(envelope, now=NOW)  # as the first bundle, too
    assert e.value.reason == "BAD_PUBLIC_KEY"


@pytest.mark.parametrize(("name", "algorithm", "make"), BAD, ids=BAD_IDS)
def test_a_signed_root_holding_a_bad_key_is_refused(
    fed: Federation, name: str, algorithm: KeyAlgorithm, make: Callable[[], bytes]
) -> None:
    """As a fourth root key: the root is refused whether pinned or rotated to."""
    pb = fed.root.to_proto()
    pb.keys.append(_public_key_pb(algorithm, make()))
    pinned = sign(ROOT_PAYLOAD_TYPE, pb.SerializeToString(deterministic=True), fed.root_keys)
    with pytest.raises(InvalidArgument) as e:
        TrustedState(pinned, now=NOW)
    assert e.value.reason == "BAD_PUBLIC_KEY", name
    assert e.value.metadata["in"] == "root"
    pb.version = 2
    rotated = sign(ROOT_PAYLOAD_TYPE, pb.SerializeToString(deterministic=True), fed.root_keys)
    state = fed.state()
    with pytest.raises(InvalidArgument) as e:
        state.update_root(rotated)
    assert e.value.reason == "BAD_PUBLIC_KEY"
    assert state.root.version == 1


@pytest.mark.parametrize("hexkey", [*SMALL_ORDER.values(), *NON_CANONICAL.values()])
def test_no_constructor_lets_a_small_order_or_non_canonical_ed25519_key_through(
    hexkey: str,
) -> None:
    raw = bytes.fromhex(hexkey)
    with pytest.raises(InvalidArgument) as e:
        VerifyKey.from_raw_ed25519(raw)
    assert e.value.reason == "BAD_PUBLIC_KEY"
    loaded = ed25519.Ed25519PublicKey.from_public_bytes(raw)  # cryptography takes any 32 bytes
    with pytest.raises(InvalidArgument):
        VerifyKey.from_public_key(loaded)
    spki = ED25519_SPKI_PREFIX + raw
    with pytest.raises(InvalidArgument):
        VerifyKey(hashlib.sha256(spki).hexdigest(), ED, spki, loaded)


def test_honest_keys_pass_and_keep_their_ids() -> None:
    for algorithm in KeyAlgorithm:
        for _ in range(20):
            public = SigningKey.generate(algorithm).public
            check_public_key(algorithm, public.spki)
            assert VerifyKey.from_spki(public.spki, algorithm).key_id == public.key_id


def test_every_wycheproof_key_passes() -> None:
    """The vectors' keys are honest keys; the check refuses none of them."""
    for name, algorithm in (
        ("ed25519_test.json", ED),
        ("ecdsa_secp256r1_sha256_p1363_test.json", P256),
    ):
        groups = json.loads((VECTORS / name).read_text())["testGroups"]
        for group in groups:
            check_public_key(algorithm, bytes.fromhex(group["publicKeyDer"]))
