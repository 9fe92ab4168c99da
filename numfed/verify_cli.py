"""``numfed verify TOKEN --trust DIR``: check a holder proof offline.

Exit status 0: the proof verifies. 1: it was read and does not verify (a changed byte, an
expired proof, a revoked or unknown key): one line says why. 2: nothing could be judged — the
token is not a proof, the file holding it or the trust directory cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from numfed.cli import Command

__all__ = ["EXIT_DOES_NOT_VERIFY", "VERIFY"]

EXIT_DOES_NOT_VERIFY = 1


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "token", help="the holder proof (nfp1.…), @FILE to read it from FILE, or - for stdin"
    )
    parser.add_argument(
        "--trust", type=Path, required=True, help="trust directory (root-1.pb … , bundle.pb)"
    )


def _token(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        return Path(arg[1:]).read_text(encoding="ascii", errors="replace")
    return arg


def _run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console

    from numfed.errors import NumfedError
    from numfed.proof import decode_proof, verify_proof
    from numfed.trustfiles import load_trusted_state

    now = datetime.now(UTC)
    token = _token(args.token)
    decode_proof(token)  # not a proof at all: exit 2, like an unreadable file
    trust = load_trusted_state(args.trust, now=now)
    try:
        proven = verify_proof(token, trust, now=now)
    except NumfedError as err:
        message = " ".join(err.message.split())
        print(f"numfed: the holder proof does not verify: {err.reason}: {message}")
        return EXIT_DOES_NOT_VERIFY
    Console().print(f"[green]valid holder proof[/]: {proven.statement()}")
    c = proven.claim
    Console().print(
        f"issued {c.issued_at:%Y-%m-%d %H:%M} UTC, valid until "
        f"{c.expires_at:%Y-%m-%d %H:%M} UTC, signing key {proven.key_id[:16]}…"
    )
    return 0


VERIFY = Command(
    "verify", "verify a holder proof offline against a trust directory", _configure, _run
)
