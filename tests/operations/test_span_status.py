"""Span status codes of the spans numfed makes itself (numfed.observability.tracing): a SERVER
span whose caller went away says CANCELLED, not an error of the server's; a CLIENT span says the
code its call ended with. Run in a process of its own: tracing is set up once per process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import asyncio, json
import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from numfed.observability import tracing

exporter = InMemorySpanExporter()
tracing.setup_tracing("probe", exporter=exporter)

class Context:  # what server_call reads of a grpc.aio servicer context
    def __init__(self, code):
        self._code = code
    def invocation_metadata(self):
        return ()
    def code(self):
        return self._code

def served(code, exc):
    try:
        with tracing.server_call("/numfed.v1.GatewayService/WatchOperation", Context(code)):
            if exc is not None:
                raise exc
    except BaseException:
        pass

def called(exc):
    try:
        with tracing.client_call("/numfed.v1.PlatformService/DeliverEvents"):
            if exc is not None:
                raise exc
    except BaseException:
        pass

served(None, None)
served(None, asyncio.CancelledError())
served(None, GeneratorExit())
served(None, RuntimeError("bug"))
served(grpc.StatusCode.NOT_FOUND, None)
called(None)
called(asyncio.CancelledError())
called(TimeoutError())
called(RuntimeError("bug"))
tracing.shutdown_tracing()
print(json.dumps([
    [s.kind.name, s.attributes["rpc.grpc.status_code"], s.status.status_code.name, len(s.events)]
    for s in exporter.get_finished_spans()
]))
"""


@pytest.mark.timeout(60)
def test_spans_say_how_their_call_ended() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=50, check=True
    ).stdout
    assert json.loads(out) == [
        ["SERVER", 0, "UNSET", 0],  # answered
        ["SERVER", 1, "ERROR", 0],  # the caller went away: CANCELLED, nothing recorded
        ["SERVER", 1, "ERROR", 0],  # a stream closed by its caller
        ["SERVER", 2, "ERROR", 1],  # a bug: UNKNOWN, the exception recorded
        ["SERVER", 5, "ERROR", 0],  # the handler's own status (NOT_FOUND)
        ["CLIENT", 0, "UNSET", 0],
        ["CLIENT", 1, "ERROR", 0],  # given up
        ["CLIENT", 4, "ERROR", 0],  # out of time
        ["CLIENT", 2, "ERROR", 1],
    ]
