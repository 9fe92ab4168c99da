"""A platform's domain rules: which bindings a claim may touch, and what may be said of them.

The rule that protects the current holder: a prior-holder claim touches only bindings made
strictly before X (``bound_at < tenure_start``). A binding made at X or later belongs to the
current holder and is released only when that holder selects it by its ref (RELEASE_OWN).
Releasing removes the number from the account; the account itself is never deleted.

What may be said of the bindings found: masked summaries only, identical ones counted once
(:func:`summarize`), so that a number marked by 90,000 users is a handful of summaries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from numfed.errors import FailedPrecondition

__all__ = ["Binding", "Masker", "Summary", "own", "prior", "select_own", "summarize"]


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
        """E.g. ``account ***3f9 · since 2019``: no account id, nickname or number.

        A caller-ID label's tag comes from its text (kept as the binding's nickname), not from
        the user who set it: every label with the same text set in the same year has the same
        masked label, ``caller-ID label ***a41 · set 2021``, and the text itself never leaves.
        """
        if b.kind == "LABEL":
            tag = self._digest(b"label-text:", b.nickname)[:3]
            return f"caller-ID label ***{tag} · set {b.bound_at.year}"
        tag = self._digest(b"label:", b.account_id)[:3]
        return f"account ***{tag} · since {b.bound_at.year}"


@dataclass(frozen=True)
class Summary:
    """Masked bindings of one kind and label, counted; or one binding with its ref."""

    kind: str
    masked_label: str
    count: int
    binding_ref: str = ""


def summarize(bindings: Iterable[Binding], masker: Masker, *, with_refs: bool) -> list[Summary]:
    """The bindings as masked summaries, in the order first met.

    Without refs (answers about prior holders), bindings of the same kind and masked label are
    one summary with their count. With refs (the holder's own bindings, to pick from), each
    binding is its own summary, as each is picked on its own.
    """
    if with_refs:
        return [Summary(b.kind, masker.label(b), 1, masker.ref(b)) for b in bindings]
    counts: dict[tuple[str, str], int] = {}
    for b in bindings:
        key = (b.kind, masker.label(b))
        counts[key] = counts.get(key, 0) + 1
    return [Summary(kind, label, n) for (kind, label), n in counts.items()]


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
