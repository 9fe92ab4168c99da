"""``numfed conformance platform|carrier|checks|init``: run the kit against a member.

Exit codes: 0 when every check passed (expected failures aside), 1 when one failed or an
expected failure passed, 2 on a usage error, 3 when the target could not be reached at all (one
line says why, instead of a failure per check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from numfed.cli import Command

__all__ = ["CONFORMANCE", "checks_json", "checks_markdown"]

EXIT_NOT_CONFORMANT = 1
EXIT_UNREACHABLE = 3
TEST_BLOCK = "+86170"
"""The numbering-plan block ``init`` gives a carrier the demo plan does not know."""


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
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the results as JSON (check, rule ids, status, detail, seconds, kit)",
    )
    p.add_argument(
        "--xfails",
        type=Path,
        metavar="FILE",
        help="expected failures, one check, rule id or family (PLAT-TRUST) a line; a listed "
        "check that passes fails the run",
    )
    p.add_argument("--only", type=_names, default=(), metavar="CHECK,…", help="run these only")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each check may take (default: 30)"
    )
    p.add_argument(
        "--format",
        choices=("auto", "table", "compact"),
        default="auto",
        help="a table, or one line per check; auto: compact unless the output is a terminal",
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
    platform.add_argument(
        "--dump",
        type=Path,
        metavar="DIR",
        help="write every trust answer the kit serves there (GetTrustBundleResponse bytes and "
        "an index.jsonl), to replay a failing check",
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
    checks = actions.add_parser(
        "checks",
        help="list every check with the rules it tests, and the rules no check tests",
        description="List the kit's checks and, from the spec (docs/spec/), every rule no "
        "check tests. Exit 1 when a MUST rule has no check.",
    )
    shape = checks.add_mutually_exclusive_group()
    shape.add_argument(
        "--json",
        action="store_true",
        help="print [{check, rule_ids, level, role, rule, why}] as JSON",
    )
    shape.add_argument(
        "--markdown", action="store_true", help="print the tables of docs/joining.md"
    )
    checks.add_argument(
        "--spec", type=Path, metavar="DIR", help="the spec's directory (default: docs/spec)"
    )
    init = actions.add_parser(
        "init",
        help="lay out a test PKI, trust files and a conformance-mode config for one member",
        description="Create DIR (absent or empty) with pki/ (a test CA, the gateway's and the "
        "member's certificates, root keys, a carrier's signing key), trust/ (root-1.pb to pin "
        "and bundle.pb) and a config for the reference member in conformance mode; print the "
        "commands that run the member and the kit. A carrier id the reference adapters do not "
        f"know gets the generic adapter and the test block {TEST_BLOCK} of the numbering plan.",
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


def checks_json() -> list[dict[str, Any]]:
    """Every check of both suites: name, rule ids, level, role, rule and why."""
    from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE

    return [
        {
            "check": c.name,
            "rule_ids": list(c.rule_ids),
            "level": c.level.value,
            "role": suite.role,
            "rule": c.rule,
            "why": c.why,
        }
        for suite in (PLATFORM_SUITE, CARRIER_SUITE)
        for c, _ in suite.checks
    ]


def checks_markdown() -> str:
    """The check tables of docs/joining.md, one per role, generated from the suites."""
    out = []
    for role in ("platform", "carrier"):
        out += [f"### {role.capitalize()} checks", "", "| check | rules | rule |", "|---|---|---|"]
        for c in checks_json():
            if c["role"] == role:
                rules = ", ".join(f"`{r}`" for r in c["rule_ids"])
                rule = c["rule"].replace("|", "\\|")
                out.append(f"| `{c['check']}` | {rules} | {rule} |")
        out.append("")
    return "\n".join(out)


def _checks(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from numfed.conformance import CARRIER_SUITE, PLATFORM_SUITE
    from numfed.conformance.spec import Level, load_rules, uncovered

    if args.json:
        print(json.dumps(checks_json(), indent=2, ensure_ascii=False))
    elif args.markdown:
        print(checks_markdown())
    else:
        for suite in (PLATFORM_SUITE, CARRIER_SUITE):
            table = Table(title=suite.name, title_justify="left", show_lines=True)
            table.add_column("check", no_wrap=True)
            table.add_column("rules", no_wrap=True)
            table.add_column("rule, and why it matters", overflow="fold")
            for check, _ in suite.checks:
                table.add_row(
                    check.name, "\n".join(check.rule_ids), f"{check.rule}\n[dim]{check.why}[/]"
                )
            console.print(table)
    rules = load_rules(args.spec)
    missing = uncovered(rules, PLATFORM_SUITE.rule_ids + CARRIER_SUITE.rule_ids)
    must = [r for r in missing if r.level is Level.MUST]
    if not (args.json or args.markdown):
        console.print(f"MUST rules with no check: {', '.join(r.id for r in must) or 'none'}")
        others = [f"{r.id} ({r.level.value})" for r in missing if r.level is not Level.MUST]
        console.print(f"Other rules the kit cannot observe: {', '.join(others) or 'none'}")
    return EXIT_NOT_CONFORMANT if must else 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from numfed.conformance import (
        CARRIER_SUITE,
        PLATFORM_SUITE,
        CarrierTarget,
        PlatformTarget,
        Xfails,
        render,
        render_compact,
        run_carrier_kit,
        run_platform_kit,
        write_json,
        write_junit,
    )
    from numfed.conformance.report import Status

    console = Console()
    if args.action == "init":
        _init(args, console)
        return 0
    if args.action == "checks":
        return _checks(args, console)
    suite = PLATFORM_SUITE if args.action == "platform" else CARRIER_SUITE
    xfails = Xfails.load(args.xfails, [c for c, _ in suite.checks]) if args.xfails else None
    if args.action == "platform":
        target = PlatformTarget(args.target, args.platform_id, args.pki, args.listen, args.dump)
        run = run_platform_kit(target, only=args.only, timeout=args.timeout, xfails=xfails)
    else:
        carrier = CarrierTarget(args.target, args.carrier_id, args.pki, args.trust)
        run = run_carrier_kit(carrier, only=args.only, timeout=args.timeout, xfails=xfails)
    report = asyncio.run(run)
    for path, write in ((args.junit, write_junit), (args.json, write_json)):
        if path is not None:
            write(report, path)
    first = report.results[0] if report.results else None
    if first is not None and first.check.gate and first.status is Status.FAIL:
        console.print(f"{report.suite}: {first.detail}", markup=False, soft_wrap=True)
        return EXIT_UNREACHABLE
    compact = args.format == "compact" or (args.format == "auto" and not console.is_terminal)
    (render_compact if compact else render)(report, console)
    for path in (args.junit, args.json):
        if path is not None:
            console.print(f"written: {path}", markup=False)
    return 0 if report.passed else EXIT_NOT_CONFORMANT


def _init(args: argparse.Namespace, console: object) -> None:
    from datetime import UTC, datetime

    from rich.console import Console

    from numfed import pki
    from numfed.federation import NUMBER_RANGES, number_plan, write_trust
    from numfed.identity import PeerId, Role

    assert isinstance(console, Console)
    root: Path = args.directory
    now = datetime.now(UTC)
    carriers = (args.carrier,) if args.carrier else ()
    platforms = (args.platform,) if args.platform else ()
    for member in carriers + platforms:  # checks the id before anything is written
        PeerId(Role.CARRIER if args.carrier else Role.PLATFORM, member)
    plan = number_plan(carriers)
    unknown = [c for c in carriers if c not in NUMBER_RANGES]
    for c in unknown:
        plan[TEST_BLOCK] = c
    pki.init_pki(root / "pki", carriers=carriers, platforms=platforms, now=now)
    write_trust(root / "pki", root / "trust", now=now, carriers=carriers, number_ranges=plan)
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
        generic = (
            (
                "# Not one of the reference adapters: the generic adapter serves this id, with\n"
                "# the particulars below (carrier_adapters/generic.py).\n"
                f'display_name = "{args.carrier}"\n'
                f'sms_signature = "【{args.carrier}】"\n'
                'time_zone = "UTC"              # the zone whose calendar days it answers about\n'
            )
            if args.carrier in unknown
            else ""
        )
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
            + generic
        )
        kit = (
            f"numfed conformance carrier --target {listen} --carrier-id {args.carrier} "
            f"--pki {root / 'pki'} --trust {root / 'trust'} --junit conformance.xml"
        )
        serve = f"numfed carrier serve --config {config}"
    console.print(
        f"Test PKI in {root / 'pki'}, trust files in {root / 'trust'}, config {config}.",
        markup=False,
        soft_wrap=True,
    )
    console.print("Run the reference member (or your own, with the same files) and the kit:")
    console.print(f"  {serve}", markup=False, soft_wrap=True)
    console.print(f"  {kit}", markup=False, soft_wrap=True)


CONFORMANCE = Command(
    "conformance",
    "check that a platform or carrier keeps the federation's rules",
    _configure,
    _run,
)
