"""Platform checks: a platform's own recycled check (``PLAT-REC``).

The platform asks (``AskRecycledCheck`` in conformance mode makes it ask now); the kit, as the
gateway, relays whatever signed answer it chooses, and the platform says what it concluded.
"""

from __future__ import annotations

from datetime import date, timedelta

from numfed.claims import RecycledClaim, sign_claim
from numfed.conformance.gateway import OTHER_CARRIER, TEST_CARRIER
from numfed.conformance.platform.kit import (
    CALL_TIMEOUT,
    OK,
    PLATFORM_SUITE,
    PlatformKit,
    expect,
    now,
)
from numfed.conformance.report import CheckFailed
from numfed.envelope import SigningKey
from numfed.timeutil import to_date
from numfed.v1 import claim_pb2, conformance_pb2

check = PLATFORM_SUITE.check


def _answer(
    kit: PlatformKit,
    number: str,
    day: date,
    *,
    changed: bool = True,
    platform_id: str | None = None,
    carrier_id: str = TEST_CARRIER,
    key: SigningKey | None = None,
) -> claim_pb2.Envelope:
    """A RecycledClaim as a carrier signs it (the kit's good key of TEST_CARRIER unless given)."""
    t = now()
    claim = RecycledClaim(
        number=number,
        carrier_id=carrier_id,
        since=t - timedelta(seconds=1),
        changed=changed,
        platform_id=platform_id or kit.t.platform_id,
        issued_at=t,
        expires_at=t + timedelta(minutes=5),
        specified_date=day,
    )
    return sign_claim(claim, key or kit.keys.good).to_proto()


async def _ask(
    kit: PlatformKit, number: str, day: date, answer: claim_pb2.Envelope
) -> conformance_pb2.AskRecycledCheckResponse:
    kit.sim.recycled_answer = answer
    kit.sim.recycled_questions.clear()
    got = await kit.conformance.AskRecycledCheck(
        conformance_pb2.AskRecycledCheckRequest(number=number, specified_date=to_date(day)),
        timeout=CALL_TIMEOUT,
    )
    asked = [(q.number, q.specified_date) for q in kit.sim.recycled_questions]
    if (number, to_date(day)) not in asked:
        raise CheckFailed(f"the platform did not ask CheckRecycled about {number} on {day}")
    return got


@check(
    "recycled_answer_verified",
    "A recycled answer is believed only when it answers the question asked (the number and the "
    "day), is addressed to the platform, and comes from the number's serving carrier; its bit is "
    "taken as signed.",
    "The gateway relays the answer: a signed answer about another number, an older one about "
    "another day, or one meant for another platform must not decide what happens to an account.",
    rules=("PLAT-REC-1",),
)
async def recycled_answer_verified(kit: PlatformKit) -> str:
    """PLAT-REC-1."""
    number = kit.number()
    day = now().date() - timedelta(days=10)
    for changed in (True, False):
        got = await _ask(kit, number, day, _answer(kit, number, day, changed=changed))
        expect(got.status, OK, f"a good answer (changed={changed})")
        if got.changed != changed:
            raise CheckFailed(
                f"a good answer said changed={changed}; the platform took {got.changed}"
            )
    refused = [
        ("an answer about another number", _answer(kit, kit.number(), day), "WRONG_QUESTION"),
        (
            "an answer about another day",
            _answer(kit, number, day - timedelta(days=1)),
            "WRONG_QUESTION",
        ),
        (
            "an answer addressed to another platform",
            _answer(kit, number, day, platform_id="another-platform"),
            "WRONG_AUDIENCE",
        ),
        (
            "an answer from a carrier that does not serve the number",
            _answer(kit, number, day, carrier_id=OTHER_CARRIER, key=kit.keys.other),
            "NUMBER_NOT_SERVED",
        ),
    ]
    for what, answer, why in refused:
        got = await _ask(kit, number, day, answer)
        expect(got.status, "PERMISSION_DENIED", what, reason_=why)
    return f"believed the good answers; refused {len(refused)} that answer something else"
