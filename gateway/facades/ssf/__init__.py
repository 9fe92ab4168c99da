"""An OpenID Shared Signals transmitter over the gateway's event log (docs/standards.md)."""
