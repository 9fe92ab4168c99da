"""``numfed federation init DIR`` and ``numfed federation add-member DIR``: a federation set
up by hand, one process at a time, without the demo.

``init`` writes, into an absent or empty DIR: the PKI (``pki/``: CA, one certificate per member,
root keys, each carrier's signing key), the signed trust files (``trust/root-1.pb``,
``trust/bundle.pb`` with each carrier's key and its number ranges) and one config per process
(``gateway.toml``, ``carrier-<id>.toml``, ``platform-<id>.toml``), each with its own loopback
metrics endpoint. Ports are given out in order from ``--base-port`` (gateway, then each
carrier, then each platform), or picked free with ``--base-port 0``.

``add-member`` issues one more member's certificate from the same CA, writes its config and
adds it to ``gateway.toml``, which a running gateway applies within a second. A new carrier
also gets a signing key, and the next trust bundle (version + 1) is published with its public
key and its number ranges, as ``numfed trust publish --add-carrier-key`` does
(:func:`numfed.trustadmin.publish_bundle`); a running gateway serves it within a second, no
restart, and platforms take it at the gateway's next call or answer.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from numfed.cli import Command
from numfed.errors import FailedPrecondition, InvalidArgument
from numfed.identity import PeerId, Role

__all__ = ["FEDERATION", "Plan", "add_member", "init_federation"]

_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")
_PORT = re.compile(r'"([A-Za-z0-9.\-\[\]:]+):([0-9]{1,5})"')


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def _ports(host: str, base: int, taken: set[int]) -> Iterator[int]:
    """Ports from ``base`` up, skipping those taken or in use now; ``base`` 0: free ports
    chosen at random below the ephemeral range (tests, several federations on one host)."""
    if base == 0:
        from numfed.federation import free_ports

        while True:
            port = free_ports(1)[0]
            if port not in taken:
                taken.add(port)
                yield port
    port = base
    while port < 65536:
        if port not in taken and _port_free(host, port):
            taken.add(port)
            yield port
        port += 1
    raise FailedPrecondition("NO_FREE_PORT", f"no free port from {base} up on {host}")


@dataclass
class Plan:
    """What a command wrote: one row per process, and how to start it."""

    root: Path
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(process, config, listen, metrics)"""
    notes: list[str] = field(default_factory=list)


def _ranges(values: Sequence[str], carriers: Sequence[str]) -> dict[str, str]:
    """prefix -> carrier from ``CARRIER=PREFIX`` options, on top of the demo plan's blocks for
    the carriers it knows."""
    from numfed.federation import number_plan

    plan = number_plan(carriers)
    for value in values:
        carrier, sep, prefix = value.partition("=")
        if not sep or carrier not in carriers or not _PREFIX.fullmatch(prefix):
            raise InvalidArgument(
                "BAD_RANGE", f"--range {value!r} is not CARRIER=+PREFIX for a carrier named"
            )
        plan[prefix] = carrier
    return plan


def _telemetry(metrics: str | None, otlp: str | None) -> str:
    from numfed.federation import telemetry_section

    return telemetry_section(metrics, otlp)


