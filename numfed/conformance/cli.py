"""``numfed conformance platform|carrier``: run the kit, print a table, write JUnit XML."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from numfed.cli import Command

__all__ = ["CONFORMANCE"]


def _configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="MEMBER")
    platform = kinds.add_parser(
        "platform",
        help="check a platform's PlatformService (it must serve ConformanceService)",
        description="Play the gateway and the carriers against a platform in conformance mode. "
        "The platform must be configured with the test PKI and trust files given here and "
        "with --gateway-listen as its gateway address.",
    )
    platform.add_argument("--target", required=True, metavar="HOST:PORT", help="the platform")
    platform.add_argument("--id", required=True, dest="member_id", help="its platform id")
    platform.add_argument(
        "--gateway-listen",
        required=True,
        metavar="HOST:PORT",
        help="where the kit serves the trust bundle (the platform's gateway address)",
    )
    for sub in (platform,):
        sub.add_argument("--pki", required=True, type=Path, help="`numfed pki init` directory")
        sub.add_argument(
            "--trust", required=True, type=Path, help="trust files (root-1.pb … bundle.pb)"
        )
        sub.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
        sub.add_argument(
            "--only", default="", metavar="NAME,…", help="run only these checks (comma-separated)"
        )
        sub.add_argument(
            "--wait", type=float, default=20.0, help="seconds to wait for the member to be ready"
        )


def _run(args: argparse.Namespace) -> int:
    from numfed.conformance.platform import PlatformTarget, run_platform_kit
    from numfed.conformance.report import print_table, write_junit

    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    target = PlatformTarget(
        target=args.target,
        platform_id=args.member_id,
        pki_dir=args.pki,
        trust_dir=args.trust,
        gateway_listen=args.gateway_listen,
    )
    results = asyncio.run(run_platform_kit(target, only=only, wait=args.wait))
    suite = f"platform {args.member_id}"
    print_table(suite, results)
    if args.junit is not None:
        write_junit(args.junit, f"platform.{args.member_id}", results)
    return 0 if results and all(r.passed for r in results) else 1


CONFORMANCE = Command(
    "conformance", "check a member against the federation's rules (kit)", _configure, _run
)
