"""Running one numfed process: ``<role> serve --config FILE`` until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from numfed.cli import Command

__all__ = ["run_until_signalled", "serve_command"]


async def run_until_signalled(
    stop: Callable[[], Awaitable[None]], *, on_hangup: Callable[[], None] | None = None
) -> None:
    """Wait for SIGTERM or SIGINT, then stop gracefully; on SIGHUP call ``on_hangup`` (if
    given: re-read configuration) and keep running."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await signalled.wait()
    with contextlib.suppress(Exception):
        await stop()


def serve_command(name: str, help: str, serve: str) -> Command:
    """A ``name serve --config FILE`` command running ``serve`` ("module:async function")."""

    def configure(parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub = actions.add_parser("serve", help=f"{help} until SIGTERM or Ctrl-C")
        sub.add_argument("--config", type=Path, required=True, help=f"{name} TOML config")
        sub.add_argument("--log-level", default="INFO")

    def run(args: argparse.Namespace) -> int:
        module, _, function = serve.partition(":")
        main: Callable[[Path], Awaitable[None]] = getattr(importlib.import_module(module), function)
        logging.basicConfig(
            level=args.log_level, format=f"%(asctime)s {name} %(levelname)s %(message)s"
        )
        asyncio.run(main(args.config))  # type: ignore[arg-type]
        return 0

    return Command(name, help, configure, run)
