"""``numfed trust show|publish|rotate-root``: an operator's tools for the trust directory.

``show`` prints what each file holds and whether the chain verifies now; ``publish`` and
``rotate-root`` sign the next bundle and the next root (:mod:`numfed.trustadmin`).
docs/trust-operations.md is the runbook.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from numfed.cli import Command
from numfed.errors import InvalidArgument

__all__ = ["TRUST", "duration"]

_DURATION = re.compile(r"([1-9][0-9]{0,5})([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 90m")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


# --- show ---------------------------------------------------------------------------------------


def _when(t: datetime, now: datetime) -> str:
    text = f"{t:%Y-%m-%d %H:%M} UTC"
    return f"{text} [red](expired)[/]" if t <= now else text


def _short(key_id: str) -> str:
    return key_id[:16]


def _show(trust_dir: Path, now: datetime) -> int:
    from google.protobuf.message import DecodeError
    from rich.console import Console
    from rich.table import Table

    from numfed.envelope import Envelope
    from numfed.errors import NumfedError
    from numfed.trust import Root, TrustBundle
    from numfed.trustfiles import load_trusted_state, read_bundle, read_roots
    from numfed.v1 import trust_pb2

    console = Console()
    code = 0
    try:
        verified = load_trusted_state(trust_dir, now=now)
        root_version, bundle_version = verified.versions
        console.print(
            f"[green]{trust_dir} verifies[/]: root v{root_version}, bundle v{bundle_version}, "
            "replayed from root-1.pb as a member does, now"
        )
    except NumfedError as err:
        console.print(f"[red]{trust_dir} does not verify[/]: {err.reason}: {err.message}")
        code = 1
    roots = Table(title="roots", title_justify="left")
    for column in ("file", "version", "expires", "threshold", "keys", "signatures"):
        roots.add_column(column, no_wrap=column in ("file", "keys"))
    for n, pb in enumerate(read_roots(trust_dir), 1):
        try:
            root = Root.from_proto(trust_pb2.RootMetadata.FromString(pb.payload))
        except (DecodeError, NumfedError) as exc:
            roots.add_row(f"root-{n}.pb", "?", f"does not parse: {exc}", "", "", "")
            continue
        roots.add_row(
            f"root-{n}.pb",
            str(root.version),
            _when(root.expires_at, now),
            f"{root.threshold} of {len(root.keys)}",
            "\n".join(_short(k) for k in sorted(root.keys)),
            str(len(pb.signatures)),
        )
    console.print(roots)
    try:
        envelope = Envelope.from_proto(read_bundle(trust_dir))
        bundle = TrustBundle.from_proto(trust_pb2.TrustBundle.FromString(envelope.payload))
    except (DecodeError, NumfedError) as exc:
        console.print(f"bundle.pb does not parse: {exc}")
        return 1
    console.print(
        f"bundle.pb: version {bundle.version}, issued {bundle.issued_at:%Y-%m-%d %H:%M} UTC, "
        f"expires {_when(bundle.expires_at, now)}, {len(envelope.signatures)} signatures"
    )
    keys = Table(title="carrier keys", title_justify="left")
    for column in ("key id", "carrier", "from", "until", "prefixes", "status"):
        keys.add_column(column, no_wrap=column == "key id", overflow="fold")
    listed = sorted(bundle.carrier_keys.values(), key=lambda k: (k.carrier_id, k.not_before))
    for k in listed:
        if k.key.key_id in bundle.revoked_key_ids:
            status = "[red]revoked[/]"
        elif k.valid_at(now):
            status = "[green]valid[/]"
        else:
            status = "outside its window"
        keys.add_row(
            _short(k.key.key_id),
            k.carrier_id,
            f"{k.not_before:%Y-%m-%d %H:%M}",
            f"{k.not_after:%Y-%m-%d %H:%M}",
            " ".join(k.number_prefixes),
            status,
        )
    console.print(keys)
    plan = Table(title="numbering plan (range holders)", title_justify="left")
    plan.add_column("carrier")
    plan.add_column("ranges", overflow="fold")
    by_carrier: dict[str, list[str]] = {}
    for prefix, carrier in sorted(bundle.number_ranges.items()):
        by_carrier.setdefault(carrier, []).append(prefix)
    for carrier, prefixes in sorted(by_carrier.items()):
        plan.add_row(carrier, f"{len(prefixes)}: " + " ".join(prefixes))
    console.print(plan)
    revoked = " ".join(_short(k) for k in sorted(bundle.revoked_key_ids))
    console.print(f"revoked keys: {revoked or 'none'}")
    return code


# --- the command --------------------------------------------------------------------------------


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="what each trust file holds, and whether the chain verifies",
        description="Print every root (version, expiry, threshold, keys) and the bundle "
        "(version, expiry, carrier keys, numbering plan, revocations) in DIR, and whether DIR "
        "verifies now as a member replays it from root-1.pb (exit 1 if not).",
    )
    show.add_argument("directory", metavar="DIR", type=Path)
    publish = actions.add_parser(
        "publish",
        help="sign the next trust bundle (version + 1) with the root keys",
        description="Write DIR/bundle.pb, version n+1 with a fresh expiry, signed by the root "
        "keys in PKI/root/ that the newest root lists, after checking that it verifies as "
        "members will verify it. Options change the carrier keys, revocations and numbering "
        "plan; without any it only renews the expiry. The gateway takes it within a second.",
    )
    publish.add_argument("directory", metavar="DIR", type=Path)
    publish.add_argument("--pki", type=Path, required=True, metavar="PKI", help="PKI directory")
    publish.add_argument(
        "--add-carrier-key", metavar="CARRIER", help="add the key given by --key for CARRIER"
    )
    publish.add_argument("--key", type=Path, metavar="PEM", help="the carrier's public key (PEM)")
    publish.add_argument(
        "--rotate",
        action="append",
        default=[],
        metavar="CARRIER",
        help="make CARRIER a new signing key in PKI (its old keys end after --overlap)",
    )
    publish.add_argument(
        "--revoke", action="append", default=[], metavar="KEYID", help="revoke a carrier key"
    )
    publish.add_argument(
        "--ranges",
        action="append",
        default=[],
        metavar="CARRIER=+86138,+86139",
        help="CARRIER's number ranges from now on (replacing its others)",
    )
    publish.add_argument(
        "--expires", type=duration, default=timedelta(days=30), help="bundle lifetime (30d)"
    )
    publish.add_argument(
        "--key-expires",
        type=duration,
        default=timedelta(days=365),
        help="lifetime of an added or rotated carrier key (365d)",
    )
    publish.add_argument(
        "--overlap",
        type=duration,
        default=timedelta(days=7),
        help="how long a rotated carrier's old keys stay valid (7d)",
    )
    rotate = actions.add_parser(
        "rotate-root",
        help="sign root version n+1 with the old and the new root keys",
        description="Write DIR/root-<n+1>.pb signed by a threshold of root n's keys and of its "
        "own, with new root keys written to PKI/root/, and re-sign DIR/bundle.pb (version + 1) "
        "by both, so that members holding either root keep a bundle.",
    )
    rotate.add_argument("directory", metavar="DIR", type=Path)
    rotate.add_argument("--pki", type=Path, required=True, metavar="PKI", help="PKI directory")
    rotate.add_argument(
        "--new-keys",
        type=int,
        metavar="N",
        help="new root keys replacing the current ones (default: as many as now; 0 keeps them)",
    )
    rotate.add_argument(
        "--threshold", type=int, metavar="T", help="keys that must sign (default: as now)"
    )
    rotate.add_argument(
        "--expires", type=duration, default=timedelta(days=365), help="root lifetime (365d)"
    )


_PICKUP = (
    "Members pick it up: the gateway within a second (at once on SIGHUP), then each platform "
    "at the gateway's next call or answer (its version hint), at the latest within a minute. "
    "Check with the gateway's log line 'trust files in … applied'."
)


def _run(args: argparse.Namespace) -> int:
    from numfed import trustadmin

    now = datetime.now(UTC)
    if args.action == "show":
        return _show(args.directory, now)
    if args.action == "publish":
        if (args.add_carrier_key is None) != (args.key is None):
            raise InvalidArgument("BAD_ARGUMENTS", "--add-carrier-key and --key go together")
        done = trustadmin.publish_bundle(
            args.directory,
            args.pki,
            now=now,
            expires=args.expires,
            add=[(args.add_carrier_key, args.key)] if args.key is not None else [],
            rotate=args.rotate,
            revoke=args.revoke,
            ranges=args.ranges,
            key_lifetime=args.key_expires,
            overlap=args.overlap,
        )
        b = done.bundle
        print(
            f"bundle v{b.version} written to {args.directory / 'bundle.pb'} (was "
            f"v{done.previous.version}): {len(b.carrier_keys)} carrier keys, "
            f"{len(b.revoked_key_ids)} revoked, {len(b.number_ranges)} ranges, expires "
            f"{b.expires_at:%Y-%m-%d %H:%M} UTC"
        )
        for carrier, (key_id, path) in done.rotated.items():
            print(
                f"{carrier}: new signing key {key_id[:16]} in {path}; restart the carrier "
                "adapter once members hold this bundle"
            )
        print(_PICKUP)
        return 0
    rotated = trustadmin.rotate_root(
        args.directory,
        args.pki,
        now=now,
        new_keys=args.new_keys,
        threshold=args.threshold,
        expires=args.expires,
    )
    r = rotated.root
    print(
        f"root v{r.version} written to {args.directory / f'root-{r.version}.pb'}: "
        f"{r.threshold} of {len(r.keys)} keys, expires {r.expires_at:%Y-%m-%d %H:%M} UTC; "
        f"bundle v{rotated.bundle.version} re-signed by the old and the new keys"
    )
    for path in rotated.key_files:
        print(f"new root key {path} (keep it offline)")
    print(_PICKUP)
    return 0


TRUST = Command(
    "trust", "show the trust files; publish a bundle; rotate the root keys", _configure, _run
)
