"""Running one numfed process: ``<role> serve --config FILE`` until SIGTERM or Ctrl-C.

Every serve command logs its lifecycle (listening, SERVING, stopping, stopped; see
:mod:`numfed.observability.logs`), turns on the telemetry its config asks for (``[telemetry]``:
a loopback metrics endpoint, traces over OTLP) and ends an operator's mistake — a bad config, an
address in use, a file it cannot read — with one ``numfed: error:`` line and exit status 2,
never a traceback (``--log-level DEBUG`` logs the traceback of an unexpected start failure).
Each collects cyclic garbage less often than Python's default (:func:`tune_gc`) and, with a
metrics endpoint, samples how late its event loop runs (``numfed_event_loop_lag_seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from numfed.cli import Command, os_error
from numfed.config import Telemetry
from numfed.errors import FailedPrecondition, NumfedError
from numfed.observability import tracing
from numfed.observability.http import Handler, MetricsEndpoint, start_endpoint
from numfed.observability.logs import LOG_FORMATS, LOG_LEVELS, name_process, setup_logging
from numfed.observability.metrics import sample_event_loop_lag

__all__ = [
    "ProcessTelemetry",
    "process_telemetry",
    "run_until_signalled",
    "serve_arguments",
    "serve_command",
    "tune_gc",
]

log = logging.getLogger("numfed.serving")

GC_THRESHOLDS = (50_000, 50, 100)
"""Allocations (less deallocations) of container objects before the youngest generation is
collected, and collections of each generation before the next older one is: Python's default
is (700, 10, 10)."""


def tune_gc() -> None:
    """Collect cyclic garbage less often in a serving process (:data:`GC_THRESHOLDS`), and
    leave the objects alive at start (modules, protobuf descriptors) out of every collection
    (``gc.freeze``).

    A busy gateway allocates a few objects per platform per query (its place in a batch, its
    slot in the query's wait); with the default thresholds the collector ran every few queries
    and, every hundred of those, walked every long-lived object again. Measured with
    ``bench.fanout`` (64 queries in flight, reference platforms): gateway CPU per query 1.78 ->
    1.50 ms at 50 platforms and 9.4 -> 6.0 ms at 200, 0.74 -> 0.71 ms at 7. Garbage in cycles
    lives a little longer; reference counting frees everything else at once, as before.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_until_signalled(
    stop: Callable[[], Awaitable[None]], *, on_hangup: Callable[[], None] | None = None
) -> None:
    """Wait for SIGTERM or SIGINT, then stop gracefully; on SIGHUP call ``on_hangup`` (if
    given: re-read configuration) and keep running. Logs ``stopping (SIGTERM)`` and
    ``stopped``."""
    signalled: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def received(name: str) -> None:
        if not signalled.done():
            signalled.set_result(name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig.name)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    name = await signalled
    log.info("stopping (%s)", name)
    try:
        await stop()
    except Exception as exc:
        log.warning("stopping failed (%s: %s)", type(exc).__name__, exc)
    log.info("stopped")


@dataclass
class ProcessTelemetry:
    """A process's metrics endpoint (if configured); tracing is set up process-wide."""

    settings: Telemetry
    endpoint: MetricsEndpoint | None = None
    routes: dict[str, Handler] = field(default_factory=dict)
    """Extra GET paths of the endpoint (the gateway's ``/status``), filled in once the role
    has started; asked before then, they answer ``{"error": "starting"}``."""


async def _not_yet() -> tuple[str, bytes]:
    return "application/json", b'{"error": "starting"}\n'


@contextlib.asynccontextmanager
async def process_telemetry(
    service: str, settings: Telemetry, *, routes: tuple[str, ...] = ()
) -> AsyncIterator[ProcessTelemetry]:
    """Tracing (before any server or channel is made) and the metrics endpoint (before the
    role starts, so that a taken port fails fast) for the life of a process. ``routes`` are
    the extra paths the role fills in through :attr:`ProcessTelemetry.routes`. Log lines
    name the process ``service`` from here on."""
    name_process(service)
    tracing.setup_tracing(
        f"numfed-{service}",
        endpoint=settings.otlp_endpoint,
        sample_ratio=settings.trace_sample_ratio,
    )
    telemetry = ProcessTelemetry(settings)
    lag: asyncio.Task[None] | None = None
    try:
        if settings.metrics_listen is not None:

            def late(path: str) -> Handler:
                async def handle() -> tuple[str, bytes]:
                    return await telemetry.routes.get(path, _not_yet)()

                return handle

            extra: Mapping[str, Handler] = {path: late(path) for path in routes}
            telemetry.endpoint = await start_endpoint(settings.metrics_listen, extra)
            lag = asyncio.get_running_loop().create_task(sample_event_loop_lag())
        yield telemetry
    finally:
        if lag is not None:
            lag.cancel()
        if telemetry.endpoint is not None:
            await telemetry.endpoint.close()
        tracing.shutdown_tracing()


def serve_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments of every ``<role> serve``: ``--config``, ``--log-level``, ``--log-format``
    (for a role whose command has more actions than ``serve``, and builds its parser itself)."""
    parser.add_argument("--config", type=Path, required=True, help=f"{name} TOML config")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=LOG_LEVELS,
        help="DEBUG: also a line per query and per retry; INFO (default): lifecycle, "
        "release jobs accepted, retries summarised; WARNING: only what needs an operator; "
        "ERROR: only what stops the process",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text (default) or json: one JSON object per line, with trace ids when traced",
    )


def serve_command(name: str, help: str, serve: str) -> Command:
    """A ``name serve --config FILE`` command running ``serve`` ("module:async function")."""

    def configure(parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub = actions.add_parser("serve", help=f"{help} until SIGTERM or Ctrl-C")
        serve_arguments(sub, name)

    def run(args: argparse.Namespace) -> int:
        module, _, function = serve.partition(":")
        setup_logging(name, level=args.log_level, fmt=args.log_format)
        main: Callable[[Path], Awaitable[None]] = getattr(importlib.import_module(module), function)
        tune_gc()
        try:
            asyncio.run(main(args.config))  # type: ignore[arg-type]
        except (NumfedError, KeyboardInterrupt):
            raise
        except OSError as exc:
            raise os_error(exc) from exc
        except Exception as exc:
            log.debug("%s did not start", name, exc_info=True)
            raise FailedPrecondition(
                "START_FAILED",
                f"{type(exc).__name__}: {exc} (--log-level DEBUG shows where)",
            ) from exc
        return 0

    return Command(name, help, configure, run)