def init_federation(
    root: Path,
    *,
    carriers: Sequence[str],
    platforms: Sequence[str],
    host: str = "127.0.0.1",
    base_port: int = 7000,
    metrics: bool = True,
    otlp_endpoint: str | None = None,
    demo_data: bool = False,
    ranges: Sequence[str] = (),
    validity: timedelta = timedelta(days=365),
    now: datetime | None = None,
) -> Plan:
    """Write a federation's PKI, trust files and configs into ``root`` (absent or empty)."""
    from numfed import pki
    from numfed.federation import (
        carrier_config_text,
        gateway_member_entry,
        platform_config_text,
        toml_section,
        write_trust,
    )

    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FailedPrecondition(
            "FEDERATION_EXISTS", f"{root} exists and is not empty; refusing to overwrite it"
        )
    if not carriers or not platforms:
        raise InvalidArgument("BAD_MEMBERS", "name at least one --carrier and one --platform")
    for c in carriers:
        PeerId(Role.CARRIER, c)
    for p in platforms:
        PeerId(Role.PLATFORM, p)
    plan_ranges = _ranges(ranges, carriers)
    now = now or datetime.now(UTC)
    root.mkdir(parents=True, exist_ok=True)
    pki.init_pki(
        root / "pki",
        carriers=tuple(carriers),
        platforms=tuple(platforms),
        now=now,
        validity=validity,
    )
    write_trust(
        root / "pki",
        root / "trust",
        now=now,
        carriers=carriers,
        number_ranges=plan_ranges,
        validity=validity,
    )
    ports = _ports(host, base_port, set())

    def at() -> str:
        return f"{host}:{next(ports)}"

    out = Plan(root)
    gateway = at()
    gateway_metrics = at() if metrics else None
    entries = ""
    for c in carriers:
        listen, holder = at(), at()
        metrics_at = at() if metrics else None
        seed = None if demo_data else False
        (root / f"carrier-{c}.toml").write_text(
            carrier_config_text(
                c,
                listen=listen,
                holder_listen=holder,
                gateway=gateway,
                seed_scenario=seed,
                extra=_telemetry(metrics_at, otlp_endpoint),
            )
        )
        entries += gateway_member_entry("carrier", c, listen)
        out.rows.append(
            (
                f"carrier {c}",
                f"carrier-{c}.toml",
                f"{listen}, holder app {holder}",
                metrics_at or "-",
            )
        )
    for p in platforms:
        listen = at()
        metrics_at = at() if metrics else None
        (root / f"platform-{p}.toml").write_text(
            platform_config_text(
                p,
                listen=listen,
                gateway=gateway,
                knobs={} if demo_data else {"seed_scenario": False},
                extra=_telemetry(metrics_at, otlp_endpoint),
            )
        )
        entries += gateway_member_entry("platform", p, listen)
        out.rows.append((f"platform {p}", f"platform-{p}.toml", listen, metrics_at or "-"))
    (root / "gateway.toml").write_text(
        toml_section(
            "gateway",
            {
                "listen": gateway,
                "pki_dir": "pki",
                "trust_dir": "trust",
                "state_dir": "state/gateway",
            },
        )
        + _telemetry(gateway_metrics, otlp_endpoint)
        + entries
    )
    out.rows.insert(0, ("gateway", "gateway.toml", gateway, gateway_metrics or "-"))
    out.notes.append(
        "Start each process, in any order (each waits for the others):\n"
        + "".join(
            f"  numfed platform serve --config {root / f'platform-{p}.toml'}\n" for p in platforms
        )
        + "".join(
            f"  numfed carrier serve --config {root / f'carrier-{c}.toml'}\n" for c in carriers
        )
        + f"  numfed gateway serve --config {root / 'gateway.toml'}\n"
        + f"then: numfed status --config {root / 'gateway.toml'}\n"
        "Keep pki/ca.key.pem and pki/root/ offline in production."
    )
    return out


def _read_gateway(root: Path) -> tuple[str, str | None]:
    """The gateway's listen address and its OTLP endpoint, from ``root/gateway.toml``."""
    from numfed.config import load_gateway_config

    path = root / "gateway.toml"
    if not path.exists():
        raise FailedPrecondition(
            "NOT_A_FEDERATION", f"{root} has no gateway.toml (made by numfed federation init)"
        )
    config = load_gateway_config(path)
    return config.listen, config.telemetry.otlp_endpoint


def _check_ranges(trust_dir: Path, carrier: str, prefixes: Sequence[str], now: datetime) -> None:
    """Refuse blocks another carrier holds in the numbering plan (``RANGE_HELD``) before
    anything is written: ``trust publish --ranges`` would move them."""
    from numfed.trustadmin import current_trust

    bundle = current_trust(trust_dir, now=now).bundle
    assert bundle is not None  # current_trust verifies one
    for prefix in prefixes:
        holder = bundle.number_ranges.get(prefix)
        if holder is not None and holder != carrier:
            raise InvalidArgument(
                "RANGE_HELD", f"{prefix} is {holder}'s in the numbering plan already"
            )


