"""The platform kit: play the gateway and the carriers against a platform, rule by rule.

The checks live in one module per family of rules (``checks_ops``, ``checks_claims``,
``checks_answers``, ``checks_releases``, ``checks_events``, ``checks_recycled``,
``checks_trust``) and run in that order; the kit's machinery is
:mod:`numfed.conformance.platform.kit`.
"""

from __future__ import annotations

# Each module registers its checks; they run in this order.
# isort: off
from numfed.conformance.platform import checks_ops  # noqa: F401
from numfed.conformance.platform import checks_claims  # noqa: F401
from numfed.conformance.platform import checks_answers  # noqa: F401
from numfed.conformance.platform import checks_releases  # noqa: F401
from numfed.conformance.platform import checks_events  # noqa: F401
from numfed.conformance.platform import checks_recycled  # noqa: F401
from numfed.conformance.platform import checks_trust  # noqa: F401

# isort: on
from numfed.conformance.platform.kit import PLATFORM_SUITE, PlatformKit, PlatformTarget
from numfed.conformance.report import Report, Xfails
from numfed.errors import InvalidArgument

__all__ = ["PLATFORM_SUITE", "PlatformKit", "PlatformTarget", "run_platform_kit"]


async def run_platform_kit(
    target: PlatformTarget,
    *,
    only: tuple[str, ...] = (),
    timeout: float = 30.0,
    xfails: Xfails | None = None,
) -> Report:
    """Run the platform checks (those named in ``only``, if given) against ``target``."""
    unknown = sorted(set(only) - set(PLATFORM_SUITE.names))
    if unknown:
        raise InvalidArgument("UNKNOWN_CHECK", f"no such platform checks: {unknown}")
    report = Report(PLATFORM_SUITE.name, f"{target.platform_id} at {target.target}")
    async with PlatformKit(target) as kit:
        return await PLATFORM_SUITE.run(kit, report, only=only, timeout=timeout, xfails=xfails)
