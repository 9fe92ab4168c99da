"""The pseudonym is HMAC-SHA256 of the number under the gateway's key, whatever the key."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.pseudonym import Pseudonymizer

NUMBERS = ["+8613800138000", "+8618600000001", "", "+86 138", "号码", "x" * 200]


@pytest.mark.parametrize("key", [b"k" * 32, bytes(range(64)), bytes(range(65)), b"\xff" * 200])
def test_pseudonym_is_hmac_sha256_of_the_number(key: bytes) -> None:
    pseudonym = Pseudonymizer(key)
    for number in NUMBERS:
        expected = hmac.new(key, number.encode("utf-8"), hashlib.sha256).hexdigest()
        assert pseudonym(number) == expected
    # Each call starts afresh: an earlier number leaves nothing behind.
    assert pseudonym(NUMBERS[0]) == hmac.new(key, NUMBERS[0].encode(), hashlib.sha256).hexdigest()


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"k" * 31)
