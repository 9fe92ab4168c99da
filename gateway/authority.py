"""Who may ask the gateway what: claim checks beyond the signature (domain rules, no grpc).

A platform verifies every claim itself; the gateway checks too, so that a bad claim changes
nothing and never reaches a platform. The signing carrier must be the caller, and the caller
must serve the number now: its range holder, unless a port both carriers signed moved it
(docs/authority.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from numfed.claims import Purpose, VerifiedClaim, verify_tenure_claim
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, PermissionDenied
from numfed.identity import PeerId, Role
from numfed.portability import NumberPlan
from numfed.trust import TrustedState

__all__ = ["CheckedClaim", "Portability", "check_claim", "select_platforms"]


class Portability:
    """Who serves each number, for the claim path: the numbering plan, and the ports completed
    so far (number pseudonym -> recipient), mirrored in memory from the ``number_ports`` table.

    Event authority is judged against the database (:mod:`numfed.portstate`); this mirror only
    spares the claim path a database read. ``seq`` is the last event batch whose completed ports
    it holds, so a replica can catch up on ports completed through another one.
    """

    def __init__(
        self,
        plan: NumberPlan,
        pseudonym: Callable[[str], str],
        ported: Mapping[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self._pseudonym = pseudonym
        self._ported: dict[str, tuple[str, int]] = {k: (c, 0) for k, c in (ported or {}).items()}
        """number pseudonym -> (serving carrier, seq of the batch that completed the port)."""
        self.seq = 0

    def apply(self, ported: Iterable[tuple[str, str, int]]) -> None:
        """Take every port completed after ``seq``, read in seq order from the database:
        (number pseudonym, serving carrier, seq that completed it)."""
        for key, carrier, seq in ported:
            self._take(key, carrier, seq)
            self.seq = max(self.seq, seq)

    def record(self, number_key: str, carrier_id: str, seq: int) -> None:
        """A port this replica just completed in batch ``seq``. ``seq`` (the watermark) stays,
        so the next :meth:`apply` still reads what other replicas completed before it."""
        self._take(number_key, carrier_id, seq)

    def _take(self, key: str, carrier: str, seq: int) -> None:
        # A newer port of the same number may already be here (another replica's, read by
        # the follower before this replica's own publish returned): never go back to an older.
        held = self._ported.get(key)
        if held is None or held[1] <= seq:
            self._ported[key] = (carrier, seq)

    def carrier_for(self, number: str, number_key: str | None = None) -> str | None:
        """The carrier serving ``number`` now, or None when no carrier does.

        ``number_key`` is the number's pseudonym, when the caller has it already."""
        if not self._ported:
            return self.plan.range_holder(number)
        key = self._pseudonym(number) if number_key is None else number_key
        ported = self._ported.get(key)
        return ported[0] if ported is not None else self.plan.range_holder(number)

    def __len__(self) -> int:
        """How many numbers have been ported."""
        return len(self._ported)


@dataclass(frozen=True)
class CheckedClaim:
    verified: VerifiedClaim
    number_key: str


def check_claim(
    envelope: Envelope,
    *,
    caller: PeerId,
    trust: TrustedState,
    portability: Portability,
    pseudonym: Callable[[str], str],
    purposes: Collection[Purpose],
    now: datetime,
) -> CheckedClaim:
    """Verify a carrier's claim and its authority, or raise the precise error.

    That the caller is a member at all is checked at the edge, before any handler runs
    (:mod:`gateway.membership`)."""
    if caller.role is not Role.CARRIER:
        raise PermissionDenied("ROLE_NOT_ALLOWED", "only carriers present tenure claims")
    verified = verify_tenure_claim(envelope, trust, now=now, purposes=purposes)
    if verified.carrier_id != caller.id:
        raise PermissionDenied(
            "CALLER_NOT_SIGNER",
            f"claim signed for carrier {verified.carrier_id!r}, presented by {caller.id!r}",
        )
    key = pseudonym(verified.claim.number)
    serving = portability.carrier_for(verified.claim.number, key)
    if serving != caller.id:
        raise PermissionDenied(
            "NUMBER_NOT_SERVED",
            f"carrier {caller.id!r} does not serve this number now",
            metadata={"carrier": caller.id},
        )
    return CheckedClaim(verified, key)


def select_platforms(requested: Iterable[str], known: Collection[str]) -> list[str]:
    """The platforms a request names (all when none), checked and sorted."""
    names = list(requested)
    if len(set(names)) != len(names):
        raise InvalidArgument("DUPLICATE_PLATFORM", "a platform is named twice")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InvalidArgument(
            "UNKNOWN_PLATFORM",
            f"unknown platform {unknown[0]!r}",
            metadata={"platform": unknown[0]},
        )
    return sorted(names or known)
