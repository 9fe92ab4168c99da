"""An operator's changes to the trust directory: the next bundle, the next root.

:func:`publish_bundle` signs the next trust bundle (version + 1) with the root keys of a PKI
directory: the current bundle, changed only as it is asked (a carrier key added, a carrier key
rotated, a key revoked, a carrier's number ranges set), with a fresh expiry; all else it holds
(the gateway's audit keys, the federation's clock skew and maximum claim lifetime) stays.
:func:`rotate_root` signs root version n+1 with a threshold of the old keys and of the new ones,
writes the new root keys into the PKI directory, and re-signs the bundle under both roots, so
that no verifier is left without a bundle at any moment.

Nothing is written unless the result verifies on top of what the directory holds, as every
member will verify it; files are replaced atomically. ``numfed trust`` (:mod:`numfed.trust_cli`)
is the command line, docs/trust-operations.md the runbook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from numfed import pki
from numfed.envelope import Envelope, SigningKey, VerifyKey
from numfed.errors import FailedPrecondition, InvalidArgument, Unavailable
from numfed.identity import PeerId, Role
from numfed.trust import CarrierKey, Root, TrustBundle, TrustedState, sign_bundle, sign_root
from numfed.trustfiles import read_bundle, read_roots, write_atomically, write_envelope

__all__ = [
    "Published",
    "RootRotated",
    "current_trust",
    "publish_bundle",
    "rotate_root",
]

CARRIER_KEY_SKEW = timedelta(minutes=5)
"""A new carrier key is valid from this long before it is added (carriers with slow clocks)."""
RESIGNED_BUNDLE_LIFETIME = timedelta(days=30)
"""rotate-root re-signs the bundle with its own expiry, or this long if that has passed."""
_KEY_PREFIX = re.compile(r"[0-9a-f]{8,64}")


# --- reading the directory ----------------------------------------------------------------------


def current_trust(trust_dir: Path, *, now: datetime) -> TrustedState:
    """The directory's newest root and its bundle, both verified from ``root-1.pb``. Expiry is
    not checked: replacing an expired bundle (or root) is what an operator comes here for."""
    roots = [Envelope.from_proto(r) for r in read_roots(trust_dir)]
    if not roots:
        raise FailedPrecondition("TRUST_FILES_MISSING", f"{trust_dir} has no root-1.pb")
    walked = TrustedState(roots[0], now=now)
    walked.update_roots(roots)
    return TrustedState.restore(
        roots[0],
        root=walked.root_envelope,
        bundle=Envelope.from_proto(read_bundle(trust_dir)),
        now=now,
    )


def _root_signers(pki_dir: Path, root: Root) -> list[SigningKey]:
    """The keys of ``pki_dir/root/`` that ``root`` lists; at least its threshold of them."""
    signers = [k for k in pki.load_root_signers(pki_dir) if k.key_id in root.keys]
    if len(signers) < root.threshold:
        raise FailedPrecondition(
            "ROOT_KEYS_MISSING",
            f"{pki_dir} holds {len(signers)} of root v{root.version}'s keys; "
            f"{root.threshold} must sign",
        )
    return signers


def _write_trust_file(path: Path, envelope: Envelope) -> None:
    try:
        write_envelope(path, envelope)
    except OSError as exc:
        raise Unavailable("TRUST_DIR_UNWRITABLE", f"cannot write {path}: {exc}") from exc


def _write_secret(path: Path, data: bytes) -> None:
    """A new private key file, mode 0600 from the start; never over an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise FailedPrecondition("PKI_FILE_EXISTS", f"{path} exists; not overwriting it") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- publish ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What :func:`publish_bundle` wrote."""

    previous: TrustBundle
    bundle: TrustBundle
    rotated: dict[str, tuple[str, Path]] = field(default_factory=dict)
    """carrier -> (new key id, where its private key now is)."""


def _load_public_key(path: Path) -> VerifyKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise FailedPrecondition("KEY_FILE_MISSING", f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise InvalidArgument(
            "BAD_PUBLIC_KEY", f"{path} is not a PEM public key (the carrier's public half)"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InvalidArgument("BAD_PUBLIC_KEY", f"{path}: carrier keys are Ed25519 or P-256")
    return VerifyKey.from_public_key(key)


def _resolve_key_id(text: str, bundle: TrustBundle) -> str:
    """A key id named in full or by a unique prefix of at least 8 hex digits."""
    wanted = text.strip().lower()
    if not _KEY_PREFIX.fullmatch(wanted):
        raise InvalidArgument("BAD_KEY_ID", f"{text!r} is not a key id (8 to 64 hex digits)")
    matches = [k for k in bundle.carrier_keys if k.startswith(wanted)]
    if not matches:
        raise InvalidArgument(
            "UNKNOWN_KEY", f"no carrier key of bundle v{bundle.version} is {text}"
        )
    if len(matches) > 1:
        raise InvalidArgument("AMBIGUOUS_KEY_ID", f"{text} names {len(matches)} keys")
    return matches[0]


def _parse_ranges(items: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        carrier, sep, prefixes = item.partition("=")
        if not sep or not carrier.strip():
            raise InvalidArgument("BAD_RANGES", f"{item!r}: write CARRIER=+86138,+86139")
        out.setdefault(carrier.strip(), []).extend(
            p.strip() for p in prefixes.split(",") if p.strip()
        )
    return out


def _carrier_prefixes(keys: Iterable[CarrierKey], carrier: str) -> tuple[str, ...]:
    """The prefixes a new key of ``carrier`` may attest: those of its keys in the bundle, else
    those of every key in it (the federation's numbers)."""
    own = [p for k in keys if k.carrier_id == carrier for p in k.number_prefixes]
    found = own or [p for k in keys for p in k.number_prefixes]
    return tuple(dict.fromkeys(found))


def publish_bundle(
    trust_dir: Path,
    pki_dir: Path,
    *,
    now: datetime,
    expires: timedelta = timedelta(days=30),
    add: Sequence[tuple[str, Path]] = (),
    rotate: Sequence[str] = (),
    revoke: Sequence[str] = (),
    ranges: Sequence[str] = (),
    key_lifetime: timedelta = timedelta(days=365),
    overlap: timedelta = timedelta(days=7),
) -> Published:
    """Sign and write bundle version n+1 (see the module docstring). ``add``: (carrier, PEM
    public key file) pairs; ``rotate``: carriers that get a new key (made here, in
    ``pki_dir``), their old keys ending within ``overlap``; ``revoke``: key ids (or unique
    prefixes); ``ranges``: ``CARRIER=+86138,+86139``, the carrier's ranges from now on."""
    if expires <= timedelta(0) or key_lifetime <= timedelta(0) or overlap < timedelta(0):
        raise InvalidArgument("BAD_DURATION", "expiries must be positive")
    state = current_trust(trust_dir, now=now)
    previous = state.bundle
    assert previous is not None  # current_trust verifies one
    signers = _root_signers(pki_dir, state.root)
    keys = dict(previous.carrier_keys)
    revoked = set(previous.revoked_key_ids)
    plan = dict(previous.number_ranges)
    layout = pki.PkiLayout(pki_dir)

    for carrier, pem in add:
        public = _load_public_key(pem)
        if public.key_id in keys:
            raise InvalidArgument("KEY_ALREADY_LISTED", f"{pem} is already in the bundle")
        keys[public.key_id] = CarrierKey(
            public,
            carrier,
            now - CARRIER_KEY_SKEW,
            now + key_lifetime,
            _carrier_prefixes(keys.values(), carrier),
        )
    fresh: dict[str, SigningKey] = {}
    for carrier in dict.fromkeys(rotate):
        current = [
            k for k in keys.values() if k.carrier_id == carrier and k.key.key_id not in revoked
        ]
        if not current:
            raise InvalidArgument(
                "UNKNOWN_CARRIER", f"bundle v{previous.version} has no key of {carrier!r}"
            )
        new = fresh[carrier] = SigningKey.generate()
        for old in current:
            ends = min(old.not_after, max(now + overlap, old.not_before + timedelta(seconds=1)))
            keys[old.key.key_id] = dataclasses.replace(old, not_after=ends)
        keys[new.key_id] = CarrierKey(
            new.public,
            carrier,
            now - CARRIER_KEY_SKEW,
            now + key_lifetime,
            _carrier_prefixes(current, carrier),
        )
    for text in revoke:
        revoked.add(_resolve_key_id(text, previous))
    for carrier, prefixes in _parse_ranges(ranges).items():
        plan = {p: c for p, c in plan.items() if c != carrier}
        plan.update(dict.fromkeys(prefixes, carrier))

    # The next bundle is the current one with what the options change: whatever else it holds
    # (the gateway's audit keys, the federation's clock skew and claim lifetime) stays.
    bundle = dataclasses.replace(
        previous,
        version=previous.version + 1,
        issued_at=now,
        expires_at=now + expires,
        carrier_keys=keys,
        revoked_key_ids=frozenset(revoked),
        number_ranges=plan,
    )
    envelope = sign_bundle(bundle, signers)
    state.copy().update_bundle(envelope, now=now)  # as every member will verify it

    # The new private keys first under their own names, then the bundle, then the carriers'
    # current key files: a failure on the way never leaves a key in the bundle without its
    # private half, nor a carrier's current key outside the bundle.
    staged: dict[str, Path] = {}
    try:
        for carrier, key in fresh.items():
            path = _kept_key_path(layout, carrier, key)
            _write_secret(path, key.to_pem())
            staged[carrier] = path
        _write_trust_file(trust_dir / "bundle.pb", envelope)
    except BaseException:
        for path in staged.values():
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    rotated = {}
    for carrier, key in fresh.items():
        _make_current(layout, carrier)
        write_atomically(layout.signing_key_path(carrier), key.to_pem(), mode=0o600)
        rotated[carrier] = (key.key_id, layout.signing_key_path(carrier))
    return Published(previous, bundle, rotated)


def _kept_key_path(layout: pki.PkiLayout, carrier: str, key: SigningKey) -> Path:
    """Where a carrier signing key is kept under its own name (beside ``signing.key.pem``)."""
    member = layout.member_dir(PeerId(Role.CARRIER, carrier))
    return member / f"signing-{key.key_id[:16]}.key.pem"


def _make_current(layout: pki.PkiLayout, carrier: str) -> None:
    """Keep the carrier's current signing key under its own name before it is replaced."""
    current = layout.signing_key_path(carrier)
    if not current.exists():
        return
    data = current.read_bytes()
    kept = _kept_key_path(layout, carrier, SigningKey.from_pem(data))
    if not kept.exists():
        _write_secret(kept, data)


# --- rotate-root --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RootRotated:
    """What :func:`rotate_root` wrote."""

    previous: Root
    root: Root
    bundle: TrustBundle
    key_files: list[Path]
    """New root keys written into the PKI directory."""


def rotate_root(
    trust_dir: Path,
    pki_dir: Path,
    *,
    now: datetime,
    new_keys: int | None = None,
    threshold: int | None = None,
    expires: timedelta = timedelta(days=365),
) -> RootRotated:
    """Sign and write root version n+1 (see the module docstring). ``new_keys``: how many
    new root keys replace the current ones (default: as many as now; 0 keeps the current
    keys); ``threshold``: distinct keys that must sign from then on (default: as now)."""
    if expires <= timedelta(0):
        raise InvalidArgument("BAD_DURATION", "expiries must be positive")
    state = current_trust(trust_dir, now=now)
    old_root, previous = state.root, state.bundle
    assert previous is not None
    old_signers = _root_signers(pki_dir, old_root)
    count = len(old_root.keys) if new_keys is None else new_keys
    if count < 0:
        raise InvalidArgument("BAD_KEY_COUNT", "--new-keys is 0 or more")
    made = [SigningKey.generate() for _ in range(count)]
    new_signers = made or old_signers
    keys = {k.key_id: k.public for k in made} if made else dict(old_root.keys)
    want = old_root.threshold if threshold is None else threshold
    if not 1 <= want <= len(keys):
        raise InvalidArgument("BAD_THRESHOLD", f"the threshold is 1 to {len(keys)} keys")
    root = dataclasses.replace(
        old_root, version=old_root.version + 1, expires_at=now + expires, keys=keys, threshold=want
    )
    both = list({k.key_id: k for k in [*old_signers, *new_signers]}.values())
    root_envelope = sign_root(root, both)
    expiry = previous.expires_at if previous.expires_at > now else now + RESIGNED_BUNDLE_LIFETIME
    bundle = dataclasses.replace(
        previous, version=previous.version + 1, issued_at=now, expires_at=expiry
    )
    # Signed by the old keys and the new ones: it verifies under root n (so members take it at
    # once) and under root n+1 (so they keep it when the new root arrives).
    bundle_envelope = sign_bundle(bundle, both)
    TrustedState.restore(state.root_envelope, bundle=bundle_envelope, now=now)
    candidate = state.copy()
    candidate.update_root(root_envelope)
    candidate.check_final_root(now)
    candidate.update_bundle(bundle_envelope, now=now)

    layout = pki.PkiLayout(pki_dir)
    existing = len(pki.load_root_signers(pki_dir))
    files: list[Path] = []
    try:
        for i, key in enumerate(made, existing + 1):
            _write_secret(layout.root_key_path(i), key.to_pem())
            files.append(layout.root_key_path(i))
        _write_trust_file(trust_dir / "bundle.pb", bundle_envelope)
        _write_trust_file(trust_dir / f"root-{root.version}.pb", root_envelope)
    except BaseException:
        if not (trust_dir / f"root-{root.version}.pb").exists():
            for path in files:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    return RootRotated(old_root, root, bundle, files)
