"""``numfed conformance platform|carrier|checks``: run the kit against a member."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from numfed.cli import Command

__all__ = ["CONFORMANCE"]

EXIT_NOT_CONFORMANT = 1


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", required=True, metavar="HOST:PORT", help="the member's mTLS listener"
    )
    p.add_argument(
        "--pki",
        type=Path,
        required=True,
        metavar="DIR",
        help="the PKI (`numfed pki init`) that issued the member's certificate; the kit "
        "presents its gateway certificate",
    )
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--only", type=_names, default=(), metavar="CHECK,…", help="run these only")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each check may take (default: 30)"
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    platform = actions.add_parser(
        "platform",
        help="check a platform (it must run in conformance mode)",
        description="Play the gateway and the carriers against a platform. The platform runs "
        "with `conformance = true` and `gateway` set to the --listen address, and trusts the "
        "root of the PKI given (its trust_dir holds that PKI's root-1.pb).",
    )
    _common(platform)
    platform.add_argument("--platform-id", required=True, metavar="ID", help="the platform's id")
    platform.add_argument(
        "--listen",
        default="127.0.0.1:7000",
        metavar="HOST:PORT",
        help="where the kit serves GatewayService (the platform's `gateway`; default "
        "127.0.0.1:7000)",
    )
    carrier = actions.add_parser(
        "carrier",
        help="check a carrier adapter (it must run in conformance mode)",
        description="Play the gateway against a carrier adapter running with "
        "`conformance = true`; claims and event batches are verified under the trust files.",
    )
    _common(carrier)
    carrier.add_argument("--carrier-id", required=True, metavar="ID", help="the carrier's id")
    carrier.add_argument(
        "--trust",
        type=Path,
        required=True,
        metavar="DIR",
        help="trust files (root-1.pb … and bundle.pb) that hold the carrier's signing keys",
    )
    actions.add_parser("checks", help="list every check with its rule and why it matters")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from numfed.conformance import (
        CARRIER_SUITE,
        PLATFORM_SUITE,
        CarrierTarget,
        PlatformTarget,
        render,
        run_carrier_kit,
        run_platform_kit,
        write_junit,
    )

    console = Console()
    if args.action == "checks":
        for suite in (PLATFORM_SUITE, CARRIER_SUITE):
            table = Table(title=suite.name, title_justify="left", show_lines=True)
            table.add_column("check", no_wrap=True)
            table.add_column("rule", overflow="fold")
            table.add_column("why it matters", overflow="fold")
            for check, _ in suite.checks:
                table.add_row(check.name, check.rule, check.why)
            console.print(table)
        return 0
    if args.action == "platform":
        target = PlatformTarget(args.target, args.platform_id, args.pki, args.listen)
        report = asyncio.run(run_platform_kit(target, only=args.only, timeout=args.timeout))
    else:
        carrier = CarrierTarget(args.target, args.carrier_id, args.pki, args.trust)
        report = asyncio.run(run_carrier_kit(carrier, only=args.only, timeout=args.timeout))
    render(report, console)
    if args.junit is not None:
        write_junit(report, args.junit)
        console.print(f"JUnit XML written to {args.junit}")
    return 0 if report.passed else EXIT_NOT_CONFORMANT


CONFORMANCE = Command(
    "conformance",
    "check that a platform or carrier keeps the federation's rules",
    _configure,
    _run,
)
