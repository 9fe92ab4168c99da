"""Keyed pseudonyms: the gateway stores HMAC-SHA256(key, number), never the number itself."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["Pseudonymizer", "load_or_create_key"]


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("pseudonym key must have at least 32 bytes")
        # Keyed once, here: every claim checked costs a pseudonym, and hmac.new's key setup per
        # call cost as much as the rest of it. A copy of the keyed state is HMAC-SHA256 all the
        # same.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, number: str) -> str:
        """The pseudonym of ``number``, ``HMAC-SHA256(key, number)`` in hex; of any string at
        all, since a refused claim's unverified number is audited by its pseudonym too (UTF-8:
        the same bytes as ASCII)."""
        mac = self._keyed.copy()
        mac.update(number.encode("utf-8"))
        return mac.hexdigest()


def load_or_create_key(
    path: Path, make: Callable[[], bytes] = lambda: secrets.token_bytes(32)
) -> bytes:
    """Read a secret key file, creating it (mode 0600) with ``make()`` on first start: the
    pseudonym key (32 random bytes), or the SSF SET signing key (a PEM).

    Replicas starting together may race to create it: one wins, the others read its key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(make())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if another replica got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()
