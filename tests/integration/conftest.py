"""A whole federation in this process: gateway, three carriers, seven platforms, real mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from numfed.testing import Federation, start_federation

__all__ = ["Federation", "start_federation"]


@pytest.fixture
async def federation(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """The whole federation, once with the gateway on SQLite and once on PostgreSQL."""
    fed = await start_federation(tmp_path / "fed", database_url=db_url)
    try:
        yield fed
    finally:
        await fed.stop()


@pytest.fixture
async def sqlite_federation(tmp_path: Path) -> AsyncIterator[Federation]:
    """The whole federation with the gateway on SQLite only (for what does not depend on the
    gateway's database)."""
    fed = await start_federation(tmp_path / "fed")
    try:
        yield fed
    finally:
        await fed.stop()
