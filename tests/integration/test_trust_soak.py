"""The trust soak, short (numfed/testing/soak.py; ``make soak-trust`` runs a long one): a
federation of processes carries releases and events without pause while a carrier key rotates,
the root rotates twice (root v2 expiring afterwards) and the old key is revoked; nothing
accepted is lost or applied twice, every member keeps the gateway's audit checkpoints, the
revoked key is refused everywhere within one refresh interval, and only the rotated carrier
restarts. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numfed.testing.soak import SoakSettings, run_soak


@pytest.mark.timeout(240)
async def test_trust_changes_under_load_lose_nothing(tmp_path: Path, db_url: str) -> None:
    settings = SoakSettings(
        duration=25.0,
        database_url=db_url,
        carriers=("cmcc", "cucc"),
        platforms=("weibo", "taobao", "xiaomi"),
        poll_platforms=("xiaomi",),
        refresh_interval=5.0,
        middle_root_lifetime=8.0,
    )
    report = await run_soak(tmp_path / "fed", settings)
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.releases_accepted > 0 and report.events_accepted > 0
    assert report.restarted == ["carrier-cmcc"]
    assert set(report.revocation_seconds) == {"gateway", "weibo", "taobao", "xiaomi"}
