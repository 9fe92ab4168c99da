"""A carrier key rotation for tests: the next bundle adds the new key, the carrier signs with it,
and the operator's command line (``numfed ...``) runs as its own process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from numfed import pki
from numfed.envelope import Envelope, SigningKey
from numfed.trust import CarrierKey, TrustBundle, sign_bundle

__all__ = ["dead_letters", "numfed", "rotated", "signed_bundle", "write_signing_key"]


def rotated(bundle: TrustBundle, carrier: str, new_key: SigningKey) -> TrustBundle:
    """The next bundle: ``carrier``'s new key added beside its old one, valid from an hour ago."""
    now = datetime.now(UTC)
    entry = CarrierKey(
        new_key.public, carrier, now - timedelta(hours=1), now + timedelta(days=365), ("+86",)
    )
    return dataclasses.replace(
        bundle,
        version=bundle.version + 1,
        issued_at=now,
        carrier_keys={**bundle.carrier_keys, new_key.key_id: entry},
    )


def signed_bundle(pki_dir: Path, bundle: TrustBundle) -> Envelope:
    """``bundle`` signed by a threshold (2) of the federation's root keys."""
    return sign_bundle(bundle, pki.load_root_signers(pki_dir)[:2])


def write_signing_key(pki_dir: Path, carrier: str, key: SigningKey) -> None:
    """Replace ``carrier``'s claim-signing key file (it signs with it from its next start)."""
    path = pki.PkiLayout(pki_dir).signing_key_path(carrier)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
    os.replace(tmp, path)


async def numfed(*args: str) -> tuple[int, str, str]:
    """Run ``numfed ARGS`` as its own process: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def dead_letters(config: Path) -> list[dict[str, Any]]:
    """``numfed platform dead-letters --config CONFIG --json``, parsed."""
    code, out, err = await numfed("platform", "dead-letters", "--config", str(config), "--json")
    assert code == 0, err
    letters: list[dict[str, Any]] = json.loads(out)["dead_letters"]
    return letters
