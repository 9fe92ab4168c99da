"""One live federation for the fuzz tests (see harness.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import LiveFederation


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFederation]:
    fed = LiveFederation(tmp_path_factory.mktemp("fuzz") / "fed")
    try:
        yield fed
    finally:
        stats = os.environ.get("NUMFED_FUZZ_STATS")
        if stats:
            Path(stats).parent.mkdir(parents=True, exist_ok=True)
            Path(stats).write_text(
                json.dumps({"calls": fed.calls, "codes": fed.codes}, indent=1, sort_keys=True)
            )
        fed.close()


@pytest.fixture
def still_serving(live: LiveFederation) -> Iterator[None]:
    """After each batch of examples, every server still answers a valid request."""
    yield
    live.assert_serving()
