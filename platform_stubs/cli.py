"""``numfed platform serve --config FILE``."""

from __future__ import annotations

from numfed.serving import serve_command

__all__ = ["PLATFORM"]

PLATFORM = serve_command("platform", "run a reference platform", "platform_stubs.reference:serve")
