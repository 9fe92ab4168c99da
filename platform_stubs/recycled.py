"""A platform's side of the recycled check: believe an answer only from the number's carrier,
and only to the question it asked.

The gateway relays ``CheckRecycled`` to the carrier that serves the number, but a platform does
not trust the gateway: it verifies the carrier's signature, that the answer is addressed to it,
that the signing key is the named carrier's (PLAT-CLAIM-KEY-CARRIER), that it answers the number
and the day asked (a signed answer about another number, or an older answer about another day,
must not stand in for it), and, like every claim it takes, that the carrier serves the number as
far as the platform has seen the event log (docs/authority.md). Rule PLAT-REC-1.
"""

from __future__ import annotations

from datetime import date, datetime

from numfed.claims import (
    ClaimPolicy,
    VerifiedRecycledClaim,
    normalize_number,
    verify_recycled_claim,
)
from numfed.envelope import Envelope
from numfed.errors import PermissionDenied
from numfed.portability import NumberPlan
from numfed.trust import TrustedState
from numfed.v1 import claim_pb2
from platform_stubs.store import PlatformStore

__all__ = ["check_recycled_answer"]


def check_recycled_answer(
    answer: claim_pb2.Envelope,
    *,
    trust: TrustedState,
    store: PlatformStore,
    platform_id: str,
    number: str,
    specified_date: date,
    now: datetime,
    policy: ClaimPolicy | None = None,
) -> VerifiedRecycledClaim:
    """Verify a ``CheckRecycledResponse.answer`` to ``platform_id``'s question (``number``,
    ``specified_date``); raise the precise error (rule PLAT-REC-1).

    Errors: those of :func:`numfed.claims.verify_recycled_claim`; PERMISSION_DENIED
    ``WRONG_QUESTION`` when the answer is about another number or another day than asked, and
    ``NUMBER_NOT_SERVED`` when the signing carrier does not serve the number. Blocking (one read
    of the platform's store): call it through ``store.run``.
    """
    kw = {"policy": policy} if policy is not None else {}
    verified = verify_recycled_claim(
        Envelope.from_proto(answer), trust, now=now, audience=platform_id, **kw
    )
    number = normalize_number(number)
    asked = (number, specified_date)
    answered = (verified.claim.number, verified.claim.specified_date)
    if answered != asked:
        raise PermissionDenied(
            "WRONG_QUESTION",
            f"the answer is about {answered[0]} on {answered[1]}, "
            f"not {asked[0]} on {asked[1]} as asked",
        )
    serving = store.serving_carriers([number], NumberPlan.from_bundle(trust.bundle))[number]
    if serving != verified.carrier_id:
        raise PermissionDenied(
            "NUMBER_NOT_SERVED",
            f"carrier {verified.carrier_id!r} does not serve this number",
            metadata={"carrier": verified.carrier_id},
        )
    return verified
