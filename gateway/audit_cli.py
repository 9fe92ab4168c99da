"""``numfed audit verify --config gateway.toml``: check the audit log's hash chain."""

from __future__ import annotations

import argparse
from pathlib import Path

from numfed.cli import Command

__all__ = ["AUDIT"]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", help="check that no audit entry was changed, removed or reordered"
    )
    verify.add_argument("--config", type=Path, required=True, help="gateway TOML config")


def _run(args: argparse.Namespace) -> int:
    import sqlalchemy as sa
    from rich.console import Console

    from gateway.audit import read_chain
    from numfed.config import load_gateway_config

    config = load_gateway_config(args.config)
    engine = sa.create_engine(config.database_url)
    try:
        report = read_chain(engine)
    finally:
        engine.dispose()
    console = Console()
    if report.ok:
        console.print(f"[green]audit log intact[/]: {report.entries} entries, hash chain verified")
        return 0
    console.print(f"[red]audit log broken at entry {report.first_bad_seq}[/]: {report.problem}")
    return 1


AUDIT = Command("audit", "verify the gateway's hash-chained audit log", _configure, _run)
