"""A tiny OTLP/gRPC trace receiver for tests: what a collector would be handed, kept in memory.

Start it on loopback port 0, point every process's ``otlp_endpoint`` at ``receiver.endpoint``,
and read :attr:`OtlpReceiver.spans` (one :class:`ReceivedSpan` per span, with the service that
sent it) once the processes have flushed (they do when they stop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["OtlpReceiver", "ReceivedSpan", "start_otlp_receiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    links: tuple[str, ...]
    """Trace ids of the span's links."""
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self._receiver.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            links=tuple(link.trace_id.hex() for link in span.links),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        self._receiver.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class OtlpReceiver:
    server: grpc.aio.Server
    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        out: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans:
            out.setdefault(span.trace_id, []).append(span)
        return out

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_otlp_receiver() -> OtlpReceiver:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    receiver = OtlpReceiver(server, port)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Collector(receiver), server)  # type: ignore[no-untyped-call]
    await server.start()
    return receiver
