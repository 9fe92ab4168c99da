"""``numfed verify TOKEN --trust DIR``: check a holder proof offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from numfed.cli import Command

__all__ = ["VERIFY"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", help="the holder proof (nfp1.…)")
    parser.add_argument(
        "--trust", type=Path, required=True, help="trust directory (root-1.pb … , bundle.pb)"
    )


def _run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console

    from numfed.proof import verify_proof
    from numfed.trustfiles import load_trusted_state

    now = datetime.now(UTC)
    proven = verify_proof(args.token, load_trusted_state(args.trust, now=now), now=now)
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
