"""Who the gateway serves and calls, and how an edit of its config file takes effect.

:class:`Membership` is the live set of members that the gRPC edge asks about every call
(invariant 4: only configured members are served). :class:`ConfigWatcher` re-reads the config
file when it changes (looked at once a second) or when told to (SIGHUP), and hands the new
member lists to the gateway, which stops calling removed members, starts calling added ones
and replaces those whose endpoint or delivery mode changed. A file that does not load changes
nothing: the members in force stay, and one log line says why. Settings other than the
members take effect at the next restart, and the log says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from numfed.config import GatewayConfig, Member, load_gateway_config
from numfed.errors import NumfedError
from numfed.identity import PeerId, Role

__all__ = ["ConfigWatcher", "Membership", "MembershipChange", "RoleChange", "membership_change"]

log = logging.getLogger(__name__)

RELOADED_FIELDS = ("carriers", "platforms")
"""The config settings applied without a restart."""


class Membership:
    """The peers the gateway serves now: its own identity, its carriers and its platforms."""

    def __init__(self, gateway: PeerId, carriers: Iterable[str], platforms: Iterable[str]) -> None:
        self.gateway = gateway
        self.carriers: frozenset[str] = frozenset(carriers)
        self.platforms: frozenset[str] = frozenset(platforms)

    def set(self, *, carriers: Iterable[str], platforms: Iterable[str]) -> None:
        self.carriers = frozenset(carriers)
        self.platforms = frozenset(platforms)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, PeerId):
            return False
        if peer.role is Role.CARRIER:
            return peer.id in self.carriers
        if peer.role is Role.PLATFORM:
            return peer.id in self.platforms
        return peer == self.gateway


@dataclass(frozen=True)
class RoleChange:
    """How one role's members differ between two configs."""

    removed: tuple[str, ...] = ()
    added: tuple[Member, ...] = ()
    changed: tuple[Member, ...] = ()
    """Still members, with a new endpoint or delivery mode: their links are replaced."""

    def __bool__(self) -> bool:
        return bool(self.removed or self.added or self.changed)

    @classmethod
    def between(cls, old: Sequence[Member], new: Sequence[Member]) -> RoleChange:
        before = {m.id: m for m in old}
        after = {m.id: m for m in new}
        return cls(
            removed=tuple(sorted(set(before) - set(after))),
            added=tuple(m for i, m in sorted(after.items()) if i not in before),
            changed=tuple(m for i, m in sorted(after.items()) if i in before and before[i] != m),
        )

    def describe(self, role: Role) -> list[str]:
        return (
            [f"-{role.value} {i}" for i in self.removed]
            + [f"+{role.value} {m.id}" for m in self.added]
            + [f"~{role.value} {m.id}" for m in self.changed]
        )


@dataclass(frozen=True)
class MembershipChange:
    carriers: RoleChange
    platforms: RoleChange
    restart_needed: tuple[str, ...]
    """Other settings that differ; they take effect at the next restart."""

    def __bool__(self) -> bool:
        return bool(self.carriers or self.platforms)

    def describe(self) -> str:
        parts = self.carriers.describe(Role.CARRIER) + self.platforms.describe(Role.PLATFORM)
        return ", ".join(parts) or "no member changed"


def membership_change(old: GatewayConfig, new: GatewayConfig) -> MembershipChange:
    """What differs between two configs, member by member."""
    others = [
        f.name
        for f in dataclasses.fields(GatewayConfig)
        if f.name not in RELOADED_FIELDS and getattr(old, f.name) != getattr(new, f.name)
    ]
    return MembershipChange(
        carriers=RoleChange.between(old.carriers, new.carriers),
        platforms=RoleChange.between(old.platforms, new.platforms),
        restart_needed=tuple(others),
    )


def _looked_at(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next: (mtime, size, inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


Apply = Callable[[GatewayConfig, MembershipChange], Awaitable[None]]


class ConfigWatcher:
    """Re-reads the gateway's config file when it changes, or at once on :meth:`reload`.

    ``apply`` gets each config that loads and changes the members, with the change; it runs
    one at a time, in order.
    """

    def __init__(
        self,
        path: Path,
        current: GatewayConfig,
        apply: Apply,
        *,
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.current = current
        self._apply = apply
        self._interval = interval
        self._seen = _looked_at(path)
        self._asked = asyncio.Event()

    def reload(self) -> None:
        """Read the file again now, changed or not (SIGHUP)."""
        self._asked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._asked.wait()
            asked = self._asked.is_set()
            self._asked.clear()
            seen = _looked_at(self.path)
            if not asked and seen == self._seen:
                continue
            self._seen = seen
            try:
                await self.reload_now("SIGHUP" if asked else "file changed")
            except Exception:  # never let the watcher die
                log.exception("applying %s failed; the next change or SIGHUP retries", self.path)

    async def reload_now(self, why: str) -> None:
        """Load the file and apply its members; a file that does not load changes nothing."""
        try:
            new = load_gateway_config(self.path)
        except NumfedError as err:
            log.error(
                "config %s not applied (%s): %s: %s; the members in force stay",
                self.path,
                why,
                err.reason,
                err.message,
            )
            return
        change = membership_change(self.current, new)
        if change.restart_needed:
            log.warning(
                "config %s (%s): %s changed; only [[carrier]] and [[platform]] take effect "
                "without a restart",
                self.path,
                why,
                ", ".join(change.restart_needed),
            )
        if change:
            await self._apply(new, change)
        self.current = dataclasses.replace(
            self.current, carriers=new.carriers, platforms=new.platforms
        )
        log.info(
            "config %s reloaded (%s): %s; members now %d carriers, %d platforms",
            self.path,
            why,
            change.describe(),
            len(new.carriers),
            len(new.platforms),
        )
