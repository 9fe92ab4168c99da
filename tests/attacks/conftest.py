"""Attacks from outside: a lying member with its own certificate and keys, against real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from numfed.testing import Federation, start_federation


@pytest.fixture
async def federation(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """The whole federation, once with the gateway on SQLite and once on PostgreSQL."""
    fed = await start_federation(tmp_path / "fed", database_url=db_url)
    try:
        yield fed
    finally:
        await fed.stop()
