"""The operator's view of every numfed process: logs, Prometheus metrics, OpenTelemetry traces.

* :mod:`numfed.observability.logs` — one line per lifecycle step, text or JSON, and retries
  summarised instead of repeated.
* :mod:`numfed.observability.metrics` — one Prometheus registry per process; the families
  updated on the hot path and the sources read when scraped.
* :mod:`numfed.observability.http` — the loopback HTTP endpoint that serves ``/metrics`` (and,
  on the gateway, ``/status``).
* :mod:`numfed.observability.tracing` — OpenTelemetry: off unless an OTLP endpoint is
  configured; W3C trace context across every gRPC hop and through stored release jobs.

See ``docs/operations.md`` ("The operator's view") for names, settings and what failures look
like in each.
"""
