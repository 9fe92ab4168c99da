"""``numfed platform serve --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from numfed.cli import Command

__all__ = ["PLATFORM"]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="run a reference platform until SIGTERM or Ctrl-C")
    serve.add_argument("--config", type=Path, required=True, help="platform TOML config")
    serve.add_argument("--log-level", default="INFO")


def _run(args: argparse.Namespace) -> int:
    from platform_stubs.reference import serve

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s platform %(levelname)s %(message)s"
    )
    asyncio.run(serve(args.config))
    return 0


PLATFORM = Command("platform", "run a reference platform", _configure, _run)
