"""Process logs: one line per lifecycle step, in text or JSON, and retries summarised.

Every ``numfed <role> serve`` logs to standard error through :func:`setup_logging`:

* ``text`` (the default): ``2026-11-29 10:00:00,000 gateway INFO listening on …``;
* ``json``: one JSON object per line with ``time`` (UTC, RFC 3339), ``level``, ``process``,
  ``logger``, ``message`` and, inside a traced call, ``trace_id`` and ``span_id``.

A failing operation that is retried (a platform that does not answer, a gateway not up yet) is
logged through a :class:`RetrySummary`: the first failure at once, then at most one line a
minute counting the retries, then one line when it works again — never a line per retry.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "RetrySummary",
    "failure_reason",
    "name_process",
    "setup_logging",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""``--log-level`` values: DEBUG adds a line per query and per retry; INFO (the default) is
the lifecycle, one line per accepted release job and summarised retries; WARNING only what
needs an operator (a breaker opening, a refused config, summarised failures); ERROR only what
stops a process."""

LOG_FORMATS = ("text", "json")

QUIET_LIBRARIES = ("alembic", "sqlalchemy", "opentelemetry")
"""Libraries whose INFO lines (each migration step, each exporter retry) are not the
operator's business: they log at WARNING and above only."""


_process = ["numfed"]
"""The name every line of this process carries (``gateway``, ``platform-weibo``, …)."""


def name_process(name: str) -> None:
    """Name this process in every line from now on (once its config says which member it is)."""
    _process[0] = name


class _ProcessName(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.numfed_process = _process[0]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the trace and span ids of the current span when traced."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": _process[0],
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = _trace_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _trace_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class _AtMostOncePerMinute(logging.Filter):
    """Lets a quiet library's record through at most once a minute per message template (an
    OTLP collector that is away makes the exporter log every few seconds); numfed's own
    records all pass."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last: dict[tuple[str, int], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(QUIET_LIBRARIES):
            return True
        key = (str(record.msg), record.levelno)
        now = self._clock()
        if now - self._last.get(key, float("-inf")) < 60.0:
            return False
        self._last[key] = now
        return True


_library_filter = _AtMostOncePerMinute()


def setup_logging(
    process: str, *, level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None
) -> None:
    """Log every record of this process to ``stream`` (standard error) as ``fmt``."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {LOG_LEVELS}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}")
    name_process(process)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ProcessName())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(numfed_process)s %(levelname)s %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    handler.addFilter(_library_filter)


def failure_reason(exc: BaseException) -> str:
    """A failure in one word or two, for a log line: a gRPC code (and the peer's ErrorInfo
    reason), a numfed reason, or the exception's type — never a multi-line repr."""
    from numfed.errors import NumfedError

    if isinstance(exc, NumfedError):
        return exc.reason
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        from numfed.rpc import rpc_error_info

        info = rpc_error_info(exc)
        code = exc.code().name
        return f"{code} {info.reason}" if info is not None and info.reason else code
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(exc).__name__


class RetrySummary:
    """Logs an operation that keeps failing and is retried, in a few lines.

    The first failure is logged at once (``<failing> (<reason>); retrying``), further failures
    are counted and summarised at most once per ``every`` seconds (``<failing> (<reason>), 12
    retries in the last minute``), and the first success after failures logs ``<recovered>
    after 13 retries`` (each failure was followed by one more try). A success while nothing
    failed logs nothing.
    """

    def __init__(
        self,
        logger: logging.Logger,
        failing: str,
        recovered: str,
        *,
        every: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._failing = failing
        self._recovered = recovered
        self._every = every
        self._level = level
        self._clock = clock
        self._failures = 0
        """Failures since the last success."""
        self._unreported = 0
        """Failures since the last line."""
        self._last_line = 0.0

    @property
    def failures(self) -> int:
        """Failures in a row so far (0 while the operation works)."""
        return self._failures

    def failed(self, reason: str) -> None:
        now = self._clock()
        self._failures += 1
        if self._failures == 1:
            self._log.log(self._level, "%s (%s); retrying", self._failing, reason)
            self._last_line = now
            return
        self._unreported += 1
        if now - self._last_line >= self._every:
            window = "the last minute" if self._every == 60.0 else f"the last {self._every:g} s"
            self._log.log(
                self._level,
                "%s (%s), %d retries in %s",
                self._failing,
                reason,
                self._unreported,
                window,
            )
            self._unreported = 0
            self._last_line = now
        else:
            self._log.debug("%s (%s); retry %d", self._failing, reason, self._failures)

    def succeeded(self) -> None:
        if self._failures:
            retries = self._failures  # each failure was followed by one more try
            self._log.info(
                "%s after %d %s", self._recovered, retries, "retry" if retries == 1 else "retries"
            )
        self._failures = 0
        self._unreported = 0
