"""Real gateway processes for fault tests: started like an operator would, logs to a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["spawn_gateway"]


def spawn_gateway(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``numfed gateway serve --config CONFIG`` as a child process, its stderr in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "numfed", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
