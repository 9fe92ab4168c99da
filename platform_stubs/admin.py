"""PlatformAdminService: the platform operator's view of dead letters, and their replay.

Served on a Unix domain socket in a directory only the platform's own OS user may enter (mode
0700, owned by that user; see :func:`socket_path`): only that user can connect, nothing is
reachable from the network, and no federation member is involved. The running platform does
the work (its store, its trust client, the same :class:`EventApplier` that applies delivered
batches), so a replay runs the same verification and authority rules as delivery, one batch at
a time with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import grpc

from numfed.config import PlatformConfig
from numfed.errors import InvalidArgument
from numfed.rpc import ServerHandle, error_status, ok_status, start_server
from numfed.staleness import STALE_VERIFIER_REASONS
from numfed.timeutil import to_timestamp
from numfed.v1 import claim_pb2, platform_admin_pb2, platform_admin_pb2_grpc
from platform_stubs.events import EventApplier

__all__ = [
    "ADMIN_SERVICE",
    "PlatformAdminServicer",
    "admin_channel",
    "remove_socket",
    "socket_path",
    "start_admin_server",
]

ADMIN_SERVICE = "numfed.v1.PlatformAdminService"
MAX_SOCKET_PATH = 107
"""Longest Unix socket path the kernel takes (sun_path is 108 bytes with its NUL)."""


class PlatformAdminServicer(platform_admin_pb2_grpc.PlatformAdminServiceServicer):
    def __init__(self, *, events: EventApplier) -> None:
        self._events = events

    async def ListDeadLetters(
        self,
        request: platform_admin_pb2.ListDeadLettersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_admin_pb2.ListDeadLettersResponse:
        return platform_admin_pb2.ListDeadLettersResponse(
            dead_letters=[
                platform_admin_pb2.DeadLetter(
                    seq=d.seq,
                    batch=claim_pb2.Envelope.FromString(d.envelope),
                    reason=d.reason,
                    may_be_stale=d.reason in STALE_VERIFIER_REASONS,
                    attempts=d.attempts,
                    first_seen_time=to_timestamp(d.first_seen),
                    last_seen_time=to_timestamp(d.last_seen),
                )
                for d in await self._events.dead_letters()
            ]
        )

    async def ReplayDeadLetters(
        self,
        request: platform_admin_pb2.ReplayDeadLettersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> platform_admin_pb2.ReplayDeadLettersResponse:
        if request.all and request.seqs:
            raise InvalidArgument("SEQS_AND_ALL", "name seqs or ask for all, not both")
        if not request.all and not request.seqs:
            raise InvalidArgument("NOTHING_TO_REPLAY", "name seqs, or ask for all")
        replayed = await self._events.replay(None if request.all else list(request.seqs))
        return platform_admin_pb2.ReplayDeadLettersResponse(
            results=[
                platform_admin_pb2.ReplayResult(
                    seq=r.seq,
                    status=ok_status() if r.error is None else error_status(r.error),
                )
                for r in replayed
            ]
        )


def socket_path(config: PlatformConfig) -> Path:
    """Where the platform's admin socket is: ``config.admin_socket``, or by default
    ``numfed-<uid>/<platform id>-<digest of the state directory>.sock`` under
    ``$XDG_RUNTIME_DIR`` (or the system's temporary directory), short enough for any state
    directory and the same for the platform and the CLI reading one config file."""
    if config.admin_socket is not None:
        return config.admin_socket
    state = os.fsencode(config.state_dir.resolve())
    digest = hashlib.sha256(state).hexdigest()[:12]
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return runtime / f"numfed-{os.getuid()}" / f"{config.platform_id}-{digest}.sock"


def _address(path: Path) -> str:
    """gRPC's address of the socket ``path``, once its length is checked."""
    absolute = path.absolute()
    if len(os.fsencode(absolute)) > MAX_SOCKET_PATH:
        raise InvalidArgument(
            "BAD_CONFIG",
            f"the admin socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set platform.admin_socket to a shorter one",
        )
    return f"unix:{absolute}"


def _private_dir(folder: Path) -> None:
    """Create ``folder`` mode 0700, or check that it is this user's and that private already."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise InvalidArgument(
            "BAD_CONFIG",
            f"{folder} holds the admin socket and must be owned by this user, mode 0700",
        )


async def start_admin_server(path: Path, events: EventApplier) -> ServerHandle:
    """Serve PlatformAdminService on the Unix socket ``path`` (a stale socket file there is
    replaced), in a directory only this OS user may enter."""
    address = _address(path)
    _private_dir(path.parent)
    servicer = PlatformAdminServicer(events=events)

    def register(server: grpc.aio.Server) -> str:
        platform_admin_pb2_grpc.add_PlatformAdminServiceServicer_to_server(servicer, server)
        return ADMIN_SERVICE

    handle = await start_server(register=[register], credentials=None, policy=None, bind=address)
    os.chmod(path, 0o600)
    return handle


def remove_socket(path: Path, *, private_folder: bool = False) -> None:
    """Remove the socket file once its server has stopped, and (``private_folder``: the
    default folder, made for sockets) that folder too when no other platform's socket is left
    in it, so a platform leaves nothing behind in the system's temporary directory."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if private_folder:
        with contextlib.suppress(OSError):  # not empty, or gone: both fine
            path.parent.rmdir()


def admin_channel(path: Path) -> grpc.aio.Channel:
    """A channel to the platform's admin socket ``path``."""
    return grpc.aio.insecure_channel(_address(path))
