"""Who may ask the gateway what: claim checks beyond the signature (domain rules, no grpc).

A platform verifies every claim itself; the gateway checks too, so that a bad claim changes
nothing and never reaches a platform. The signing carrier must be the caller, and the caller
must serve the number now (portability registry).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from numfed.claims import Purpose, VerifiedClaim, verify_tenure_claim
from numfed.envelope import Envelope
from numfed.errors import InvalidArgument, PermissionDenied
from numfed.identity import PeerId, Role
from numfed.trust import TrustedState

__all__ = ["CheckedClaim", "Portability", "check_claim", "select_platforms"]


class Portability:
    """number pseudonym -> the carrier serving it now."""

    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        self._by_key: dict[str, str] = dict(entries or {})

    def set(self, number_key: str, carrier_id: str) -> None:
        self._by_key[number_key] = carrier_id

    def update(self, entries: Iterable[tuple[str, str]]) -> None:
        self._by_key.update(entries)

    def carrier_for(self, number_key: str) -> str | None:
        return self._by_key.get(number_key)

    def __len__(self) -> int:
        return len(self._by_key)


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
    serving = portability.carrier_for(key)
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
