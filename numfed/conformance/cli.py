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
    init = actions.add_parser(
        "init",
        help="lay out a test PKI, trust files and a conformance-mode config for one member",
        description="Create DIR (absent or empty) with pki/ (a test CA, the gateway's and the "
        "member's certificates, root keys, a carrier's signing key), trust/ (root-1.pb to pin "
        "and bundle.pb) and a config for the reference member in conformance mode; print the "
        "commands that run the member and the kit.",
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    who = init.add_mutually_exclusive_group(required=True)
    who.add_argument("--platform", metavar="ID", help="the platform's id")
    who.add_argument("--carrier", metavar="ID", help="the carrier's id")
    init.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where the member listens (default: 127.0.0.1:7201, a carrier 127.0.0.1:7101)",
    )
    init.add_argument(
        "--gateway",
        default="127.0.0.1:7000",
        metavar="HOST:PORT",
        help="where the kit serves GatewayService (default: 127.0.0.1:7000)",
    )


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
    if args.action == "init":
        _init(args, console)
        return 0
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


def _init(args: argparse.Namespace, console: object) -> None:
    from datetime import UTC, datetime

    from rich.console import Console

    from numfed import pki
    from numfed.federation import write_trust
    from numfed.identity import PeerId, Role

    assert isinstance(console, Console)
    root: Path = args.directory
    now = datetime.now(UTC)
    carriers = (args.carrier,) if args.carrier else ()
    platforms = (args.platform,) if args.platform else ()
    for member in carriers + platforms:  # checks the id before anything is written
        PeerId(Role.CARRIER if args.carrier else Role.PLATFORM, member)
    pki.init_pki(root / "pki", carriers=carriers, platforms=platforms, now=now)
    write_trust(root / "pki", root / "trust", now=now, carriers=carriers)
    if args.platform:
        listen = args.listen or "127.0.0.1:7201"
        config = root / f"platform-{args.platform}.toml"
        config.write_text(
            "[platform]\n"
            f'id = "{args.platform}"\n'
            f'listen = "{listen}"\n'
            'pki_dir = "pki"\n'
            'trust_dir = "trust"\n'
            f'state_dir = "state/platform-{args.platform}"\n'
            f'gateway = "{args.gateway}"     # the kit plays the gateway here\n'
            "seed_scenario = false\n"
            "conformance = true             # test only: serve PlatformConformanceService\n"
        )
        kit = (
            f"numfed conformance platform --target {listen} --platform-id {args.platform} "
            f"--pki {root / 'pki'} --listen {args.gateway} --junit conformance.xml"
        )
        serve = f"numfed platform serve --config {config}"
    else:
        listen = args.listen or "127.0.0.1:7101"
        host = listen.rsplit(":", 1)[0]
        holder = f"{host}:{int(listen.rsplit(':', 1)[1]) + 1}"
        config = root / f"carrier-{args.carrier}.toml"
        config.write_text(
            "[carrier]\n"
            f'id = "{args.carrier}"\n'
            f'listen = "{listen}"\n'
            f'holder_listen = "{holder}"\n'
            'pki_dir = "pki"\n'
            f'state_dir = "state/carrier-{args.carrier}"\n'
            f'gateway = "{args.gateway}"\n'
            "seed_scenario = false\n"
            "conformance = true             # test only: serve CarrierConformanceService\n"
        )
        kit = (
            f"numfed conformance carrier --target {listen} --carrier-id {args.carrier} "
            f"--pki {root / 'pki'} --trust {root / 'trust'} --junit conformance.xml"
        )
        serve = f"numfed carrier serve --config {config}"
    console.print(f"Test PKI in {root / 'pki'}, trust files in {root / 'trust'}, config {config}.")
    console.print("Run the reference member (or your own, with the same files) and the kit:")
    console.print(f"  {serve}", markup=False, soft_wrap=True)
    console.print(f"  {kit}", markup=False, soft_wrap=True)


CONFORMANCE = Command(
    "conformance",
    "check that a platform or carrier keeps the federation's rules",
    _configure,
    _run,
)
