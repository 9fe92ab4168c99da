"""The ``numfed`` command line: one program, one subcommand per job.

Each subcommand is a :class:`Command` — a name, a one-line help, ``configure(parser)`` that adds
its arguments, and ``run(args) -> exit code`` — living in its own module as a module-level
constant. To add one, write the module and append ``"package.module:CONSTANT"`` to
:data:`COMMANDS`; the core package never imports a role's package except through this list.
Errors a command raises on purpose (:class:`numfed.errors.NumfedError`), and a file or address
the operating system refuses (:class:`OSError`), print as one ``numfed: error: REASON: …`` line
and exit with status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from numfed.errors import FailedPrecondition, NumfedError

__all__ = ["COMMANDS", "Command", "main", "os_error"]

EXIT_ERROR = 2


@dataclass(frozen=True)
class Command:
    """A top-level subcommand. ``configure`` may add nested subcommands (``pki init``)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def os_error(exc: OSError) -> NumfedError:
    """An operating system's refusal (a file missing or unreadable, a directory not writable)
    as one precise error naming the file."""
    if isinstance(exc, FileNotFoundError):
        reason = "FILE_NOT_FOUND"
    elif isinstance(exc, PermissionError):
        reason = "FILE_NOT_PERMITTED"
    else:
        reason = "OS_ERROR"
    what = exc.strerror or str(exc)
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return FailedPrecondition(reason, f"{where}{what}")


def _ids(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _configure_pki(parser: argparse.ArgumentParser) -> None:
    from numfed.pki import DEFAULT_CARRIERS, DEFAULT_PLATFORMS

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create a CA, member certificates, root keys, carrier signing keys, an audit key",
        description="Create a federation PKI in DIR (which must be absent or empty): a CA, "
        "an mTLS certificate for the gateway and each member, three federation root keys, "
        "one claim-signing key per carrier and the gateway's audit key (it signs checkpoints "
        "of the audit log).",
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument(
        "--carriers",
        type=_ids,
        default=DEFAULT_CARRIERS,
        metavar="ID,…",
        help=f"carrier ids (default: {','.join(DEFAULT_CARRIERS)})",
    )
    init.add_argument(
        "--platforms",
        type=_ids,
        default=DEFAULT_PLATFORMS,
        metavar="ID,…",
        help=f"platform ids (default: {','.join(DEFAULT_PLATFORMS)})",
    )
    init.add_argument(
        "--days", type=int, default=365, help="certificate validity in days (default: 365)"
    )
    revoke = actions.add_parser(
        "revoke",
        help="put a member's certificate on the CA's revocation list (ca-crl.pem)",
        description="Add the certificate of MEMBER in DIR (DIR/<role>/<id>/cert.pem) to the "
        "CA-signed revocation list DIR/ca-crl.pem, replacing that file atomically. Needs the CA "
        "key. Servers reading DIR refuse the certificate within a second, without a restart; "
        "copy ca-crl.pem to the PKI directory of every member that runs elsewhere.",
    )
    revoke.add_argument("directory", metavar="DIR", type=Path)
    revoke.add_argument(
        "--member",
        required=True,
        metavar="URI",
        help="the member whose certificate to revoke, e.g. spiffe://numfed/platform/weibo",
    )


def _run_pki(args: argparse.Namespace) -> int:
    if args.action == "revoke":
        return _run_pki_revoke(args)
    return _run_pki_init(args)


def _run_pki_revoke(args: argparse.Namespace) -> int:
    from numfed import pki
    from numfed.errors import InvalidArgument, Unauthenticated
    from numfed.identity import PeerId

    try:
        peer = PeerId.parse(args.member)
    except Unauthenticated as exc:
        raise InvalidArgument("BAD_MEMBER_ID", exc.message) from exc
    done = pki.revoke(args.directory, peer)
    layout = pki.PkiLayout(args.directory)
    if done.already:
        print(f"{peer.uri} (serial {done.serial:x}) was already revoked; nothing changed")
    else:
        print(
            f"revoked {peer.uri} (serial {done.serial:x}): {layout.crl_path} now lists "
            f"{done.revoked} certificate(s), CRL number {done.crl_number}"
        )
    return 0


def _run_pki_init(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from numfed import pki
    from numfed.errors import InvalidArgument
    from numfed.identity import Role

    if args.days < 1:
        raise InvalidArgument("BAD_VALIDITY", "--days must be at least 1")
    layout = pki.init_pki(
        args.directory,
        carriers=args.carriers,
        platforms=args.platforms,
        validity=timedelta(days=args.days),
    )
    table = Table(title=f"PKI written to {layout.root}", title_justify="left")
    table.add_column("identity", no_wrap=True)
    table.add_column("files", overflow="fold")
    roots = sorted(layout.root_key_path(1).parent.glob("root-*.key.pem"))
    numbers = ",".join(str(n) for n in range(1, len(roots) + 1))
    table.add_row("federation CA (P-256)", "ca.pem ca.key.pem")
    table.add_row("root keys (Ed25519)", f"root/root-{{{numbers}}}.key.pem")
    for peer in layout.members():
        names = {Role.CARRIER: "cert,key,signing.key", Role.GATEWAY: "cert,key,audit.key"}.get(
            peer.role, "cert,key"
        )
        table.add_row(peer.uri, f"{peer.role.value}/{peer.id}/{{{names}}}.pem")
    console = Console()
    console.print(table)
    console.print("Private keys are mode 0600. Keep the CA and root keys offline in production.")
    return 0


PKI = Command(
    "pki", "create the federation's keys and certificates; revoke one", _configure_pki, _run_pki
)

COMMANDS: tuple[str, ...] = (
    "numfed.cli:PKI",
    "numfed.federation_cli:FEDERATION",
    "numfed.trust_cli:TRUST",
    "gateway.cli:GATEWAY",
    "carrier_adapters.cli:CARRIER",
    "platform_stubs.cli:PLATFORM",
    "gateway.audit_cli:AUDIT",
    "gateway.status_cli:STATUS",
    "numfed.verify_cli:VERIFY",
    "carrier_adapters.holder_cli:HOLDER",
    "numfed.demo:DEMO",
    "numfed.conformance.cli:CONFORMANCE",
    "bench.suite:BENCH",
)
"""Every subcommand as ``module:attribute``, in the order ``numfed --help`` lists them."""


def _load(spec: str) -> Command:
    module, _, attr = spec.partition(":")
    command = getattr(importlib.import_module(module), attr)
    if not isinstance(command, Command):
        raise TypeError(f"{spec} is not a numfed.cli.Command")
    return command


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numfed",
        description="numfed: a gRPC federation gateway for recycled phone numbers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
        child.set_defaults(_run=command.run)
    return parser


def _print_error(err: NumfedError) -> None:
    message = " ".join(err.message.split())  # one line, whatever the message held
    print(f"numfed: error: {err.reason}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``numfed`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser([_load(spec) for spec in COMMANDS])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        code: int = args._run(args)
    except OSError as exc:
        _print_error(os_error(exc))
        return EXIT_ERROR
    except NumfedError as err:
        _print_error(err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
