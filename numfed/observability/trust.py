"""The trust a verifier holds, as metrics and as status: the root and bundle versions and how
long until each expires (read when scraped from the process's :class:`TrustedState`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from numfed.trust import TrustedState

__all__ = ["TrustSource", "trust_figures"]


def trust_figures(state: TrustedState | None, now: datetime | None = None) -> dict[str, Any]:
    """Versions held and expiry (RFC 3339, and seconds from ``now``) of the root and bundle."""
    now = now or datetime.now(UTC)
    if state is None:
        return {"root_version": None, "bundle_version": None}
    out: dict[str, Any] = {
        "root_version": state.root.version,
        "root_expires_at": state.root.expires_at.isoformat(),
        "root_expires_in_seconds": round((state.root.expires_at - now).total_seconds()),
        "bundle_version": None,
    }
    bundle = state.bundle
    if bundle is not None:
        out["bundle_version"] = bundle.version
        out["bundle_expires_at"] = bundle.expires_at.isoformat()
        out["bundle_expires_in_seconds"] = round((bundle.expires_at - now).total_seconds())
    return out


class TrustSource:
    """``numfed_trust_{root,bundle}_version`` and ``…_expires_in_seconds`` of the state that
    ``held()`` returns (None: no bundle accepted yet, and no series for it)."""

    def __init__(self, held: Callable[[], TrustedState | None]) -> None:
        self._held = held

    def collect_metrics(self) -> Iterable[Metric]:
        state = self._held()
        if state is None:
            return []
        now = datetime.now(UTC)
        out = [
            GaugeMetricFamily(
                "numfed_trust_root_version",
                "Version of the federation root this process trusts now.",
                value=state.root.version,
            ),
            GaugeMetricFamily(
                "numfed_trust_root_expires_in_seconds",
                "Seconds until the trusted root expires (negative: expired).",
                value=(state.root.expires_at - now).total_seconds(),
            ),
        ]
        bundle = state.bundle
        if bundle is not None:
            out += [
                GaugeMetricFamily(
                    "numfed_trust_bundle_version",
                    "Version of the trust bundle this process holds.",
                    value=bundle.version,
                ),
                GaugeMetricFamily(
                    "numfed_trust_bundle_expires_in_seconds",
                    "Seconds until the held trust bundle expires (negative: expired); claims "
                    "are refused once it has.",
                    value=(bundle.expires_at - now).total_seconds(),
                ),
            ]
        return out
