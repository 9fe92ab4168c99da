"""OpenTelemetry traces: off by default, one trace per holder's request across every process.

Tracing is on in a process once :func:`setup_tracing` has been given somewhere to send spans:
``otlp_endpoint`` in its config's ``[telemetry]`` section, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` environment variable (OTLP over gRPC; ``http://`` for plaintext,
``https://`` for TLS). Otherwise nothing is installed and tracing costs nothing.

When on, every call a numfed gRPC server serves gets a SERVER span (:func:`server_call`, from
the server's own interceptor in :mod:`numfed.rpc`, which wraps each method once) and every
channel made by :func:`numfed.pki.secure_channel` OpenTelemetry's client interceptors, so the
W3C ``traceparent`` travels carrier → gateway → platforms in the call metadata. The gateway's
channels to platforms are the exception: a client interceptor turns every call into grpc.aio's
intercepted call (a task of its own per call), which on the fan-out path cost more than the
spans themselves, so those calls are traced by hand (:func:`client_call`). Spans are named and
nested as OpenTelemetry's gRPC instrumentation names them (the full method), whose server
interceptor numfed used before: it rebuilt each method's handler for every call, sampled or not.
A release is dispatched later, from a stored job: the gateway stores the ``traceparent`` of the
``ReleaseBindings`` call with the job (:func:`current_traceparent`) and each dispatch span
continues that trace (:func:`continued_span`), so one holder's release is one trace from the
holder's app to every platform. Health checks are not traced.

Sampling is parent-based: a call that arrives with a sampled parent is traced; a new trace is
sampled with ``trace_sample_ratio`` (default 1.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "client_call",
    "client_interceptors",
    "continued_span",
    "current_traceparent",
    "enabled",
    "server_call",
    "setup_tracing",
    "shutdown_tracing",
]

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

_OK, _CANCELLED, _UNKNOWN, _DEADLINE_EXCEEDED = (
    c.value[0]
    for c in (
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
)
"""The gRPC status codes a span gets when its call's own code is not at hand."""

_provider: TracerProvider | None = None
_client: list[Any] = []
_propagator = TraceContextTextMapPropagator()


def enabled() -> bool:
    return _provider is not None


def _untraced(method: str) -> bool:
    """Whether ``method`` (``/package.Service/Method``) is health or reflection: never traced."""
    return any(method.startswith(f"/{s}/") for s in UNTRACED_SERVICES)


def _traced(details: Any) -> bool:
    """The client interceptors' filter: a call of any method but :func:`_untraced` ones."""
    method = details.method
    return not _untraced(method.decode() if isinstance(method, bytes) else str(method))


