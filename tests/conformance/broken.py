"""Deliberately broken platforms: a reference platform with one rule broken, for the kit to catch.

Each breakage changes one running reference platform in place (its servicer, store or trust
state), the way a member's own code might get that rule wrong.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from numfed.envelope import Envelope
from numfed.events import EventKind, LifecycleEvent, VerifiedBatch
from numfed.trust import CarrierKey, TrustBundle
from numfed.v1 import events_pb2, trust_pb2
from platform_stubs import sdk
from platform_stubs.reference import PlatformHandle
from platform_stubs.rules import Binding, Masker
from platform_stubs.store import accounts, applied_releases, bindings

Breakage = Callable[[PlatformHandle, pytest.MonkeyPatch], None]


def releases_at_x(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Uses bound_at <= X for prior-holder bindings."""

    def prior(found: Iterable[Binding], tenure_start: datetime) -> list[Binding]:
        return [b for b in found if b.active and b.bound_at <= tenure_start]

    mp.setattr(sdk, "prior", prior)


class _AnySignature:
    def verify_raw(self, sig: bytes, message: bytes) -> bool:
        return True


class _LaxState:
    """Looks keys up (revocation, scope, window) but never checks a signature."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def carrier_key(self, key_id: str, *, now: datetime) -> CarrierKey:
        key: CarrierKey = copy.copy(self._inner.carrier_key(key_id, now=now))
        object.__setattr__(key, "key", _AnySignature())
        return key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _LaxTrust:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def trusted(self) -> Any:
        return _LaxState(self._inner.trusted())


def skips_claim_signatures(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(p.servicer, "trust", _LaxTrust(p.trust))


class _LeakyMasker(Masker):
    def label(self, b: Binding) -> str:
        return f"account {b.account_id} · since {b.bound_at.year}"


def leaks_account_id(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(p.servicer, "masker", _LeakyMasker(b"0123456789abcdef0123"))


def applies_replay_twice(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Forgets which claims it applied before applying a batch."""
    store = p.store
    original = store.apply_releases

    def apply_releases(work: Sequence[Any], now: datetime) -> Any:
        with store.engine.begin() as c:
            c.execute(sa.delete(applied_releases))
        return original(work, now)

    mp.setattr(store, "apply_releases", apply_releases)


def deletes_accounts(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Deletes the account (and its bindings) once its number is released."""
    store = p.store
    original = store.apply_releases

    def apply_releases(work: Sequence[Any], now: datetime) -> Any:
        out = original(work, now)
        with store.engine.begin() as c:
            released = [
                r.account_id
                for r in c.execute(
                    sa.select(bindings.c.account_id).where(bindings.c.released_us.is_not(None))
                )
            ]
            c.execute(sa.delete(bindings).where(bindings.c.account_id.in_(released)))
            c.execute(sa.delete(accounts).where(accounts.c.account_id.in_(released)))
        return out

    mp.setattr(store, "apply_releases", apply_releases)


def skips_event_signatures(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Parses event batches without verifying them."""

    def verify_event_batch(envelope: Envelope, trust: Any, *, now: datetime) -> VerifiedBatch:
        pb = events_pb2.EventBatch.FromString(envelope.payload)
        events = tuple(LifecycleEvent.from_proto(e) for e in pb.events)
        return VerifiedBatch(pb.carrier_id, now, events)

    mp.setattr("platform_stubs.events.verify_event_batch", verify_event_batch)


def ignores_reassigned(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Records REASSIGNED events but never marks old bindings stale."""
    store = p.store
    original = store.apply_events

    def apply_events(seq: int, events: Sequence[LifecycleEvent], now: datetime) -> int:
        plain = [
            dataclasses.replace(e, kind=EventKind.DEACTIVATED, tenure_start=None)
            if e.kind is EventKind.REASSIGNED
            else e
            for e in events
        ]
        return original(seq, plain, now)

    mp.setattr(store, "apply_events", apply_events)


def accepts_rollback(p: PlatformHandle, mp: pytest.MonkeyPatch) -> None:
    """Takes whatever bundle the gateway serves, checking only its root signatures."""
    state = p.trust.state

    def update_bundle(envelope: Envelope, *, now: datetime) -> None:
        bundle = TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(envelope.payload))
        state._bundle = bundle  # deliberately broken
        state._bundle_envelope = envelope

    mp.setattr(state, "update_bundle", update_bundle)


BROKEN: dict[str, tuple[Breakage, str]] = {
    "releases_at_x": (releases_at_x, "release.at_or_after_x_kept"),
    "skips_claim_signatures": (skips_claim_signatures, "claims.forged"),
    "leaks_account_id": (leaks_account_id, "summaries.masked"),
    "applies_replay_twice": (applies_replay_twice, "release.replay_once"),
    "deletes_accounts": (deletes_accounts, "release.prior_released"),
    "skips_event_signatures": (skips_event_signatures, "events.forged_refused"),
    "ignores_reassigned": (ignores_reassigned, "events.stale_sms_login"),
    "accepts_rollback": (accepts_rollback, "trust.rollback_refused"),
}
"""Each broken platform, and the one check that must fail for it."""