def _publish_carrier(
    root: Path, carrier: str, prefixes: Sequence[str], now: datetime
) -> tuple[int, Path]:
    """Write the carrier's public key beside its signing key and publish the next bundle with
    it (and its ranges); returns the bundle's version and the public key file."""
    from cryptography.hazmat.primitives import serialization

    from numfed import pki, trustadmin

    layout = pki.PkiLayout(root / "pki")
    spki = pki.load_carrier_signer(layout.root, carrier).public.spki
    public = layout.member_dir(PeerId(Role.CARRIER, carrier)) / "signing.pub.pem"
    public.write_bytes(
        serialization.load_der_public_key(spki).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    published = trustadmin.publish_bundle(
        root / "trust",
        root / "pki",
        now=now,
        add=[(carrier, public)],
        ranges=[f"{carrier}={','.join(prefixes)}"] if prefixes else [],
    )
    return published.bundle.version, public


def _withdraw(pki_dir: Path, peer: PeerId) -> None:
    """Remove what :func:`numfed.pki.issue_member` (and :func:`_publish_carrier`) wrote for
    ``peer``, when a later step failed: a member is added whole or not at all."""
    from numfed import pki

    layout = pki.PkiLayout(pki_dir)
    member = layout.member_dir(peer)
    for path in (
        layout.cert_path(peer),
        layout.key_path(peer),
        member / "signing.key.pem",
        member / "signing.pub.pem",
    ):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        member.rmdir()


def add_member(
    root: Path,
    *,
    carrier: str | None = None,
    platform: str | None = None,
    ranges: Sequence[str] = (),
    events: str = "push",
    demo_data: bool = False,
    metrics: bool = True,
    validity: timedelta = timedelta(days=365),
    now: datetime | None = None,
) -> Plan:
    """Add one carrier or platform to the federation in ``root``."""
    from numfed import pki
    from numfed.federation import (
        carrier_config_text,
        gateway_member_entry,
        platform_config_text,
    )

    if (carrier is None) == (platform is None):
        raise InvalidArgument("BAD_MEMBERS", "name one --carrier or one --platform")
    peer = PeerId(Role.CARRIER, carrier) if carrier else PeerId(Role.PLATFORM, platform or "")
    if events not in ("push", "poll"):
        raise InvalidArgument("BAD_EVENTS", '--events is "push" or "poll"')
    gateway, otlp = _read_gateway(root)
    config = root / f"{peer.role.value}-{peer.id}.toml"
    if config.exists():
        raise FailedPrecondition("MEMBER_EXISTS", f"{config} exists already")
    prefixes = list(ranges)
    for prefix in prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise InvalidArgument("BAD_RANGE", f"--range {prefix!r} is not +PREFIX")
    if prefixes and peer.role is not Role.CARRIER:
        raise InvalidArgument("BAD_RANGE", "only a carrier holds number ranges")
    taken = set()
    for toml in root.glob("*.toml"):
        taken |= {int(m.group(2)) for m in _PORT.finditer(toml.read_text())}
    host = gateway.rsplit(":", 1)[0]
    ports = _ports(host, max(taken) + 1 if taken else 7000, taken)

    def at() -> str:
        return f"{host}:{next(ports)}"

    now = now or datetime.now(UTC)
    if peer.role is Role.CARRIER:
        _check_ranges(root / "trust", peer.id, prefixes, now)
    pki.issue_member(root / "pki", peer, now=now, validity=validity)
    out = Plan(root)
    listen = at()
    metrics_at = at() if metrics else None
    if peer.role is Role.CARRIER:
        holder = at()
        try:
            version, public = _publish_carrier(root, peer.id, prefixes, now)
        except BaseException:
            _withdraw(root / "pki", peer)
            raise
        config.write_text(
            carrier_config_text(
                peer.id,
                listen=listen,
                holder_listen=holder,
                gateway=gateway,
                seed_scenario=None if demo_data else False,
                extra=_telemetry(metrics_at, otlp),
            )
        )
        entry = gateway_member_entry("carrier", peer.id, listen)
        out.notes.append(
            f"trust/bundle.pb is now version {version}, with {peer.id}'s public key "
            f"({public.relative_to(root)})"
            + (f" and ranges {', '.join(prefixes)}" if prefixes else "")
            + ". A running gateway serves it within a second, no restart (its log: 'trust "
            "files in … applied'); each platform takes it at the gateway's next call or "
            "answer, at the latest within a minute."
        )
    else:
        config.write_text(
            platform_config_text(
                peer.id,
                listen=listen,
                gateway=gateway,
                knobs={"events": events, **({} if demo_data else {"seed_scenario": False})},
                extra=_telemetry(metrics_at, otlp),
            )
        )
        entry = gateway_member_entry(
            "platform", peer.id, listen, events if events != "push" else None
        )
    with (root / "gateway.toml").open("a") as f:
        f.write(entry)
    out.rows.append((f"{peer.role.value} {peer.id}", config.name, listen, metrics_at or "-"))
    out.notes.insert(
        0,
        f"gateway.toml now names {peer.uri}: a running gateway serves and calls it within a "
        f"second (or at once on SIGHUP). Start it: numfed {peer.role.value} serve --config "
        f"{config}",
    )
    return out


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write a federation's PKI, signed trust files and one config per process",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--carrier", action="append", default=[], metavar="ID", help="a carrier")
    init.add_argument("--platform", action="append", default=[], metavar="ID", help="a platform")
    init.add_argument("--host", default="127.0.0.1", help="the address every process uses")
    init.add_argument(
        "--base-port",
        type=int,
        default=7000,
        help="first port given out (default 7000); 0: free ports picked at random",
    )
    init.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="CARRIER=+PREFIX",
        help="a number block a carrier holds in the numbering plan (cmcc, cucc and ctcc get "
        "China's blocks by default)",
    )
    init.add_argument("--otlp-endpoint", metavar="URL", help="send every process's traces here")
    init.add_argument(
        "--no-metrics", action="store_true", help="no metrics endpoint in the configs"
    )
    init.add_argument(
        "--demo-data",
        action="store_true",
        help="seed the demo's subscribers and accounts (to try a holder's journey)",
    )
    init.add_argument("--days", type=int, default=365, help="certificate and key validity")
    add = actions.add_parser(
        "add-member",
        help="add one carrier or platform: certificate, config, gateway entry (and trust)",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    add.add_argument("directory", metavar="DIR", type=Path)
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--carrier", metavar="ID")
    who.add_argument("--platform", metavar="ID")
    add.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="+PREFIX",
        help="a number block the new carrier holds",
    )
    add.add_argument("--events", default="push", choices=("push", "poll"))
    add.add_argument("--no-metrics", action="store_true")
    add.add_argument("--demo-data", action="store_true")
    add.add_argument("--days", type=int, default=365)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.days < 1:
        raise InvalidArgument("BAD_VALIDITY", "--days must be at least 1")
    validity = timedelta(days=args.days)
    if args.action == "init":
        plan = init_federation(
            args.directory,
            carriers=args.carrier,
            platforms=args.platform,
            host=args.host,
            base_port=args.base_port,
            metrics=not args.no_metrics,
            otlp_endpoint=args.otlp_endpoint,
            demo_data=args.demo_data,
            ranges=args.range,
            validity=validity,
        )
        title = f"federation written to {plan.root}"
    else:
        plan = add_member(
            args.directory,
            carrier=args.carrier,
            platform=args.platform,
            ranges=args.range,
            events=args.events,
            demo_data=args.demo_data,
            metrics=not args.no_metrics,
            validity=validity,
        )
        title = f"member added to {plan.root}"
    table = Table(title=title, title_justify="left")
    for column in ("process", "config", "listens on", "metrics"):
        table.add_column(column, no_wrap=True)
    for row in plan.rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for note in plan.notes:
        console.print(note, markup=False, soft_wrap=True)
    return 0


FEDERATION = Command(
    "federation",
    "set a federation up by hand: PKI, trust files and configs; add a member",
    _configure,
    _run,
)