def setup_tracing(
    service_name: str,
    *,
    endpoint: str | None = None,
    sample_ratio: float = 1.0,
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on for this process if there is somewhere to send spans; return whether.

    ``service_name`` names the process in every span (``numfed-gateway``, ``numfed-carrier-
    cmcc``, …). ``exporter`` replaces OTLP (tests). Call once, before servers and channels
    are made; :func:`shutdown_tracing` flushes what is left.
    """
    global _provider, _client
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if exporter is None and endpoint is None:
        return False
    if _provider is not None:
        raise RuntimeError("tracing is already set up in this process")
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _client = list(aio_client_interceptors(tracer_provider=provider, filter_=_traced))  # type: ignore[no-untyped-call]
    log.info(
        "tracing on: spans of %s to %s, new traces sampled at %g",
        service_name,
        endpoint or type(exporter).__name__,
        sample_ratio,
    )
    return True


def shutdown_tracing() -> None:
    """Flush the spans not yet exported and stop (at the end of the process)."""
    global _provider, _client
    if _provider is not None:
        _provider.shutdown()
    _provider, _client = None, []


def traced_method(method: str) -> bool:
    """Whether calls of ``method`` (``/package.Service/Method``) are traced: tracing is on and
    the method is not health or reflection."""
    return _provider is not None and not _untraced(method)


@contextlib.contextmanager
def server_call(method: str, context: Any) -> Iterator[None]:
    """The SERVER span of one call a server serves (``context``: its grpc.aio servicer
    context), continuing the trace its request metadata carries and current while the handler
    runs. It ends with the call's gRPC status code (``rpc.grpc.status_code``; ERROR for any but
    OK), and records an exception other than grpc's own abort."""
    carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    service, _, name = method.strip("/").rpartition("/")
    tracer = trace.get_tracer("numfed")
    with tracer.start_as_current_span(
        method,
        context=_propagator.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        failed: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failed = exc
            raise
        finally:
            code = context.code()
            value = getattr(code, "value", (code,))[0] if code is not None else None
            ended = isinstance(failed, asyncio.CancelledError | GeneratorExit)
            if value is None:  # no status set: OK, the caller gone (CANCELLED), or UNKNOWN
                value = _OK if failed is None else _CANCELLED if ended else _UNKNOWN
            _end(span, value, None if ended or type(failed).__name__ == "AbortError" else failed)


def _end(span: trace.Span, code: int, failed: BaseException | None) -> None:
    """Give ``span`` the call's gRPC status code (ERROR for any but OK, as OpenTelemetry's gRPC
    instrumentation does) and record ``failed``, an exception other than the call's own end."""
    span.set_attribute("rpc.grpc.status_code", code)
    if code != _OK:
        span.set_status(trace.StatusCode.ERROR)
    if failed is not None:
        span.record_exception(failed)


def client_interceptors() -> list[Any]:
    """Interceptors of every numfed channel (none while tracing is off)."""
    return list(_client)


@contextlib.contextmanager
def client_call(method: str) -> Iterator[tuple[tuple[str, str], ...]]:
    """Trace one call made on a channel without tracing interceptors
    (``secure_channel(traced=False)``): a CLIENT span named, as OpenTelemetry's gRPC interceptor
    names it, by the full method (``/numfed.v1.PlatformService/BatchQueryBindings``), current
    while the call runs; yields the request metadata that carries its context (``traceparent``)
    for the call to send. The span ends with the call's gRPC status code
    (``rpc.grpc.status_code``: 0 once it returned, the code of its ``AioRpcError``, CANCELLED
    or DEADLINE_EXCEEDED when the caller gave up or its time ran out; ERROR for any but OK), an
    unexpected exception recorded. While tracing is off: no span, no metadata."""
    if _provider is None:
        yield ()
        return
    service, _, name = method.strip("/").rpartition("/")
    tracer = trace.get_tracer("numfed")
    with tracer.start_as_current_span(
        method,
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        try:
            yield tuple(carrier.items())
        except grpc.aio.AioRpcError as exc:
            _end(span, exc.code().value[0], None)
            raise
        except asyncio.CancelledError:  # the caller gave up on it
            _end(span, _CANCELLED, None)
            raise
        except TimeoutError:  # its deadline passed
            _end(span, _DEADLINE_EXCEEDED, None)
            raise
        except BaseException as exc:
            _end(span, _UNKNOWN, exc)
            raise
        _end(span, _OK, None)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the span being handled, to store with work done later."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continued_span(
    name: str,
    traceparents: Sequence[str | None],
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[None]:
    """A span that continues the trace of the first stored ``traceparent`` and links the
    others (a release batch carries the jobs of several holders); calls made inside it carry
    its context. Does nothing while tracing is off."""
    if _provider is None:
        yield
        return
    contexts = [
        _propagator.extract({"traceparent": tp}) for tp in dict.fromkeys(traceparents) if tp
    ]
    spans = [trace.get_current_span(c).get_span_context() for c in contexts]
    valid = [(c, s) for c, s in zip(contexts, spans, strict=True) if s.is_valid]
    parent = valid[0][0] if valid else None
    links = [trace.Link(s) for _c, s in valid[1:]]
    tracer = trace.get_tracer("numfed")
    with tracer.start_as_current_span(
        name, context=parent, links=links, attributes=dict(attributes or {})
    ):
        yield
