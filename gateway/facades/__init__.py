"""HTTPS facades over the gateway for platforms that speak the public standards.

* ``camara/``: CAMARA Number Recycling (``POST /number-recycling/v0.2/check``), over the same
  recycled check as ``GatewayService.CheckRecycled`` (:mod:`gateway.recycled`).
* ``ssf/``: an OpenID Shared Signals transmitter: lifecycle events as Security Event Tokens,
  pushed (RFC 8935) or polled (RFC 8936), over the same event log and cursors as
  ``DeliverEvents`` and ``PullEvents``.

Both are served by :mod:`gateway.facades.server` in the gateway's own process and event loop,
with the gateway's certificate, to callers identified by their mTLS client certificate exactly
as on gRPC (:mod:`gateway.facades.edge`). docs/standards.md maps every concept.
"""
