"""A platform's domain rules: which bindings a claim may touch, and what may be said of them.

The rule that protects the current holder: a prior-holder claim touches only bindings made
strictly before X (``bound_at < tenure_start``). A binding made at X or later belongs to the
current holder and is released only when that holder selects it by its ref (RELEASE_OWN).
Releasing removes the number from the account; the account itself is never deleted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from numfed.errors import FailedPrecondition

__all__ = ["Binding", "Masker", "own", "prior", "select_own"]


@dataclass(frozen=True)
class Binding:
    """An account bound to a number since ``bound_at``; ``released_at`` once the number is gone."""

    binding_id: int
    account_id: str
    nickname: str
    number: str
    kind: str
    bound_at: datetime
    released_at: datetime | None = None
    stale: bool = False

    @property
    def active(self) -> bool:
        return self.released_at is None


def prior(bindings: Iterable[Binding], tenure_start: datetime) -> list[Binding]:
    """Active bindings made before the current holder's tenure began (bound_at < X, strictly).

    Rule PLAT-REL-1.
    """
    return [b for b in bindings if b.active and b.bound_at < tenure_start]


def own(bindings: Iterable[Binding], tenure_start: datetime) -> list[Binding]:
    """Active bindings of the current holder's own tenure (bound_at >= X)."""
    return [b for b in bindings if b.active and b.bound_at >= tenure_start]


class Masker:
    """Masked labels and opaque refs derived with the platform's own secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("masking secret must have at least 16 bytes")
        self._secret = secret

    def _digest(self, domain: bytes, value: str) -> str:
        return hmac.new(self._secret, domain + value.encode(), hashlib.sha256).hexdigest()

    def ref(self, b: Binding) -> str:
        """An unguessable handle for one binding; reveals nothing about it."""
        return "b_" + self._digest(b"ref:", str(b.binding_id))[:24]

    def label(self, b: Binding) -> str:
        """E.g. ``account ***3f9 · since 2019``: no account id, nickname or number."""
        tag = self._digest(b"label:", b.account_id)[:3]
        if b.kind == "LABEL":
            return f"caller-ID label ***{tag} · set {b.bound_at.year}"
        return f"account ***{tag} · since {b.bound_at.year}"


def select_own(
    bindings: Sequence[Binding], refs: Iterable[str], tenure_start: datetime, masker: Masker
) -> list[Binding]:
    """The own-tenure bindings the holder picked; any other ref is refused, nothing applied.

    Rules: PLAT-REL-5, PLAT-REL-6.
    """
    mine = {masker.ref(b): b for b in own(bindings, tenure_start)}
    chosen: list[Binding] = []
    for ref in refs:
        b = mine.get(ref)
        if b is None:
            raise FailedPrecondition(
                "UNKNOWN_BINDING_REF",
                "a selected binding is unknown, released, or not of the holder's own tenure",
                metadata={"binding_ref": ref[:32]},
            )
        chosen.append(b)
    return chosen
