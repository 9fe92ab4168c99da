"""One rule for the times inside signed objects: none is believed on the signer's word alone.

Every time a carrier or the root signs is compared with the verifier's own clock, allowing the
federation's clock skew (published in the signed trust bundle):

- **issued_at** may not lie in the future: ``ISSUED_IN_FUTURE``. Claims, recycled answers, event
  batches and trust bundles alike.
- **what has happened** may not lie after it was signed nor after now: an event's ``at``, a
  PENDING_RELEASE's ``as_of``, a REASSIGNED's ``tenure_start``, a PORTED half's ``at``, a recycled
  answer's ``since`` (``TIME_IN_FUTURE``, naming the field).
- **the signing key** must have been valid when the object says it was signed (the key's window
  holds issued_at) *and* its window must still hold the verifier's now, within the skew and a
  grace the verifier states: a key whose window has closed cannot sign something backdated into
  it (``KEY_OUT_OF_WINDOW``).
- **how old** a fresh object may be: a claim ends at its ``expires_at`` (``CLAIM_EXPIRED``); an
  event batch published to the gateway must have been signed within the bundle's maximum claim
  lifetime (``TOO_OLD``).

Times are compared as differences, never by adding to a signed time (a signed time may sit at
year 9999, where adding overflows).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from numfed.errors import InvalidArgument, Unauthenticated
from numfed.timeutil import require_utc

if TYPE_CHECKING:
    from numfed.trust import CarrierKey

__all__ = [
    "DEFAULT_MAX_CLAIM_LIFETIME",
    "DEFAULT_MAX_CLOCK_SKEW",
    "LOG_KEY_GRACE",
    "MAX_CLAIM_LIFETIME_CEILING",
    "MAX_CLOCK_SKEW_CEILING",
    "check_happened",
    "check_issued_at",
    "check_key_window",
    "check_lifetime",
]

DEFAULT_MAX_CLOCK_SKEW = timedelta(seconds=60)
"""How far the members' clocks may disagree, when the trust bundle does not say."""
DEFAULT_MAX_CLAIM_LIFETIME = timedelta(minutes=30)
"""How long a claim may live (and how old a published event batch may be), when the trust
bundle does not say."""
MAX_CLOCK_SKEW_CEILING = timedelta(hours=1)
"""The largest clock skew a trust bundle may publish."""
MAX_CLAIM_LIFETIME_CEILING = timedelta(days=1)
"""The largest maximum claim lifetime a trust bundle may publish."""
LOG_KEY_GRACE = timedelta(days=30)
"""How long after a carrier key's window closed a platform still takes the event batches it
signed inside its window from the gateway's log. The log keeps batches until each platform has
acknowledged them, so a platform that was away gets old batches late; this grace is how late.
A leaked retired key can backdate batches for this long, and only through a gateway that lets
them into its log (the gateway itself takes only freshly signed batches)."""


def check_issued_at(
    issued_at: datetime,
    now: datetime,
    *,
    skew: timedelta,
    max_age: timedelta | None = None,
    what: str = "the signed object",
) -> None:
    """``issued_at`` is not after ``now`` beyond ``skew`` (``ISSUED_IN_FUTURE``) and, with
    ``max_age``, not older than that plus ``skew`` (``TOO_OLD``).

    Rules: PLAT-CLAIM-8, PLAT-EVT-3.
    """
    now = require_utc(now, "now")
    if issued_at - now > skew:
        raise Unauthenticated("ISSUED_IN_FUTURE", f"{what} is issued in the future")
    if max_age is not None and now - issued_at > max_age + skew:
        raise Unauthenticated(
            "TOO_OLD", f"{what} was signed more than {max_age} ago; sign it again"
        )


def check_happened(
    t: datetime, issued_at: datetime, now: datetime, *, skew: timedelta, field: str
) -> None:
    """``t`` records something that has happened: not after the object was signed, nor after
    ``now``, beyond ``skew``; else INVALID_ARGUMENT ``TIME_IN_FUTURE`` naming ``field``.

    Rule PLAT-EVT-3.
    """
    if t - min(issued_at, require_utc(now, "now")) > skew:
        raise InvalidArgument(
            "TIME_IN_FUTURE",
            f"{field} lies after the moment the object was signed or after now",
            metadata={"field": field},
        )


def check_key_window(
    key: CarrierKey,
    issued_at: datetime,
    now: datetime,
    *,
    skew: timedelta,
    grace: timedelta = timedelta(0),
) -> None:
    """The key was valid at ``issued_at`` and its window still holds ``now`` within ``skew``
    plus ``grace``; else UNAUTHENTICATED ``KEY_OUT_OF_WINDOW``.

    ``issued_at`` is the signer's word: checked alone, a key whose window has closed could sign
    anything dated inside it. (Its window's start needs no check against now: issued_at is not
    after now beyond the skew, and not before the start.)

    Rule PLAT-CLAIM-6.
    """
    if not key.valid_at(issued_at):
        raise Unauthenticated(
            "KEY_OUT_OF_WINDOW", "signed outside the signing key's validity window"
        )
    if require_utc(now, "now") - key.not_after > skew + grace:
        raise Unauthenticated(
            "KEY_OUT_OF_WINDOW",
            "the signing key's validity window closed before now",
            metadata={"not_after": key.not_after.isoformat()},
        )


def check_lifetime(
    issued_at: datetime,
    expires_at: datetime,
    now: datetime,
    *,
    skew: timedelta,
    max_lifetime: timedelta,
    grace: timedelta = timedelta(0),
) -> None:
    """A claim's own window: not expired before ``now`` beyond ``skew`` plus ``grace``
    (``CLAIM_EXPIRED``), issued_at not in the future (:func:`check_issued_at`), and living no
    longer than ``max_lifetime`` (INVALID_ARGUMENT ``CLAIM_LIFETIME_TOO_LONG``).

    Rule PLAT-CLAIM-7.
    """
    now = require_utc(now, "now")
    if now - expires_at > skew + grace:
        raise Unauthenticated("CLAIM_EXPIRED", "the claim has expired")
    check_issued_at(issued_at, now, skew=skew, what="the claim")
    if expires_at - issued_at > max_lifetime:
        raise InvalidArgument("CLAIM_LIFETIME_TOO_LONG", "the claim lives longer than allowed")
