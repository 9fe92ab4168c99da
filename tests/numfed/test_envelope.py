"""DSSE envelopes: the PAE encoding, sign/verify round trips, and what verification refuses."""

from __future__ import annotations

import pytest

from numfed.envelope import (
    MAX_SIGNATURES,
    Envelope,
    KeyAlgorithm,
    Signature,
    SigningKey,
    VerifyKey,
    key_map,
    pae,
    sign,
    verification_result,
    verify,
)
from numfed.errors import InvalidArgument, Unauthenticated
from numfed.v1 import claim_pb2

T = "application/vnd.numfed.test+proto"


def test_dsse_published_pae_example() -> None:
    # secure-systems-lab/dsse, protocol.md: the PAE of the HelloWorld example.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("类型", b"\x00") == "DSSEv1 6 类型 1 ".encode() + b"\x00"


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_round_trip(algorithm: KeyAlgorithm) -> None:
    key = SigningKey.generate(algorithm)
    env = sign(T, b"payload", [key])
    assert len(env.signatures[0].sig) == 64
    assert verify(env, key_map([key.public]), payload_type=T) == {key.key_id}
    again = Envelope.from_proto(env.to_proto())
    assert again == env


def test_tampered_payload_refused() -> None:
    key = SigningKey.generate()
    env = sign(T, b"payload", [key])
    bad = Envelope(b"payloaD", env.payload_type, env.signatures)
    with pytest.raises(Unauthenticated) as e:
        verify(bad, key_map([key.public]), payload_type=T)
    assert e.value.reason == "BAD_SIGNATURE"


def test_payload_type_is_covered_by_the_signature() -> None:
    key = SigningKey.generate()
    env = sign(T, b"payload", [key])
    swapped = Envelope(env.payload, "other/type", env.signatures)
    with pytest.raises(Unauthenticated) as e:
        verify(swapped, key_map([key.public]), payload_type=T)
    assert e.value.reason == "WRONG_PAYLOAD_TYPE"
    # Even when the verifier expects the swapped type, the signature does not cover it.
    with pytest.raises(Unauthenticated) as e:
        verify(swapped, key_map([key.public]), payload_type="other/type")
    assert e.value.reason == "BAD_SIGNATURE"


def test_unknown_key_refused() -> None:
    env = sign(T, b"p", [SigningKey.generate()])
    with pytest.raises(Unauthenticated) as e:
        verify(env, key_map([SigningKey.generate().public]), payload_type=T)
    assert e.value.reason == "UNKNOWN_KEY"


def test_same_key_twice_counts_once() -> None:
    key = SigningKey.generate()
    env = sign(T, b"p", [key, key])
    result = verification_result(env, key_map([key.public]), threshold=2, payload_type=T)
    assert result.signers == {key.key_id} and not result.verified
    with pytest.raises(Unauthenticated) as e:
        verify(env, key_map([key.public]), threshold=2, payload_type=T)
    assert e.value.reason == "THRESHOLD_NOT_MET"


def test_verification_result_reports_each_kind_of_signature() -> None:
    good, bad_key, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    env = sign(T, b"p", [good, stranger])
    forged = Signature(bad_key.key_id, good.sign_raw(b"something else"))
    env = Envelope(env.payload, env.payload_type, (*env.signatures, forged))
    result = verification_result(env, key_map([good.public, bad_key.public]), payload_type=T)
    assert result.signers == {good.key_id}
    assert result.unknown == {stranger.key_id}
    assert result.bad == {bad_key.key_id}
    assert result.verified and result.type_ok


@pytest.mark.parametrize("cut", [63, 65, 0])
def test_ecdsa_signature_of_wrong_length_refused(cut: int) -> None:
    key = SigningKey.generate(KeyAlgorithm.ECDSA_P256_SHA256)
    sig = key.sign_raw(pae(T, b"p"))
    wrong = (sig + b"\x00")[:cut] if cut else b""
    assert not key.public.verify_raw(wrong, pae(T, b"p"))
    assert key.public.verify_raw(sig, pae(T, b"p"))


def test_der_encoded_ecdsa_signature_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = SigningKey.generate(KeyAlgorithm.ECDSA_P256_SHA256)
    sig = key.sign_raw(b"m")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    assert not key.public.verify_raw(der, b"m")


def test_envelope_shape_limits() -> None:
    with pytest.raises(InvalidArgument) as e:
        Envelope.from_proto(claim_pb2.Envelope(payload=b"x" * 70_000, payload_type=T))
    assert e.value.reason == "ENVELOPE_TOO_LARGE"
    many = [claim_pb2.Signature(keyid="k", sig=b"s")] * (MAX_SIGNATURES + 1)
    with pytest.raises(InvalidArgument) as e:
        Envelope.from_proto(claim_pb2.Envelope(payload=b"x", payload_type=T, signatures=many))
    assert e.value.reason == "TOO_MANY_SIGNATURES"
    with pytest.raises(Unauthenticated) as unsigned:
        Envelope.from_proto(claim_pb2.Envelope(payload=b"x", payload_type=T))
    assert unsigned.value.reason == "UNSIGNED"


def test_key_id_must_be_the_keys_own() -> None:
    pb = SigningKey.generate().public.to_proto()
    pb.key_id = "0" * 64
    with pytest.raises(InvalidArgument) as e:
        VerifyKey.from_proto(pb)
    assert e.value.reason == "KEY_ID_MISMATCH"


def test_key_of_the_wrong_algorithm_refused() -> None:
    p256 = SigningKey.generate(KeyAlgorithm.ECDSA_P256_SHA256).public
    with pytest.raises(InvalidArgument):
        VerifyKey.from_spki(p256.spki, KeyAlgorithm.ED25519)


def test_pem_round_trip() -> None:
    for algorithm in KeyAlgorithm:
        key = SigningKey.generate(algorithm)
        assert SigningKey.from_pem(key.to_pem()).key_id == key.key_id
