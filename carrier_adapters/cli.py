"""``numfed carrier serve --config FILE``."""

from __future__ import annotations

from numfed.serving import serve_command

__all__ = ["CARRIER"]

CARRIER = serve_command("carrier", "run a carrier adapter", "carrier_adapters.base:serve")
