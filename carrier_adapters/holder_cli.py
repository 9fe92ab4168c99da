"""``numfed holder``: the holder's journey from a terminal, against a carrier's holder channel.

For carrier integrators and for trying a federation by hand. Each step is one command; the
verification and the holder session are kept between them in a small state file (``--session``,
mode 0600; delete it to sign out)::

    numfed holder start +8613812345678 --name 王伟 --id-number 11010119900101123X \\
        --target 127.0.0.1:7102          # a code goes to the number by SMS
    numfed holder confirm 123456         # the session; what platforms will see
    numfed holder query                  # previous holders' bindings, per platform
    numfed holder release --watch        # release them; live progress
    numfed holder own                    # the holder's own bindings, with refs
    numfed holder own --release REF --watch
    numfed holder proof                  # a holder proof, printed whole

It speaks HolderService only, like the holder's page: every rule is the carrier's. Refusals print
as the same sentences the page shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from numfed.cli import Command

__all__ = ["HOLDER"]

DEFAULT_SESSION = Path("numfed-holder-session.json")
NAMES = {"carrier_zh": "该运营商", "carrier_en": "This carrier"}


@dataclass
class Saved:
    """What ``--session FILE`` keeps between commands."""

    target: str
    number: str
    verification_id: str = ""
    session_token: str = ""
    tenure_start: str = ""
    operations: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Saved:
        from numfed.errors import FailedPrecondition

        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise FailedPrecondition(
                "NO_HOLDER_SESSION", f"no usable {path}: run `numfed holder start` first"
            ) from exc

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, ensure_ascii=False, indent=1)


def _configure(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--session",
        type=Path,
        default=DEFAULT_SESSION,
        metavar="FILE",
        help=f"where the verification and session are kept (default: ./{DEFAULT_SESSION})",
    )
    common.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="the carrier's holder channel (its holder_listen); `start` needs it, later steps "
        "take it from the session file",
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help: str) -> argparse.ArgumentParser:
        return steps.add_parser(name, help=help, description=help, parents=[common])

    start = step("start", "check name and ID number; a code goes out by SMS")
    start.add_argument("number", help="the number, E.164 (+8613812345678)")
    start.add_argument("--name", required=True, help="the holder's name as registered")
    start.add_argument("--id-number", required=True, help="the holder's ID number")
    confirm = step("confirm", "the SMS code: opens a 15-minute session")
    confirm.add_argument("code")
    query = step("query", "bindings previous holders left, per platform")
    query.add_argument("--platform", action="append", default=[], help="ask only these")
    release = step("release", "release previous holders' bindings")
    release.add_argument("--platform", action="append", default=[], help="only on these")
    release.add_argument("--watch", action="store_true", help="follow it until done")
    release.add_argument("--request-id", help="to retry a release safely (printed at start)")
    own = step("own", "your own bindings; --release REF releases one")
    own.add_argument("--release", nargs="+", default=[], metavar="REF", help="refs to release")
    own.add_argument("--watch", action="store_true", help="follow the release until done")
    step("proof", "a holder proof anyone can check offline, printed whole")


def _run(args: argparse.Namespace) -> int:
    from carrier_adapters.sentences import explain
    from numfed.errors import NumfedError

    console = Console(highlight=False)
    try:
        asyncio.run(_step(args, console))
    except NumfedError as err:
        said = explain(err, "en", **NAMES)
        print(f"numfed holder: {said} ({err.reason})", file=sys.stderr)
        return 2
    return 0


async def _step(args: argparse.Namespace, console: Console) -> None:
    from carrier_adapters.web.client import HolderClient
    from numfed.errors import InvalidArgument

    if args.step == "start":
        if not args.target:
            raise InvalidArgument("NO_TARGET", "start needs --target HOST:PORT")
        saved = Saved(args.target, args.number)
    else:
        saved = Saved.load(args.session)
        saved.target = args.target or saved.target
    client = HolderClient(saved.target)
    try:
        await STEPS[args.step](client, saved, args, console)
    finally:
        await client.close()
        saved.save(args.session)


async def _start(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.timeutil import from_timestamp

    answer = await client.start(saved.number, args.name, args.id_number)
    saved.verification_id = answer.verification_id
    expires = from_timestamp(answer.expire_time)
    console.print(
        f"A code was sent by SMS to {saved.number}; valid until {expires:%H:%M:%S} UTC.\n"
        f"Next: numfed holder confirm CODE"
    )


async def _confirm(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.timeutil import from_timestamp
    from numfed.v1 import claim_pb2

    if not saved.verification_id:
        from numfed.errors import FailedPrecondition

        raise FailedPrecondition("VERIFICATION_NOT_FOUND", "no verification in the session file")
    session = await client.confirm(saved.verification_id, args.code)
    saved.verification_id = ""
    saved.session_token = session.session_token
    x = from_timestamp(session.tenure_start)
    saved.tenure_start = x.isoformat()
    claim = await client.preview(saved.session_token, claim_pb2.PURPOSE_QUERY_PRIOR)
    console.print(
        f"Verified. Your carrier will attest that {saved.number} has been held by you since "
        f"{x:%Y-%m-%d %H:%M} UTC (X). The session lasts 15 minutes."
    )
    console.print("[bold]What platforms receive: this claim, signed, and nothing else[/]")
    table = Table()
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    issued, expires = from_timestamp(claim.issued_at), from_timestamp(claim.expires_at)
    for name, value in (
        ("number", claim.number),
        ("carrier_id", claim.carrier_id),
        ("tenure_start (X)", f"{from_timestamp(claim.tenure_start):%Y-%m-%d %H:%M:%S} UTC"),
        ("purpose", claim_pb2.Purpose.Name(claim.purpose)),
        ("valid", f"{issued:%H:%M:%S} to {expires:%H:%M:%S} UTC"),
        ("claim_id", f"{claim.claim_id.hex()} (random; each claim has its own)"),
    ):
        table.add_row(name, value)
    console.print(table)


def _outcome(r: Any, *, release: bool = False, deadline: str = "") -> str:
    from carrier_adapters.web.i18n import TEXT
    from numfed.v1 import gateway_pb2

    count = sum(b.count for b in r.bindings)
    words = {
        gateway_pb2.PLATFORM_OUTCOME_FOUND: ("released", "found"),
        gateway_pb2.PLATFORM_OUTCOME_NONE: ("nothing_to_release", "clean"),
        gateway_pb2.PLATFORM_OUTCOME_UNAVAILABLE: ("retrying", "no_answer"),
        gateway_pb2.PLATFORM_OUTCOME_REFUSED: ("refused", "refused"),
        gateway_pb2.PLATFORM_OUTCOME_EXPIRED: ("expired", "expired"),
    }.get(r.outcome, ("waiting", "waiting"))
    key = words[0] if release else words[1]
    return TEXT[key].say("en", count=count, deadline=deadline or "its deadline")


def _results(
    console: Console, title: str, results: Sequence[Any], *, release: bool = False
) -> None:
    console.print(f"[bold]{title}[/]")  # on a line of its own: never wrapped to the table
    table = Table()
    table.add_column("platform", no_wrap=True)
    table.add_column("released" if release else "answer")
    table.add_column("bindings (masked)", overflow="fold")
    for r in results:
        labels = "\n".join(b.masked_label for b in r.bindings) or "—"
        table.add_row(r.platform_id, _outcome(r, release=release), labels)
    console.print(table)


def _token(saved: Saved) -> str:
    if not saved.session_token:
        from numfed.errors import Unauthenticated

        raise Unauthenticated("NO_SESSION", "confirm first")
    return saved.session_token


async def _query(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.v1 import holder_pb2

    results = await client.query(_token(saved), holder_pb2.BINDING_SCOPE_PRIOR, args.platform)
    _results(console, "Bindings previous holders left (made before X)", results)
    found = [r.platform_id for r in results if r.bindings]
    if found:
        console.print(f"Next: numfed holder release --watch   (releases on {', '.join(found)})")
    else:
        console.print("Nothing of previous holders is bound on any platform that answered.")


async def _release(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.v1 import holder_pb2

    request_id = args.request_id or uuid.uuid4().hex
    console.print(f"request_id {request_id} (retry with --request-id to be safe)")
    op = await client.release(
        _token(saved), holder_pb2.BINDING_SCOPE_PRIOR, request_id, platform_ids=args.platform
    )
    await _follow(client, saved, op, args.watch, console)


async def _own(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.errors import InvalidArgument
    from numfed.v1 import holder_pb2

    token = _token(saved)
    results = await client.query(token, holder_pb2.BINDING_SCOPE_OWN)
    where = {b.binding_ref: r.platform_id for r in results for b in r.bindings}
    if not args.release:
        console.print("[bold]Your own bindings (made since X)[/]")
        table = Table()
        for col in ("platform", "binding (masked)", "ref"):
            table.add_column(col, overflow="fold")
        for r in results:
            for b in r.bindings:
                table.add_row(r.platform_id, b.masked_label, b.binding_ref)
        console.print(table)
        console.print("Release one: numfed holder own --release REF --watch")
        return
    unknown = [ref for ref in args.release if ref not in where]
    if unknown:
        raise InvalidArgument("NO_BINDINGS_SELECTED", f"not your bindings' refs: {unknown}")
    # A platform refuses refs that are not its own: one release per platform.
    for platform in sorted({where[ref] for ref in args.release}):
        refs = [ref for ref in args.release if where[ref] == platform]
        op = await client.release(
            token,
            holder_pb2.BINDING_SCOPE_OWN,
            uuid.uuid4().hex,
            refs=refs,
            platform_ids=[platform],
        )
        await _follow(client, saved, op, args.watch, console, own=True)


async def _follow(
    client: Any, saved: Saved, op: Any, watch: bool, console: Console, *, own: bool = False
) -> None:
    from numfed.timeutil import from_timestamp
    from numfed.v1 import gateway_pb2

    saved.operations.append(op.name)
    console.print(f"Release accepted: {op.name} (stored; it will not be lost)")
    if not watch:
        return
    meta = gateway_pb2.ReleaseMetadata()
    with Progress(
        TextColumn("  release"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("platforms"),
        console=console,
    ) as bar:
        task = bar.add_task("release", total=None)
        async for update in client.watch(saved.session_token, op.name):
            if update.metadata.Unpack(meta):
                bar.update(task, total=meta.platforms_total, completed=meta.platforms_done)
            op = update
    response = gateway_pb2.ReleaseResponse()
    op.response.Unpack(response)
    deadline = f"{from_timestamp(meta.deadline):%H:%M} UTC" if meta.HasField("deadline") else ""
    _results(console, f"Release {op.name}: done", response.results, release=True)
    if deadline and any(
        r.outcome == gateway_pb2.PLATFORM_OUTCOME_UNAVAILABLE for r in response.results
    ):
        console.print(f"Platforms that did not answer are tried again until {deadline}.")
    if own:
        console.print("Only the binding(s) you picked were released; accounts are not deleted.")
    else:
        console.print(
            "Accounts are not deleted; your own bindings (made since X) were not touched."
        )


async def _proof(client: Any, saved: Saved, args: argparse.Namespace, console: Console) -> None:
    from numfed.timeutil import from_timestamp

    issued = await client.proof(_token(saved))
    expires = from_timestamp(issued.expire_time)
    console.print(f"Holder proof for {saved.number}, valid until {expires:%Y-%m-%d %H:%M} UTC:")
    print(issued.token, flush=True)  # whole, on its own line: never wrapped or cut
    console.print(
        "Anyone with the federation's trust files can check it offline:\n"
        "  numfed verify TOKEN --trust TRUST_DIR"
    )


STEPS = {
    "start": _start,
    "confirm": _confirm,
    "query": _query,
    "release": _release,
    "own": _own,
    "proof": _proof,
}

HOLDER = Command(
    "holder",
    "the holder's journey against a carrier's holder channel (start, confirm, query, release, "
    "own, proof)",
    _configure,
    _run,
)
