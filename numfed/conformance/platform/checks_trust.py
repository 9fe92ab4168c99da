"""Platform checks: the trust workflow (``PLAT-TRUST``, after TUF's client workflow, section 5).

Each check starts from the platform's pin and the kit's base bundle v1 and leaves it there
(:meth:`PlatformKit.fresh_trust`), and says what the platform must hold afterwards by asking
``GetTrustState``: a refused update changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

from numfed.claims import Purpose
from numfed.conformance.platform.kit import (
    CALL_TIMEOUT,
    OK,
    PLATFORM_SUITE,
    STATE_PATIENCE,
    PlatformKit,
    expect,
    now,
    reason,
    status_code,
)
from numfed.conformance.report import CheckFailed
from numfed.envelope import Envelope, SigningKey, sign
from numfed.trust import BUNDLE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE
from numfed.v1 import conformance_pb2

check = PLATFORM_SUITE.check

ROOT_LIFE = timedelta(days=365)


def _keys(n: int = 3) -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(n)]


async def _refused(kit: PlatformKit, what: str, *, why: str | None = None) -> str:
    """Have the platform refresh; the refresh must be refused (``why``: with that reason)."""
    answer = await kit.refresh()
    if answer.status.code == 0:
        raise CheckFailed(f"{what} was accepted")
    if why is not None and reason(answer.status) != why:
        raise CheckFailed(f"{what} was refused with {reason(answer.status)}, not {why}")
    return f"{status_code(answer.status)} {reason(answer.status)}"


async def _holds(kit: PlatformKit, what: str, *, root: int, bundle: int) -> None:
    state = await kit.trust_state()
    if (state.root_version, state.bundle_version) != (root, bundle):
        raise CheckFailed(
            f"{what}: the platform holds root v{state.root_version} and bundle "
            f"v{state.bundle_version}, not root v{root} and bundle v{bundle}"
        )


def _digest(envelope: Envelope) -> bytes:
    return hashlib.sha256(envelope.payload).digest()


async def _claim_ok(kit: PlatformKit, what: str) -> None:
    s = await kit.seed(before=1, at=False, after=False)
    (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x))
    expect(r.status, OK, what)


@check(
    "trust_bundle_accepted",
    "The platform fetches its trust from the gateway and accepts a bundle signed by a threshold "
    "of its root's keys, whatever other signatures (by keys it does not know, in any order) the "
    "envelope carries.",
    "Every claim is verified against this bundle; a federation adding a co-signer must not cut "
    "its platforms off.",
    rules=("PLAT-TRUST-1",),
)
async def trust_bundle_accepted(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        stranger = SigningKey.generate()
        envelope = sign(
            BUNDLE_PAYLOAD_TYPE,
            kit.bundle(2).to_proto().SerializeToString(deterministic=True),
            [stranger, *kit.sim.root_signers],
        )
        version = await kit.take(envelope, what="bundle v2 with an extra unknown signature")
        if version != 2:
            raise CheckFailed(f"after taking bundle v2 the platform holds v{version}")
        await _claim_ok(kit, "a claim under the bundle just taken")
    return "bundle v2 taken (with a signature by an unknown key first)"


@check(
    "foreign_bundle_refused",
    "A bundle signed under a foreign root (by keys the platform's root does not list) is "
    "refused: a platform that held one keeps it and believes no key only the foreign one lists; "
    "a platform that held none still holds none and stays NOT_SERVING.",
    "The gateway is not trusted: if a platform takes a bundle its own root did not sign, whoever "
    "runs the gateway can slip in any carrier key.",
    rules=("PLAT-TRUST-2", "PLAT-OPS-1"),
)
async def foreign_bundle_refused(kit: PlatformKit) -> str:
    """PLAT-TRUST-2, seen three ways: the refresh is refused, the held state is unchanged, and
    (what does not rest on the conformance hooks) a claim by a key that only the foreign bundle
    lists is refused; with no bundle held, the platform's health stays NOT_SERVING
    (PLAT-OPS-1)."""
    async with kit.fresh_trust():
        foreign = _keys()
        kit.sim.serve_envelope(kit.sim.sign_bundle(kit.bundle(2, with_late=True), foreign))
        held = await _refused(kit, "a bundle v2 signed under a foreign root")
        await _holds(kit, "after refusing it", root=1, bundle=1)
        s = await kit.seed(at=False, after=False)
        (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.late))
        expect(
            r.status,
            "UNAUTHENTICATED",
            "a claim by a key that only the foreign bundle lists",
            reason_="UNKNOWN_KEY",
        )
        await kit.conformance.ResetTrust(conformance_pb2.ResetTrustRequest(), timeout=CALL_TIMEOUT)
        kit.sim.serve_envelope(kit.sim.sign_bundle(kit.bundle(1), foreign))
        await _refused(kit, "a first bundle signed under a foreign root")
        await _holds(kit, "holding no bundle, after refusing a foreign one", root=1, bundle=0)
        status = await kit.serving_status()
        if status != "NOT_SERVING":
            raise CheckFailed(
                f"holding no bundle, after refusing a foreign one, health reports {status}, "
                "not NOT_SERVING"
            )
    return f"refused ({held}), with a bundle held and with none (NOT_SERVING)"


@check(
    "duplicate_signature_counted_once",
    "Two signatures under one root key count once: a bundle signed twice by one key of a "
    "threshold-2 root is refused.",
    "Otherwise one stolen root key would make a threshold alone.",
    rules=("PLAT-TRUST-3",),
)
async def duplicate_signature_counted_once(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        # The pin's keys again, under a threshold the kit knows: the held bundle stays signed.
        keys = list(kit.sim.root_signers)
        kit.sim.rotate_root(keys=keys, threshold=2, expires_at=now() + ROOT_LIFE)
        await kit.take(what="root v2 (the pin's keys, threshold 2)")
        one = kit.sim.sign_bundle(kit.bundle(2), keys[:1])
        twice = Envelope(one.payload, one.payload_type, (*one.signatures, *one.signatures))
        kit.sim.serve_envelope(twice)
        held = await _refused(kit, "a bundle signed twice by one key of a threshold-2 root")
        await _holds(kit, "after refusing it", root=2, bundle=1)
    return f"refused ({held})"


@check(
    "bundle_payload_type_checked",
    "A bundle signed by the root's keys under another payload_type (a root's) is refused with "
    "WRONG_PAYLOAD_TYPE, and the held bundle stays.",
    "The root keys sign roots and bundles; each must be read only as what it was signed as.",
    rules=("PLAT-TRUST-4",),
)
async def bundle_payload_type_checked(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        payload = kit.bundle(2).to_proto().SerializeToString(deterministic=True)
        kit.sim.serve_envelope(sign(ROOT_PAYLOAD_TYPE, payload, kit.sim.root_signers))
        held = await _refused(kit, "a bundle typed as a root", why="WRONG_PAYLOAD_TYPE")
        await _holds(kit, "after refusing it", root=1, bundle=1)
    return f"refused ({held})"


@check(
    "bundle_rollback_refused",
    "An older trust bundle offered after a newer one is refused; the platform keeps the newer "
    "bundle and its revocations.",
    "A rollback would bring back keys the federation has revoked.",
    rules=("PLAT-TRUST-5",),
)
async def bundle_rollback_refused(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        assert kit.base is not None
        await kit.take(kit.sim.publish_bundle(kit.bundle(2, revoke_doomed=True)), what="bundle v2")
        kit.sim.serve_envelope(kit.base)
        held = await _refused(kit, "bundle v1 after v2", why="BUNDLE_ROLLBACK")
        await _holds(kit, "after the rollback", root=1, bundle=2)
    return f"refused ({held}); v2, which revokes a key, kept"


@check(
    "rollback_refused_after_restart",
    "The platform persists the trust it accepted: after ReloadTrust (a restart) it holds the "
    "same root and bundle, so an older bundle is still a rollback.",
    "A platform that forgets on restart can be rolled back by whoever serves it next.",
    rules=("PLAT-TRUST-6",),
)
async def rollback_refused_after_restart(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        await kit.take(kit.sim.publish_bundle(kit.bundle(2)), what="bundle v2")
        reloaded = await kit.conformance.ReloadTrust(
            conformance_pb2.ReloadTrustRequest(), timeout=CALL_TIMEOUT
        )
        if (reloaded.state.root_version, reloaded.state.bundle_version) != (1, 2):
            raise CheckFailed(
                f"after a restart the platform holds root v{reloaded.state.root_version} and "
                f"bundle v{reloaded.state.bundle_version}, not the root v1 and bundle v2 it "
                "accepted"
            )
        await kit.take(what="bundle v2 again after the restart")
        await _holds(kit, "after the restart", root=1, bundle=2)
    return "root v1 and bundle v2 kept across a restart"


@check(
    "skipped_bundle_version_accepted",
    "A bundle several versions ahead (v5 after v1) is accepted: versions may be skipped.",
    "A platform that missed some bundles is not under attack; refusing would cut it off.",
    rules=("PLAT-TRUST-7",),
)
async def skipped_bundle_version_accepted(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        version = await kit.take(kit.sim.publish_bundle(kit.bundle(5)), what="bundle v5 after v1")
        if version != 5:
            raise CheckFailed(f"the platform holds bundle v{version} after taking v5")
    return "v5 taken after v1"


@check(
    "equal_version_keeps_held",
    "A bundle with the version held but other bytes leaves the held bundle in place.",
    "Two bundles under one version mean the root key holders equivocated; switching between "
    "them would let whoever serves choose.",
    rules=("PLAT-TRUST-8",),
)
async def equal_version_keeps_held(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        assert kit.base is not None
        other = kit.sim.sign_bundle(kit.bundle(1, lifetime=timedelta(days=2)))
        if other.payload == kit.base.payload:
            raise CheckFailed("kit error: the second v1 is the same as the first")
        kit.sim.serve_envelope(other)
        await kit.refresh()
        state = await kit.trust_state()
        if state.bundle_digest != _digest(kit.base):
            raise CheckFailed("the platform replaced its bundle v1 with another v1")
    return "the held v1 kept"


@check(
    "expired_bundle_refused",
    "A newer bundle that has already expired is refused with BUNDLE_EXPIRED and changes nothing.",
    "An expired bundle may hold keys revoked since; taking it is a freeze attack.",
    rules=("PLAT-TRUST-9",),
)
async def expired_bundle_refused(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        stale = kit.keys.bundle(2, now=now() - timedelta(days=2), lifetime=timedelta(days=1))
        kit.sim.publish_bundle(stale)
        held = await _refused(kit, "bundle v2 that expired a day ago", why="BUNDLE_EXPIRED")
        await _holds(kit, "after refusing it", root=1, bundle=1)
    return f"refused ({held})"


@check(
    "expired_held_bundle_verifies_nothing",
    "Once the bundle it holds has expired (and no newer one is served), the platform refuses "
    "claims with UNAUTHENTICATED BUNDLE_EXPIRED.",
    "Keys revoked after the bundle expired would still verify under it; an expired bundle is "
    "kept only as the floor against rollbacks.",
    rules=("PLAT-TRUST-10",),
)
async def expired_held_bundle_verifies_nothing(kit: PlatformKit) -> str:
    s = await kit.seed(at=False, after=False)
    async with kit.fresh_trust():
        lifetime = 0.5
        while True:
            short = kit.bundle(2, lifetime=timedelta(seconds=lifetime))
            kit.sim.publish_bundle(short)
            answer = await kit.refresh()
            if answer.status.code == 0:
                break
            if reason(answer.status) != "BUNDLE_EXPIRED" or lifetime > 10:
                raise CheckFailed(
                    f"a bundle v2 valid for {lifetime:g} s was refused: {reason(answer.status)}"
                )
            lifetime *= 4  # this machine was slower than the bundle's life: try a longer one
        await asyncio.sleep(max((short.expires_at - now()).total_seconds(), 0) + 0.05)
        (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x))
        expect(
            r.status, "UNAUTHENTICATED", "a claim under an expired bundle", reason_="BUNDLE_EXPIRED"
        )
    return "a claim refused once the held bundle expired (BUNDLE_EXPIRED)"


@check(
    "root_rotation_followed",
    "The platform follows root rotations (v1 to v2 to v3, each signed by the old and the new "
    "keys) and then takes bundles signed by the newest root's keys.",
    "Root keys are rotated on schedule and after a compromise; a platform stuck on an old root "
    "is cut off, or trusts keys the federation dropped.",
    rules=("PLAT-TRUST-11",),
)
async def root_rotation_followed(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() + ROOT_LIFE)
        await kit.take(kit.sim.publish_bundle(kit.bundle(2)), what="bundle v2 under root v2")
        await _holds(kit, "after one rotation", root=2, bundle=2)
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() + ROOT_LIFE)
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() + ROOT_LIFE)
        await kit.take(kit.sim.publish_bundle(kit.bundle(3)), what="bundle v3 under root v4")
        await _holds(kit, "after two more rotations at once", root=4, bundle=3)
        await _claim_ok(kit, "a claim under root v4")
    return "walked to root v2, then v4; bundles under each taken"


@check(
    "rotation_needs_both_thresholds",
    "Root v2 is refused when it lacks a threshold of v1's keys, or a threshold of its own keys, "
    "with ROOT_THRESHOLD_NOT_MET; the platform stays on v1.",
    "A new root needs the old keys' consent (or a thief of the gateway could name any root) and "
    "its own (or it names keys that never agreed to serve).",
    rules=("PLAT-TRUST-12",),
)
async def rotation_needs_both_thresholds(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        new = _keys()
        cases = [
            ("root v2 signed by its own keys only", new),
            (
                "root v2 signed by v1's keys and one of its own (threshold 2)",
                [*kit.sim.root_signers, new[0]],
            ),
        ]
        for what, signers in cases:
            root = kit.sim.root(
                version=2, keys=new, threshold=2, expires_at=now() + ROOT_LIFE, signers=signers
            )
            kit.sim.serve_raw(roots=[root], bundle=kit.sim.sign_bundle(kit.bundle(2), new))
            await _refused(kit, what, why="ROOT_THRESHOLD_NOT_MET")
            await _holds(kit, f"after {what}", root=1, bundle=1)
    return "both refused; root v1 kept"


@check(
    "root_version_skip_refused",
    "A root two versions ahead (v3 after v1, signed by v1's keys and its own) is refused with "
    "ROOT_VERSION_NOT_NEXT.",
    "Roots are walked one version at a time, so each rotation is approved by its predecessor.",
    rules=("PLAT-TRUST-13",),
)
async def root_version_skip_refused(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        new = _keys()
        root = kit.sim.root(
            version=3,
            keys=new,
            threshold=2,
            expires_at=now() + ROOT_LIFE,
            signers=[*kit.sim.root_signers, *new],
        )
        kit.sim.serve_raw(roots=[root], bundle=kit.sim.sign_bundle(kit.bundle(2), new))
        held = await _refused(kit, "root v3 after v1", why="ROOT_VERSION_NOT_NEXT")
        await _holds(kit, "after refusing it", root=1, bundle=1)
    return f"refused ({held})"


@check(
    "expired_intermediate_root_accepted",
    "An expired root in the middle of the chain still vouches for its successor: a platform "
    "holding root v2, which has expired, walks on to v3 and takes the bundle signed under it.",
    "Only the final root's expiry counts (TUF 5.3.10); a platform that stops at an expired "
    "intermediate root never catches up.",
    rules=("PLAT-TRUST-14",),
)
async def expired_intermediate_root_accepted(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() - timedelta(days=1))
        await kit.refresh()  # root v2 is final, and expired: nothing is taken under it yet
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() + ROOT_LIFE)
        await kit.take(kit.sim.publish_bundle(kit.bundle(2)), what="bundle v2 under root v3")
        await _holds(kit, "after the walk", root=3, bundle=2)
    return "walked on from the expired root v2 to v3"


@check(
    "expired_final_root_refused",
    "When the newest root of the chain has expired, no bundle is taken (ROOT_EXPIRED).",
    "An expired root's keys may be long gone to someone else; nothing may be trusted under it.",
    rules=("PLAT-TRUST-15",),
)
async def expired_final_root_refused(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() - timedelta(days=1))
        kit.sim.publish_bundle(kit.bundle(2))
        held = await _refused(kit, "bundle v2 under an expired final root v2", why="ROOT_EXPIRED")
        state = await kit.trust_state()
        if state.bundle_version == 2:
            raise CheckFailed("the platform holds the bundle signed under an expired final root")
    return f"refused ({held})"


@check(
    "fast_forward_recovered",
    "A root rotation whose keys do not sign the held bundle (as after a fast-forward attack "
    "pushed its version up) drops it and the floor it set: the platform then takes a lower "
    "version under the new root.",
    "Rotating the root keys is how the federation recovers from a compromise that pushed the "
    "bundle version ahead (TUF 5.3.11).",
    rules=("PLAT-TRUST-16",),
)
async def fast_forward_recovered(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        await kit.take(kit.sim.publish_bundle(kit.bundle(2)), what="bundle v2")
        kit.sim.rotate_root(keys=_keys(), threshold=2, expires_at=now() + ROOT_LIFE)
        await kit.take(kit.sim.publish_bundle(kit.bundle(1)), what="bundle v1 under the new root")
        await _holds(kit, "after the recovery", root=2, bundle=1)
    return "v2 dropped with the old root; v1 taken under the new one"


@check(
    "refreshes_when_told_behind",
    "When a call's numfed-trust-version metadata names a newer bundle than the platform holds, "
    "it fetches the bundle at once (without waiting for its next routine refresh).",
    "A revocation must reach every platform in seconds, not at its next poll.",
    rules=("PLAT-TRUST-17",),
)
async def refreshes_when_told_behind(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        kit.sim.publish_bundle(kit.bundle(2))
        s = await kit.seed(at=False, after=False)
        await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x), metadata=kit.hint(1, 2))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STATE_PATIENCE
        while (state := await kit.trust_state()).bundle_version != 2:
            if loop.time() > deadline:
                raise CheckFailed(
                    f"told the gateway holds bundle v2, the platform still holds "
                    f"v{state.bundle_version} after {STATE_PATIENCE:g} s"
                )
            await asyncio.sleep(0.05)
    return "fetched bundle v2 when told"


@check(
    "refreshes_before_refusing",
    "A claim signed by a key that only a newer bundle lists is accepted: the platform fetches "
    "the bundle before it refuses a claim for a reason that may be its own staleness.",
    "A carrier's key rotation reaches the platforms' bundles a moment after its first claims; "
    "refusing them would fail holders for nothing.",
    rules=("PLAT-TRUST-18",),
)
async def refreshes_before_refusing(kit: PlatformKit) -> str:
    async with kit.fresh_trust():
        kit.sim.publish_bundle(kit.bundle(2, with_late=True))
        s = await kit.seed(at=False, after=False)
        (r,) = await kit.query(kit.claim(s.number, Purpose.QUERY_PRIOR, s.x, key=kit.keys.late))
        expect(r.status, OK, "a claim by a key only bundle v2 (not yet fetched) lists")
    return "fetched v2 and accepted the claim"
