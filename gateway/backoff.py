"""Retry timing for release dispatch: exponential backoff with full jitter."""

from __future__ import annotations

import random

__all__ = ["backoff_seconds"]


def backoff_seconds(
    attempts: int,
    *,
    initial: float,
    maximum: float,
    multiplier: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempts + 1``: uniform in [cap/2, cap], cap = initial * m^n."""
    cap = min(maximum, initial * multiplier ** max(attempts, 0))
    r = (rng or random).random()
    return cap / 2 + r * cap / 2
