"""``numfed audit``: verify the gateway's audit log; export a member's checkpoints.

``numfed audit verify --config gateway.toml [--checkpoints PATH ...]``

1. walks the hash chain and names the first entry changed, removed or reordered;
2. checks every checkpoint, the gateway's own (table ``audit_checkpoints``) and those members
   exported: it must be of this federation's log and signed by an audit key of the trust bundle
   valid when it was issued; a size beyond the log is ``AUDIT_TRUNCATED`` (naming the gap and
   who holds the checkpoint), another hash at its size ``AUDIT_REWRITTEN``;
3. compares the checkpoints: two of one size with different heads are ``AUDIT_EQUIVOCATION``,
   printed with both envelopes;
4. prints the largest size a checkpoint anchors and how many entries follow it unanchored.

It exits 0 only when the chain is intact and every checkpoint matches it, 1 otherwise.

``numfed audit checkpoint export --config member.toml [--out FILE]`` writes the checkpoints a
carrier or platform holds (its ``audit-checkpoints.json``) for the auditor.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from numfed.cli import Command

__all__ = ["AUDIT"]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check that no audit entry was changed, removed, reordered or cut off",
        description="Walk the audit log's hash chain, then check it against every signed "
        "checkpoint: the gateway's own and those members exported. Exit 0 only when the "
        "chain is intact and every checkpoint matches it.",
    )
    verify.add_argument("--config", type=Path, required=True, help="gateway TOML config")
    verify.add_argument(
        "--checkpoints",
        type=Path,
        nargs="*",
        default=[],
        metavar="PATH",
        help="checkpoint files members exported (numfed audit checkpoint export)",
    )
    checkpoint = actions.add_parser("checkpoint", help="the checkpoints a member holds")
    what = checkpoint.add_subparsers(dest="what", required=True, metavar="ACTION")
    export = what.add_parser(
        "export",
        help="write the audit checkpoints this carrier or platform holds, for numfed audit verify",
    )
    export.add_argument("--config", type=Path, required=True, help="carrier or platform config")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")


def _run(args: argparse.Namespace) -> int:
    if args.action == "checkpoint":
        return _export(args)
    return _verify(args)


def _member_state(config: Path) -> tuple[str, Path]:
    """(holder id, state dir) of a carrier or platform config."""
    from numfed.config import load_carrier_config, load_platform_config
    from numfed.errors import InvalidArgument
    from numfed.identity import PeerId, Role

    try:
        with config.open("rb") as f:
            sections = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument("BAD_CONFIG", f"{config}: {exc}") from exc
    if "carrier" in sections:
        c = load_carrier_config(config)
        return PeerId(Role.CARRIER, c.carrier_id).uri, c.state_dir
    if "platform" in sections:
        p = load_platform_config(config)
        return PeerId(Role.PLATFORM, p.platform_id).uri, p.state_dir
    raise InvalidArgument("BAD_CONFIG", f"{config} is neither a carrier's nor a platform's config")


def _export(args: argparse.Namespace) -> int:
    from numfed.checkpoint import CHECKPOINT_FILE, read_held
    from numfed.errors import FailedPrecondition

    holder, state_dir = _member_state(args.config)
    path = state_dir / CHECKPOINT_FILE
    if not path.exists():
        raise FailedPrecondition("NO_CHECKPOINTS", f"{holder} holds no checkpoint yet ({path})")
    held = read_held(path)  # checks the file before handing it on
    text = path.read_text()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"{len(held.envelopes)} checkpoint(s) held by {held.holder} written to {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import sqlalchemy as sa
    from rich.console import Console

    from gateway.audit import read_chain
    from gateway.checkpoints import GATEWAY_HOLDER, HeldBy, check_log, stored_checkpoints
    from gateway.schema import audit_log
    from numfed.checkpoint import audit_origin, read_held
    from numfed.config import load_gateway_config
    from numfed.envelope import Envelope
    from numfed.errors import FailedPrecondition
    from numfed.trustfiles import load_trusted_state, read_roots

    config = load_gateway_config(args.config)
    trust = load_trusted_state(config.trust_dir, now=datetime.now(UTC))
    assert trust.bundle is not None
    origin = audit_origin(Envelope.from_proto(read_roots(config.trust_dir)[0]))
    members = [read_held(p) for p in args.checkpoints]
    held: list[HeldBy] = []
    for m in members:
        if m.origin != origin:
            raise FailedPrecondition(
                "CHECKPOINT_FILE_OTHER_ORIGIN", f"{m.path} holds checkpoints of {m.origin!r}"
            )
        held += [HeldBy(e, f"{m.holder} ({m.path.name})") for e in m.envelopes]
    engine = sa.create_engine(config.database_url)
    try:
        chain = read_chain(engine)
        with engine.connect() as conn:
            held = [HeldBy(e, GATEWAY_HOLDER) for e in stored_checkpoints(conn)] + held
            entries = int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(audit_log.c.seq), 0))
                ).scalar_one()
            )

            def hash_at(sizes: Iterable[int]) -> dict[int, str]:
                wanted = list(sizes)
                if not wanted:
                    return {}
                rows = conn.execute(
                    sa.select(audit_log.c.seq, audit_log.c.hash).where(audit_log.c.seq.in_(wanted))
                )
                return {int(r.seq): str(r.hash) for r in rows}

            verdict = check_log(
                chain=chain,
                entries=entries,
                hash_at=hash_at,
                held=held,
                bundle=trust.bundle,
                origin=origin,
            )
    finally:
        engine.dispose()
    console = Console(soft_wrap=True)
    if chain.ok:
        console.print(f"[green]hash chain intact[/]: {chain.entries:,} entries")
    else:
        console.print(f"[red]audit log broken at entry {chain.first_bad_seq}[/]: {chain.problem}")
    for f in verdict.findings:
        console.print(f"[red]{f.reason}[/]: {f.message}")
        if f.reason == "AUDIT_EQUIVOCATION":
            for h, text in zip(f.evidence, f.envelopes_b64(), strict=True):
                console.print(f"  envelope held by {h.holder}:\n  {text}", highlight=False)
    console.print(
        f"{verdict.checkpoints} checkpoint(s) verified; largest anchored size "
        f"{verdict.anchored:,}; {verdict.unanchored:,} entries after it are unanchored"
    )
    if verdict.ok:
        console.print("[green]audit log intact[/]: every checkpoint matches the chain")
        return 0
    return 1


AUDIT = Command(
    "audit",
    "verify the gateway's audit log against signed checkpoints; export a member's checkpoints",
    _configure,
    _run,
)
