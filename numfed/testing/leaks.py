"""Which grpc.aio channels and servers are still open: for a check after each test.

A channel nobody closed, or a server nobody stopped, is left to garbage collection, and grpc's
``__del__`` then closes the channel or schedules the server's shutdown on an event loop that may
be closed by then ("Exception ignored in: Server.__del__", "Event loop is closed", "coroutine
'AioServer.shutdown' was never awaited"); grpc's asyncio layer has also hung in such a shutdown
(grpc/grpc#22365). :func:`install` wraps ``Channel.__init__``, ``Channel._close`` (behind both
``close()`` and ``async with``), ``Server.start`` and ``Server.stop`` to keep a count of what is
open, with where each was opened; :func:`open_since` lists what was opened after a
:func:`mark` and is still open, even if it was garbage-collected meanwhile. Bookkeeping only:
a few dictionary operations per channel or server, nothing per call.
"""

from __future__ import annotations

import itertools
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio._channel as _aio_channel
import grpc.aio._server as _aio_server

__all__ = ["Opened", "install", "mark", "open_since"]

_ATTR = "_numfed_opened"
_installed = False
_serial = itertools.count(1)
_open: dict[int, Opened] = {}
_lock = threading.Lock()
_SKIP = tuple(
    {
        str(Path(_aio_channel.__file__).parent.parent),
        str(Path(__file__)),
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        sys.prefix,
    }
)
"""Frames that say nothing about who opened a channel: grpc's, this module's, the standard
library's (asyncio), installed packages' (pytest) and the environment's scripts."""


@dataclass(frozen=True)
class Opened:
    serial: int
    kind: str
    """"channel" or "server"."""
    where: tuple[str, ...]
    """Innermost first: ``file:line (function)`` of the frames that opened it."""

    def __str__(self) -> str:
        return f"{self.kind} opened at " + " <- ".join(self.where)


def _where(depth: int = 6) -> tuple[str, ...]:
    frames: list[str] = []
    f = sys._getframe(2)
    while f is not None and len(frames) < depth:
        name = f.f_code.co_filename
        if not name.startswith(_SKIP) and not name.startswith("<"):  # "<frozen runpy>"
            frames.append(f"{_short(name)}:{f.f_lineno} ({f.f_code.co_name})")
        f = f.f_back  # type: ignore[assignment]
    return tuple(frames)


def _short(filename: str) -> str:
    try:
        return str(Path(filename).relative_to(Path.cwd()))
    except ValueError:
        return filename


def _opened(obj: object, kind: str) -> None:
    serial = next(_serial)
    setattr(obj, _ATTR, serial)
    with _lock:
        _open[serial] = Opened(serial, kind, _where())


def _closed(obj: object) -> None:
    serial = getattr(obj, _ATTR, None)
    if serial is not None:
        with _lock:
            _open.pop(serial, None)


def install() -> None:
    """Start counting (idempotent). Channels and servers opened before are not counted."""
    global _installed
    if _installed:
        return
    _installed = True
    channel, server = _aio_channel.Channel, _aio_server.Server
    init: Callable[..., None] = channel.__init__
    close: Callable[..., Any] = channel._close
    start: Callable[..., Any] = server.start
    stop: Callable[..., Any] = server.stop

    def channel_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _opened(self, "channel")

    async def channel_close(self: Any, *args: Any, **kwargs: Any) -> None:
        _closed(self)
        await close(self, *args, **kwargs)

    async def server_start(self: Any) -> None:
        await start(self)
        _opened(self, "server")

    async def server_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        _closed(self)
        await stop(self, *args, **kwargs)

    channel.__init__ = channel_init  # type: ignore[method-assign]
    channel._close = channel_close  # type: ignore[method-assign]
    server.start = server_start  # type: ignore[method-assign]
    server.stop = server_stop  # type: ignore[method-assign]


def mark() -> int:
    """A point to count from: what :func:`open_since` lists was opened after it."""
    with _lock:
        return next(_serial)


def open_since(point: int) -> list[Opened]:
    """Channels and servers opened after ``point`` that were never closed or stopped."""
    with _lock:
        return sorted((o for o in _open.values() if o.serial > point), key=lambda o: o.serial)
