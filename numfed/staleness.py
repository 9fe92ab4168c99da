"""Refusals that may be the verifier's own staleness, named once for every verifier and sender.

A verifier judges with what it holds: a trust bundle and the prefix of the event log it has
applied. Some refusals say only that what it holds is older than what the sender acted on; a
newer bundle, or more of the log, would turn them into an acceptance in the federation's
ordinary course. Those are never final (DESIGN.md, flow 6): the verifier refreshes (if behind)
and judges once more before it answers, and the sender retries meanwhile, up to its deadline.

======================  ============================================================  ============
reason                  why a newer view may accept                                   verdict
======================  ============================================================  ============
``UNKNOWN_KEY``         a carrier's new key comes in a newer bundle (key rotation)    may be stale
``NO_TRUST_BUNDLE``     the verifier holds no bundle yet (or lost it to a new root)   may be stale
``BUNDLE_EXPIRED``      the held bundle expired; a newer one may exist                may be stale
``NUMBER_NOT_SERVED``   a port the verifier has not applied yet, or a numbering plan  may be stale
                        change in a newer bundle
``NUMBER_NOT_IN_PLAN``  a range added to the numbering plan in a newer bundle         may be stale
``KEY_OUT_OF_WINDOW``   a newer bundle may renew the key's window or open it earlier  may be stale
                        (a key announced ahead of its use); one reason covers both
                        ends of the window, and a key retired for cause is revoked
``KEY_REVOKED``         revocation is never undone                                    final
======================  ============================================================  ============

Every other refusal is final, because no newer bundle or log changes it in the ordinary course:
a bad or missing signature, a key of another carrier (``CARRIER_KEY_MISMATCH``), a key's number
scope (``KEY_OUT_OF_SCOPE``: widening a scope means a new key, which is ``UNKNOWN_KEY``), a port
half from neither party (``NOT_PORT_PARTY``), and a claim's own time, purpose or form.

Treating a stale-able refusal as final loses a holder's release or leaves a previous holder's
account open to an SMS code; treating a final one as stale-able costs retries that end at the
sender's deadline (``EXPIRED``, not ``REFUSED``) or, for an event batch, in the platform's
dead-letter list. So the doubtful ``KEY_OUT_OF_WINDOW`` is counted as possibly stale.
"""

from __future__ import annotations

from numfed.errors import NumfedError

__all__ = ["STALE_VERIFIER_REASONS", "may_be_stale"]

STALE_VERIFIER_REASONS = frozenset(
    {
        "UNKNOWN_KEY",
        "NO_TRUST_BUNDLE",
        "BUNDLE_EXPIRED",
        "NUMBER_NOT_SERVED",
        "NUMBER_NOT_IN_PLAN",
        "KEY_OUT_OF_WINDOW",
    }
)
"""ErrorInfo reasons that may be the verifier's own staleness rather than a verdict."""


def may_be_stale(outcome: object) -> bool:
    """Whether ``outcome`` is a refusal that a newer bundle or more of the log may reverse."""
    return isinstance(outcome, NumfedError) and outcome.reason in STALE_VERIFIER_REASONS
