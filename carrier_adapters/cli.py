"""``numfed carrier serve --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from numfed.cli import Command

__all__ = ["CARRIER"]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="run a carrier adapter until SIGTERM or Ctrl-C")
    serve.add_argument("--config", type=Path, required=True, help="carrier TOML config")
    serve.add_argument("--log-level", default="INFO")


def _run(args: argparse.Namespace) -> int:
    from carrier_adapters.base import serve

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s carrier %(levelname)s %(message)s"
    )
    asyncio.run(serve(args.config))
    return 0


CARRIER = Command("carrier", "run a carrier adapter", _configure, _run)
