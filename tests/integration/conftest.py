"""A whole federation in this process: gateway, three carriers, seven platforms, real mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from numfed.testing import Federation, start_federation

__all__ = ["Federation", "start_federation"]


@pytest.fixture
async def federation(tmp_path: Path) -> AsyncIterator[Federation]:
    fed = await start_federation(tmp_path / "fed")
    try:
        yield fed
    finally:
        await fed.stop()
