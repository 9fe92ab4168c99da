"""Make the gateway and a platform disagree about who serves a number (docs/authority.md).

"Every verifier that has applied the same prefix of the event log agrees on every number's
serving carrier" holds only if every verifier accepts the same batches. The gateway verifies a
batch once, with the trust bundle it holds when the batch arrives, and logs it; a platform
verifies the same logged batch again, with the bundle *it* holds when it applies it, and a batch
that does not verify then is "skipped for good" and acknowledged (platform_stubs/events.py). So
anything that makes a logged batch unverifiable later, or not yet verifiable, drops it from one
verifier's port state and not from the other's:

- a carrier key revoked or rotated out of the bundle: every batch that key signed, port halves
  included, is skipped by a platform that applies the log afterwards (one that was down for a
  while, or joins later and replays the log from its start);
- a platform one bundle behind the gateway: a batch signed with a key the gateway already
  trusts is UNKNOWN_KEY to it, skipped, and never looked at again once its bundle catches up.

Impact: the platform keeps the donor as the number's serving carrier for good. It refuses every
claim of the real serving carrier (NUMBER_NOT_SERVED; the release dispatcher retries until the
job's deadline, so the holder's releases are lost there) and every lifecycle event about the
number from it: a REASSIGNED batch is refused whole, so the previous holder's bindings are never
marked stale and an SMS code still opens them at that platform (the takeover numfed exists to
stop). Nothing heals it: the batch is acknowledged, so it is never delivered again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from numfed import pki
from numfed.envelope import SigningKey
from numfed.events import EventKind, LifecycleEvent
from numfed.scenario import demo_scenario
from numfed.testing import Federation
from tests.attacks.lying import (
    half,
    publish,
    restart_gateway,
    serving_at_platforms,
    signed_batch,
    write_bundle,
)

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]  # cmcc's range; its holder's accounts on weibo are active
VICTIM = "weibo"


def old_holders_account(platform: str) -> str:
    """An account on ``platform`` bound to N by the holder before the one who holds it now:
    after a REASSIGNED it must no longer open by an SMS code."""
    x = WORLD.histories[N].tenure_start(datetime.now(UTC))
    return next(
        b.account_id for b in WORLD.bindings_on(platform) if b.number == N and b.bound_at >= x
    )


async def test_a_platform_that_applies_the_log_after_a_key_rotation_agrees_who_serves(
    federation: Federation,
) -> None:
    """weibo is down while N ports cmcc -> cucc (both halves, both keys valid); then cmcc's key
    is rotated (a new key added, the old one's window closed) and the gateway restarts on the new
    bundle. When weibo comes back it applies the log it missed with the new bundle: cmcc's half
    was signed inside its key's window, so it still counts (events.proto: a platform takes a
    logged batch whose key's window closed up to LOG_KEY_GRACE ago), and weibo agrees with the
    gateway that cucc serves N. (A key *revoked* is a compromise: nothing it signed counts, and
    a platform sets such a batch aside in its dead-letter list for operators to see; see
    test_a_batch_signed_by_a_key_revoked_since_is_set_aside_not_dropped.)"""
    fed = federation
    await fed.platforms[VICTIM].stop(0)
    at = datetime.now(UTC)
    for carrier in ("cmcc", "cucc"):
        await publish(fed, carrier, signed_batch(fed, carrier, half(N, "cmcc", "cucc", at)))
    assert fed.gateway.portability.carrier_for(N) == "cucc"

    old = {"cmcc": pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")}
    write_bundle(fed, version=2, extra_keys={"cmcc": SigningKey.generate()}, retired=old)
    await restart_gateway(fed)
    await fed.restart_platform(VICTIM)
    await fed.events_settled()
    assert fed.gateway.portability.carrier_for(N) == "cucc"

    # The new serving carrier marks the previous holder's bindings stale.
    reassigned = LifecycleEvent.new(
        N, EventKind.REASSIGNED, datetime.now(UTC), tenure_start=datetime.now(UTC)
    )
    await publish(fed, "cucc", signed_batch(fed, "cucc", reassigned))
    await fed.events_settled()

    assert serving_at_platforms(fed, N)[VICTIM] == "cucc", (
        f"{VICTIM} skipped cmcc's logged port half (its key was rotated since) and still takes "
        "cmcc for N's carrier; the gateway says cucc"
    )
    victim = fed.platforms[VICTIM]
    assert not victim.store.login_by_sms(N, old_holders_account(VICTIM)), (
        f"{VICTIM} refused cucc's REASSIGNED: the previous holder's account still opens by SMS"
    )


async def test_a_platform_one_bundle_behind_does_not_drop_a_batch_for_good(
    federation: Federation,
) -> None:
    """cucc rotates to a new key (bundle v2 lists both). The gateway restarts on v2; the
    platforms still hold v1 for up to a minute (their refresh period). cucc's half of a port,
    signed with its new key, is accepted and logged by the gateway, and refused by every platform
    as UNKNOWN_KEY, for good: once their bundle catches up they still keep cmcc for N."""
    fed = federation
    new_key = SigningKey.generate()
    write_bundle(fed, version=2, extra_keys={"cucc": new_key})
    await restart_gateway(fed)
    behind = [p for p, h in fed.platforms.items() if h.trust.trusted().bundle.version == 1]  # type: ignore[union-attr]
    assert behind, "every platform refreshed its bundle already; the window was missed"

    at = datetime.now(UTC)
    await publish(fed, "cmcc", signed_batch(fed, "cmcc", half(N, "cmcc", "cucc", at)))
    await publish(fed, "cucc", signed_batch(fed, "cucc", half(N, "cmcc", "cucc", at), key=new_key))
    assert fed.gateway.portability.carrier_for(N) == "cucc"
    await fed.events_settled()
    for p in behind:  # the platforms catch up with the bundle
        await fed.platforms[p].trust.refresh()
    serving = serving_at_platforms(fed, N)
    assert {p: serving[p] for p in behind} == {p: "cucc" for p in behind}, (
        "platforms that were one bundle behind dropped cucc's half for good and still take "
        f"cmcc for N's carrier; the gateway says cucc: {serving}"
    )


async def test_a_batch_signed_by_a_key_revoked_since_is_set_aside_not_dropped(
    federation: Federation,
) -> None:
    """A key revoked after the gateway logged its batch: a platform applying that part of the
    log later refuses the batch (nothing a compromised key signed counts) and so may disagree
    with the gateway about N. It must not do so silently: the batch is in its dead-letter list,
    which operators read (numfed platform dead-letters) and replay once resolved."""
    fed = federation
    await fed.platforms[VICTIM].stop(0)
    at = datetime.now(UTC)
    for carrier in ("cmcc", "cucc"):
        await publish(fed, carrier, signed_batch(fed, carrier, half(N, "cmcc", "cucc", at)))
    old = {"cmcc": pki.load_carrier_signer(fed.layout.pki_dir, "cmcc")}
    write_bundle(fed, version=2, extra_keys={"cmcc": SigningKey.generate()}, revoked=old)
    await restart_gateway(fed)
    victim = await fed.restart_platform(VICTIM)
    await fed.events_settled()
    letters = await victim.store.run(victim.store.dead_letters)
    assert [d.reason for d in letters] == ["KEY_REVOKED"], letters
