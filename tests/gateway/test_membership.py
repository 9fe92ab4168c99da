"""Membership and config reloads as plain Python: who is a member, what a config edit changes,
and a watcher that applies good files and keeps the members in force on bad ones."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from gateway.membership import ConfigWatcher, Membership, MembershipChange, membership_change
from numfed.config import GatewayConfig, Member, load_gateway_config
from numfed.identity import PeerId, Role

GATEWAY = PeerId(Role.GATEWAY, "main")

BASE = """
[gateway]
listen = "127.0.0.1:7000"
pki_dir = "pki"
trust_dir = "trust"
state_dir = "state"
"""


def member_text(role: str, member_id: str, port: int, events: str = "") -> str:
    text = f'\n[[{role}]]\nid = "{member_id}"\nendpoint = "127.0.0.1:{port}"\n'
    return text + (f'events = "{events}"\n' if events else "")


def test_membership_is_the_gateway_and_the_configured_ids_of_each_role() -> None:
    m = Membership(GATEWAY, ["cmcc"], ["weibo"])
    assert GATEWAY in m
    assert PeerId(Role.CARRIER, "cmcc") in m and PeerId(Role.PLATFORM, "weibo") in m
    assert PeerId(Role.PLATFORM, "cmcc") not in m  # an id counts only in its own role
    assert PeerId(Role.CARRIER, "weibo") not in m
    assert PeerId(Role.GATEWAY, "other") not in m
    assert "spiffe://numfed/carrier/cmcc" not in m
    m.set(carriers=[], platforms=["weibo", "taobao"])
    assert PeerId(Role.CARRIER, "cmcc") not in m and PeerId(Role.PLATFORM, "taobao") in m


def test_change_names_removed_added_and_changed_members(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        BASE
        + member_text("carrier", "cmcc", 1)
        + member_text("carrier", "cucc", 2)
        + member_text("platform", "weibo", 3)
        + member_text("platform", "douyin", 4)
    )
    old = load_gateway_config(path)
    path.write_text(
        BASE.replace("7000", "7001")
        + member_text("carrier", "cmcc", 1)
        + member_text("platform", "weibo", 3, events="poll")
        + member_text("platform", "taobao", 5)
        + "\n[limits]\nrecycled_rate = 1.0\n"
    )
    change = membership_change(old, load_gateway_config(path))
    assert change.carriers.removed == ("cucc",) and not change.carriers.added
    assert change.platforms.removed == ("douyin",)
    assert [m.id for m in change.platforms.added] == ["taobao"]
    assert change.platforms.changed == (Member("weibo", "127.0.0.1:3", "poll"),)
    assert change.restart_needed == ("listen", "limits")
    assert change.describe() == "-carrier cucc, -platform douyin, +platform taobao, ~platform weibo"
    assert not membership_change(old, old)


class Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[GatewayConfig, MembershipChange]] = []
        self.event = asyncio.Event()

    async def __call__(self, config: GatewayConfig, change: MembershipChange) -> None:
        self.applied.append((config, change))
        self.event.set()

    async def next(self) -> MembershipChange:
        async with asyncio.timeout(10):
            await self.event.wait()
        self.event.clear()
        return self.applied[-1][1]


async def test_watcher_applies_an_edit_and_keeps_the_members_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(BASE + member_text("platform", "weibo", 3) + member_text("carrier", "cmcc", 1))
    recorder = Recorder()
    watcher = ConfigWatcher(path, load_gateway_config(path), recorder, interval=0.05)
    task = asyncio.create_task(watcher.run())
    try:
        path.write_text(BASE + member_text("carrier", "cmcc", 1))
        change = await recorder.next()
        assert change.platforms.removed == ("weibo",)
        assert watcher.current.platforms == ()

        with caplog.at_level(logging.ERROR, logger="gateway.membership"):
            path.write_text(BASE + '[[carrier]]\nid = "CMCC!"\n')  # loads no config
            async with asyncio.timeout(10):
                while "not applied" not in caplog.text:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "BAD_CONFIG" in errors[0].getMessage()
        assert watcher.current.carriers == (Member("cmcc", "127.0.0.1:1"),)
        assert len(recorder.applied) == 1

        path.write_text(BASE + member_text("carrier", "cmcc", 1) + member_text("platform", "x", 9))
        change = await recorder.next()
        assert [m.id for m in change.platforms.added] == ["x"]
    finally:
        task.cancel()


async def test_reload_reads_the_file_even_when_it_looks_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    first = BASE + member_text("platform", "weibo", 3)
    path.write_text(first)
    stat = path.stat()
    recorder = Recorder()
    watcher = ConfigWatcher(path, load_gateway_config(path), recorder, interval=3600)
    task = asyncio.create_task(watcher.run())
    try:
        # Same size, same mtime, same inode (as `cp -p` or `rsync -t` may leave it).
        second = BASE + member_text("platform", "zhihu", 3)
        assert len(second) == len(first)
        path.write_text(second)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        watcher.reload()
        change = await recorder.next()
        assert change.platforms.removed == ("weibo",)
        assert [m.id for m in change.platforms.added] == ["zhihu"]
    finally:
        task.cancel()
