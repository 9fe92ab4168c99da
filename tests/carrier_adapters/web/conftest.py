"""The holder's page under test: over HTTP against a carrier with a recording gateway, and in a
real browser (Debian's chromium, driven by Playwright) against a whole federation.

Browser tests skip when chromium is missing, unless ``NUMFED_REQUIRE_BROWSER=1`` (set by
``.ci/run``), which makes a missing browser a failure. One browser serves the whole session;
screenshots of each step go to ``build/screenshots/`` (or ``$NUMFED_SCREENSHOTS``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from carrier_adapters.base import CarrierHandle, start_carrier
from numfed.config import Limits
from tests.carrier_adapters.conftest import Running, on_port_zero

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = Path(os.environ.get("NUMFED_SCREENSHOTS") or REPO / "build" / "screenshots")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Without the background-networking flags, a closed network refuses Chromium's own calls."""


def _require_browser() -> bool:
    return os.environ.get("NUMFED_REQUIRE_BROWSER", "") not in ("", "0")


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the session."""
    path = chromium()
    why = ""
    if path is None:
        why = "no chromium on this machine (apt-get install chromium; make test installs it)"
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        why = why or "playwright is not installed (pip install -e '.[test]')"
    if why:
        if _require_browser():
            pytest.fail(f"a browser is required here (NUMFED_REQUIRE_BROWSER=1): {why}")
        pytest.skip(why)
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Visitor:
    """A browser as the page sees it over HTTP: a cookie jar and the current page's token."""

    client: httpx.AsyncClient
    token: str = ""
    lang: str = "en"

    async def open(self, lang: str = "en") -> httpx.Response:
        self.lang = lang
        answer = await self.client.get("/", params={"lang": lang})
        found = re.search(r'name="page-token" content="([^"]+)"', answer.text)
        assert found, answer.text[:500]
        self.token = found.group(1)
        return answer

    async def post(
        self, path: str, data: dict[str, str] | None = None, **headers: str
    ) -> httpx.Response:
        body = {"page_token": self.token, **(data or {})}
        sent = {"x-fragment": "1", "accept-language": self.lang, **headers}
        return await self.client.post(path, data=body, headers=sent)


def error_of(answer: httpx.Response) -> str:
    """The refusal sentence an answer shows (empty if none)."""
    found = re.search(r'id="error"[^>]*>([^<]*)<', answer.text)
    return found.group(1).strip() if found else ""


@pytest.fixture
async def web(running: Running) -> AsyncIterator[CarrierHandle]:
    """cmcc with its holder's page, against the recording gateway."""
    handle = await start_web_carrier(running)
    try:
        yield handle
    finally:
        await handle.stop(0)


async def start_web_carrier(running: Running, limits: Limits | None = None) -> CarrierHandle:
    config = on_port_zero(running.layout, "cmcc", running.gateway_server.port)
    return await start_carrier(
        dataclasses.replace(
            config,
            holder_web_listen="127.0.0.1:0",
            state_dir=config.state_dir / "web",
            limits=limits or config.limits,
        ),
        clock=running.clock,
    )


@pytest.fixture
async def visitor(web: CarrierHandle) -> AsyncIterator[Visitor]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.web_port}", timeout=10) as c:
        yield Visitor(c)
