"""``numfed platform serve | dead-letters | replay --config FILE``.

``dead-letters`` and ``replay`` talk to the running platform's PlatformAdminService on its Unix
socket (``platform.admin_socket``, or the default of ``platform_stubs.admin.socket_path``), as
the platform's own OS user: the platform owns its database and its trust, and replays with
both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from numfed.cli import Command
from numfed.serving import serve_arguments, serve_command

__all__ = ["PLATFORM"]

_SERVE = serve_command("platform", "run a reference platform", "platform_stubs.reference:serve")
CALL_TIMEOUT = 60.0
"""Seconds a replay may take (it may fetch the trust bundle and applies batch by batch)."""


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="run a reference platform until SIGTERM or Ctrl-C")
    serve_arguments(serve, "platform")
    dead = actions.add_parser(
        "dead-letters",
        help="list the event batches the platform set aside",
        description="List the event batches the running platform acknowledged without "
        "applying them: refused for a final reason, or still not judged after its bounded "
        "retries (platform.event_retry_limit, platform.event_retry_window).",
    )
    dead.add_argument("--config", type=Path, required=True, help="platform TOML config")
    dead.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    replay = actions.add_parser(
        "replay",
        help="verify and apply dead letters again with the platform's current trust",
        description="Verify and apply dead letters again, oldest first, with the running "
        "platform's current trust bundle (fetched first if it may be behind). Applied ones "
        "leave the list; events already applied are not applied twice.",
    )
    replay.add_argument("--config", type=Path, required=True, help="platform TOML config")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, action="append", metavar="N", help="a dead letter's seq")
    which.add_argument("--all", action="store_true", help="every dead letter")


def _run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        return _SERVE.run(args)
    from numfed.config import load_platform_config
    from platform_stubs.admin import socket_path

    socket = socket_path(load_platform_config(args.config))
    if args.action == "dead-letters":
        return asyncio.run(_list(socket, as_json=args.json))
    return asyncio.run(_replay(socket, seqs=args.seq or [], every=args.all))


async def _call(socket: Path, method: str, request: Any) -> Any:
    import grpc

    from numfed.errors import Unavailable
    from numfed.rpc import error_from_rpc
    from numfed.v1 import platform_admin_pb2_grpc
    from platform_stubs.admin import admin_channel

    async with admin_channel(socket) as channel:
        stub = platform_admin_pb2_grpc.PlatformAdminServiceStub(channel)
        try:
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    "PLATFORM_NOT_RUNNING", f"no platform answers on {socket}: {exc.details()}"
                ) from exc
            raise error_from_rpc(exc) from exc


def _batch_summary(payload: bytes) -> tuple[str, int]:
    """The carrier a batch names and its number of events, as it says (not verified)."""
    from google.protobuf.message import DecodeError

    from numfed.v1 import events_pb2

    try:
        batch = events_pb2.EventBatch.FromString(payload)
    except DecodeError:
        return "?", 0
    return batch.carrier_id or "?", len(batch.events)


async def _list(socket: Path, *, as_json: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    from numfed.timeutil import from_timestamp
    from numfed.v1 import platform_admin_pb2

    answer = await _call(socket, "ListDeadLetters", platform_admin_pb2.ListDeadLettersRequest())
    rows = []
    for d in answer.dead_letters:
        carrier, events = _batch_summary(d.batch.payload)
        rows.append(
            {
                "seq": d.seq,
                "carrier": carrier,
                "events": events,
                "reason": d.reason,
                "may_be_stale": d.may_be_stale,
                "attempts": d.attempts,
                "first_seen": from_timestamp(d.first_seen_time).isoformat(),
                "last_seen": from_timestamp(d.last_seen_time).isoformat(),
            }
        )
    if as_json:
        print(json.dumps({"dead_letters": rows}, indent=2))
        return 0
    console = Console()
    if not rows:
        console.print("no dead letters")
        return 0
    table = Table(title=f"{len(rows)} dead letter(s)", title_justify="left")
    for column in ("seq", "carrier", "events", "reason", "may be stale", "attempts", "last seen"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["seq"]),
            str(r["carrier"]),
            str(r["events"]),
            str(r["reason"]),
            "yes" if r["may_be_stale"] else "no (final)",
            str(r["attempts"]),
            str(r["last_seen"]),
        )
    console.print(table)
    return 0


async def _replay(socket: Path, *, seqs: list[int], every: bool) -> int:
    from rich.console import Console

    from numfed.rpc import error_info
    from numfed.v1 import platform_admin_pb2

    if any(s < 1 for s in seqs):
        from numfed.errors import InvalidArgument

        raise InvalidArgument("BAD_SEQ", "a seq is a positive integer")
    answer = await _call(
        socket,
        "ReplayDeadLetters",
        platform_admin_pb2.ReplayDeadLettersRequest(seqs=seqs, all=every),
    )
    console = Console()
    still = 0
    for r in answer.results:
        if r.status.code == 0:
            console.print(f"seq {r.seq}: applied, off the list")
        else:
            info = error_info(r.status)
            still += 1
            console.print(f"seq {r.seq}: refused again ({info.reason if info else r.status.code})")
    if not answer.results:
        console.print("no dead letters to replay")
    return 1 if still else 0


PLATFORM = Command(
    "platform", "run a reference platform; see and replay its dead letters", _configure, _run
)
