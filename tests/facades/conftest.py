"""A federation whose gateway serves the standards facades, and HTTPS clients for them."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from numfed import pki
from numfed.identity import PeerId
from numfed.testing import Federation, start_federation

__all__ = ["GATEWAY_NAME", "https_client"]

GATEWAY_NAME = {"sni_hostname": "main.gateway.numfed"}
"""Request extensions that make a client check it reached the gateway, not any member."""
PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"


def https_client(pki_dir: Path, peer: PeerId | None, **kw: object) -> httpx.AsyncClient:
    """An HTTPS client that trusts the federation CA and presents ``peer``'s certificate (no
    certificate for None)."""
    layout = pki.PkiLayout(pki_dir)
    ctx = ssl.create_default_context(cafile=str(layout.ca_path))
    if peer is not None:
        ctx.load_cert_chain(str(layout.cert_path(peer)), str(layout.key_path(peer)))
    return httpx.AsyncClient(verify=ctx, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def ssf_fed(tmp_path: Path, db_url: str) -> AsyncIterator[Federation]:
    """weibo takes events by SSF push, taobao by SSF poll, douyin by gRPC push; retries are
    quick, so that lost acknowledgements cost little time."""
    fed = await start_federation(
        tmp_path / "fed",
        facades=True,
        platforms=("weibo", "taobao", "douyin"),
        platform_knobs={"weibo": {"events": "ssf-push"}, "taobao": {"events": "ssf-poll"}},
        limits={"retry_initial_backoff": 0.05, "retry_max_backoff": 0.5},
        database_url=db_url,
    )
    try:
        yield fed
    finally:
        await fed.stop()


def pytest_bdd_apply_tag(tag: str, function: object) -> bool:
    """CAMARA's scenario tags are names (``checkNumberRecycling_01_…``), not pytest markers:
    apply none (the suite runs with --strict-markers)."""
    return True
