"""``numfed gateway serve --config FILE``."""

from __future__ import annotations

from numfed.serving import serve_command

__all__ = ["GATEWAY"]

GATEWAY = serve_command("gateway", "run the federation gateway", "gateway.server:serve")
