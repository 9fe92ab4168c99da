"""Lay out a whole federation on one machine: PKI, signed trust files and one config per process.

Used by ``numfed demo``, the integration tests and the benchmarks. Every process listens on
loopback; ports are chosen up front so that each config can name its peers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import socket
import stat
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from numfed import pki
from numfed.scenario import CARRIERS, PLATFORMS
from numfed.timecheck import DEFAULT_MAX_CLAIM_LIFETIME, DEFAULT_MAX_CLOCK_SKEW
from numfed.trust import AuditKey, CarrierKey, Root, TrustBundle, sign_bundle, sign_root
from numfed.trustfiles import write_envelope

__all__ = [
    "NUMBER_RANGES",
    "FederationLayout",
    "audit_keys",
    "carrier_config_text",
    "create_federation",
    "free_ports",
    "gateway_member_entry",
    "number_plan",
    "pick_ports",
    "platform_config_text",
    "port_ledger",
    "port_range",
    "telemetry_section",
    "toml_section",
    "write_trust",
]

ROOT_THRESHOLD = 2
CARRIER_PREFIXES = ("+86",)
"""Mobile number portability is nationwide in China: each carrier's key may attest any +86
number. Which carrier serves a number is decided by the numbering plan and the completed ports
(docs/authority.md), never by the key's scope."""

NUMBER_RANGES: dict[str, tuple[str, ...]] = {
    carrier: tuple(f"+86{block}" for block in blocks.split())
    for carrier, blocks in {
        "cmcc": "134 135 136 137 138 139 147 148 150 151 152 157 158 159 172 178 182 183 184 187"
        " 188 195 197 198",
        "cucc": "130 131 132 145 146 155 156 166 167 171 175 176 185 186 196",
        "ctcc": "133 149 153 173 174 177 180 181 189 190 191 193 199",
    }.items()
}
"""The demo numbering plan: the mobile number blocks China's numbering plan allocates to each
of the three carriers (three-digit blocks after +86), written into the signed trust bundle."""


def number_plan(carriers: Sequence[str]) -> dict[str, str]:
    """prefix -> range holder for ``carriers`` (carriers the demo plan does not know get none)."""
    return {prefix: c for c in carriers for prefix in NUMBER_RANGES.get(c, ())}


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections and to bind(port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_HOLD = 300.0
"""Seconds a port handed out by :func:`free_ports` stays out of every other call's choice on
this machine while other ports are free: time enough for the member it was meant for to bind
it."""


def port_range() -> tuple[int, int]:
    """The ports :func:`free_ports` hands out (inclusive): up to 12,000 just below the
    ephemeral range."""
    high = max(_ephemeral_low() - 1, 2048)
    return max(high - 12000, 1025), high


def port_ledger() -> Path:
    """The file where this machine's user records the ports :func:`free_ports` handed out.

    It is in the system's temporary directory whatever ``TMPDIR`` says, so that every process
    of the user shares it: one given a ``TMPDIR`` of its own (``numfed demo`` in its test)
    would otherwise keep a ledger of its own and could be handed a port another just took."""
    shared = Path("/tmp")
    base = shared if os.access(shared, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    return base / f"numfed-ports-{os.getuid()}.ledger"


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at this moment, chosen below the ephemeral range,
    and none handed out by another call (in any process of this user) in the last
    :data:`PORT_HOLD` seconds while any other is free.

    A port picked by binding port 0 comes from the kernel's ephemeral range, which is also where
    every outgoing connection (gRPC clients, database connections) takes its local port, so one
    can take it between this call and the member's own bind. Ports below that range are handed
    out by no one; picking them at random keeps concurrent federations on one machine apart,
    and the ledger (:func:`port_ledger`, under an exclusive ``flock``) keeps two of them from
    being handed the same port before either member has bound it.

    Raises ``OSError`` when fewer than ``n`` ports of the range are free, or when the ledger is
    not a regular file of this user's with one name (see :func:`pick_ports`).
    """
    return pick_ports(n, *port_range(), port_ledger())


def pick_ports(n: int, low: int, high: int, ledger: Path, *, now: float | None = None) -> list[int]:
    """:func:`free_ports` over ``low``..``high`` (inclusive) with the ledger at ``ledger``.

    The ledger holds one ``port until`` line per port held. A line that is not that (cut short
    by a crash, damaged) is ignored, and no hold lasts past ``now`` + :data:`PORT_HOLD` (the
    clock may have been set back since it was written). When fewer than ``n`` free ports are
    not held, the free ports held longest are handed out again: their members have most likely
    come and gone, and a run that asks often (pgtemp, the fixtures, a benchmark's 1,000
    platforms) would otherwise be refused for the next five minutes."""
    now = time.time() if now is None else now
    with _open_ledger(ledger) as book:
        fcntl.flock(book, fcntl.LOCK_EX)  # released when the file closes
        held: dict[int, float] = {}
        for line in book.read().split("\n"):
            number, _, until = line.partition(" ")
            with contextlib.suppress(ValueError):
                if float(until) > now:  # never for nan
                    held[int(number)] = min(float(until), now + PORT_HOLD)
        candidates = [p for p in range(low, high + 1) if p not in held]
        random.Random().shuffle(candidates)  # seeded from os.urandom, 20x cheaper than SystemRandom
        candidates += sorted((p for p in range(low, high + 1) if p in held), key=held.__getitem__)
        chosen: list[int] = []
        for port in candidates:
            if len(chosen) == n:
                break
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            chosen.append(port)
        if len(chosen) < n:
            raise OSError(f"no {n} free ports left in {low}-{high}")
        held.update((port, now + PORT_HOLD) for port in chosen)
        book.seek(0)
        book.truncate()
        book.write("".join(f"{port} {until}\n" for port, until in held.items()))
    return chosen


def _open_ledger(ledger: Path) -> TextIO:
    """``ledger`` open for reading and writing (made, 0600, if missing), refused unless it is a
    regular file of this user's with no other name: in the shared temporary directory another
    user could make the name point at a file of ours, for us to overwrite."""
    try:
        fd = os.open(ledger, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open the port ledger {ledger}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise OSError(f"refusing the port ledger {ledger}: not a file of this user's with one name")
    return open(fd, "r+", encoding="ascii", errors="replace")  # damaged bytes: lines ignored


def write_trust(
    pki_dir: Path,
    trust_dir: Path,
    *,
    now: datetime,
    carriers: Sequence[str] = CARRIERS,
    validity: timedelta = timedelta(days=365),
    bundle_validity: timedelta = timedelta(days=30),
    number_ranges: Mapping[str, str] | None = None,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    max_claim_lifetime: timedelta = DEFAULT_MAX_CLAIM_LIFETIME,
) -> None:
    """Sign root v1 (threshold of the root keys) and bundle v1 with every carrier's key, the
    numbering plan (``number_ranges``, prefix -> carrier; default :func:`number_plan`) and the
    federation's clock skew and maximum claim lifetime, which every verifier takes from it, and the
    gateway's audit key (:func:`audit_keys`)."""
    signers = pki.load_root_signers(pki_dir)
    root = Root(
        version=1,
        expires_at=now + validity,
        keys={s.public.key_id: s.public for s in signers},
        threshold=ROOT_THRESHOLD,
    )
    write_envelope(trust_dir / "root-1.pb", sign_root(root, signers[:ROOT_THRESHOLD]))
    keys = {}
    for carrier in carriers:
        public = pki.load_carrier_signer(pki_dir, carrier).public
        keys[public.key_id] = CarrierKey(
            key=public,
            carrier_id=carrier,
            not_before=now - timedelta(days=1),
            not_after=now + validity,
            number_prefixes=CARRIER_PREFIXES,
        )
    bundle = TrustBundle(
        version=1,
        issued_at=now,
        expires_at=now + bundle_validity,
        carrier_keys=keys,
        revoked_key_ids=frozenset(),
        number_ranges=number_plan(carriers) if number_ranges is None else number_ranges,
        max_clock_skew=max_clock_skew,
        max_claim_lifetime=max_claim_lifetime,
    )
    bundle = dataclasses.replace(bundle, audit_keys=audit_keys(pki_dir, now=now, validity=validity))
    write_envelope(trust_dir / "bundle.pb", sign_bundle(bundle, signers[:ROOT_THRESHOLD]))


def audit_keys(pki_dir: Path, *, now: datetime, validity: timedelta) -> dict[str, AuditKey]:
    """The gateway's audit key for the bundle (none if the PKI has none: checkpoints unsigned)."""
    if not pki.PkiLayout(pki_dir).audit_key_path().exists():
        return {}
    public = pki.load_audit_signer(pki_dir).public
    key = AuditKey(public, not_before=now - timedelta(days=1), not_after=now + validity)
    return {public.key_id: key}


@dataclass(frozen=True)
class FederationLayout:
    root: Path
    pki_dir: Path
    trust_dir: Path
    gateway_config: Path
    gateway_endpoint: str
    carrier_configs: dict[str, Path] = field(default_factory=dict)
    platform_configs: dict[str, Path] = field(default_factory=dict)
    carrier_endpoints: dict[str, str] = field(default_factory=dict)
    holder_endpoints: dict[str, str] = field(default_factory=dict)
    holder_web_endpoints: dict[str, str] = field(default_factory=dict)
    """Carrier id -> its holder's page (HTTP on loopback), when laid out with one."""
    platform_endpoints: dict[str, str] = field(default_factory=dict)
    replica_configs: list[Path] = field(default_factory=list)
    """Every gateway replica's config (the first is ``gateway_config``)."""
    replica_endpoints: list[str] = field(default_factory=list)
    metrics_endpoints: dict[str, str] = field(default_factory=dict)
    """Process name ("gateway", "carrier-cmcc", "platform-weibo") -> its loopback metrics
    endpoint, for the processes given one (``metrics=True``)."""
    facade_endpoints: list[str] = field(default_factory=list)
    """Each replica's HTTPS facades (CAMARA, SSF), when laid out with them."""

    @property
    def gateway_target(self) -> str:
        """What members dial: every replica, comma-separated (round-robin)."""
        return ",".join(self.replica_endpoints)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_section(name: str, values: Mapping[str, object]) -> str:
    """``[name]`` and one ``key = value`` line per item (strings, numbers, booleans)."""
    return f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def telemetry_section(metrics_listen: str | None = None, otlp_endpoint: str | None = None) -> str:
    """A ``[telemetry]`` section (empty when neither is given)."""
    values = {
        k: v
        for k, v in (("metrics_listen", metrics_listen), ("otlp_endpoint", otlp_endpoint))
        if v is not None
    }
    return "\n" + toml_section("telemetry", values) if values else ""


def carrier_config_text(
    carrier: str,
    *,
    listen: str,
    holder_listen: str,
    gateway: str,
    holder_web_listen: str | None = None,
    seed_scenario: bool | None = None,
    extra: str = "",
) -> str:
    """A carrier adapter's config, its files in ``pki``, ``trust`` (the root it pins, to keep
    the gateway's audit checkpoints) and ``state/carrier-<id>`` beside it."""
    values: dict[str, object] = {
        "id": carrier,
        "listen": listen,
        "holder_listen": holder_listen,
        "pki_dir": "pki",
        "state_dir": f"state/carrier-{carrier}",
        "trust_dir": "trust",
        "gateway": gateway,
    }
    if holder_web_listen is not None:
        values["holder_web_listen"] = holder_web_listen
    if seed_scenario is not None:
        values["seed_scenario"] = seed_scenario
    return toml_section("carrier", values) + extra


def platform_config_text(
    platform: str,
    *,
    listen: str,
    gateway: str,
    knobs: Mapping[str, object] | None = None,
    extra: str = "",
) -> str:
    """A reference platform's config, its files in ``pki``, ``trust`` and
    ``state/platform-<id>`` beside it."""
    return (
        toml_section(
            "platform",
            {
                "id": platform,
                "listen": listen,
                "pki_dir": "pki",
                "trust_dir": "trust",
                "state_dir": f"state/platform-{platform}",
                "gateway": gateway,
                **(knobs or {}),
            },
        )
        + extra
    )


def gateway_member_entry(role: str, member: str, endpoint: str, events: str | None = None) -> str:
    """One ``[[carrier]]`` or ``[[platform]]`` entry of the gateway's config."""
    text = f'\n[[{role}]]\nid = "{member}"\nendpoint = "{endpoint}"\n'
    if events:
        text += f'events = "{events}"\n'
    return text


def create_federation(
    root: Path,
    *,
    now: datetime | None = None,
    carriers: Sequence[str] = CARRIERS,
    platforms: Sequence[str] = PLATFORMS,
    database_url: str = "",
    platform_knobs: Mapping[str, Mapping[str, object]] | None = None,
    limits: Mapping[str, object] | None = None,
    replicas: int = 1,
    holder_web: bool = False,
    facades: bool = False,
    metrics: bool = False,
    otlp_endpoint: str | None = None,
) -> FederationLayout:
    """Write PKI, trust files and configs for a gateway, ``carriers`` and ``platforms``.

    With ``replicas`` > 1 (which needs a PostgreSQL ``database_url``) it writes one config per
    gateway replica, ``gateway.toml``, ``gateway-2.toml``, …: same database, same pseudonym
    key, own port; members dial them all, round-robin. With ``holder_web`` each carrier also
    serves the holder's page (``holder_web_listen``). With ``facades`` each replica also serves
    the CAMARA and SSF facades over HTTPS (``facade_listen``; ``facade_endpoints``). With
    ``metrics`` every process gets a loopback metrics endpoint (``layout.metrics_endpoints``);
    with ``otlp_endpoint`` every process sends its spans there.
    """
    if replicas > 1 and not database_url.startswith("postgresql"):
        raise ValueError("several gateway replicas need a PostgreSQL database_url")
    now = now or datetime.now(UTC)
    root.mkdir(parents=True, exist_ok=True)
    pki_dir, trust_dir = root / "pki", root / "trust"
    pki.init_pki(pki_dir, carriers=tuple(carriers), platforms=tuple(platforms), now=now)
    write_trust(pki_dir, trust_dir, now=now, carriers=carriers)
    per_carrier = 3 if holder_web else 2
    facade_ports = replicas if facades else 0
    processes = replicas + len(carriers) + len(platforms)
    ports = iter(
        free_ports(
            replicas
            + facade_ports
            + per_carrier * len(carriers)
            + len(platforms)
            + (processes if metrics else 0)
        )
    )
    endpoints = [f"127.0.0.1:{next(ports)}" for _ in range(replicas)]
    layout = FederationLayout(root, pki_dir, trust_dir, root / "gateway.toml", endpoints[0])
    layout.replica_endpoints.extend(endpoints)
    layout.replica_configs.extend(
        [root / "gateway.toml", *(root / f"gateway-{i}.toml" for i in range(2, replicas + 1))]
    )

    def telemetry(process: str) -> str:
        listen = None
        if metrics:
            listen = layout.metrics_endpoints[process] = f"127.0.0.1:{next(ports)}"
        return telemetry_section(listen, otlp_endpoint)

    gw = layout.gateway_target
    limit_text = toml_section("limits", limits) if limits else ""
    for c in carriers:
        layout.carrier_endpoints[c] = f"127.0.0.1:{next(ports)}"
        layout.holder_endpoints[c] = f"127.0.0.1:{next(ports)}"
        if holder_web:
            layout.holder_web_endpoints[c] = f"127.0.0.1:{next(ports)}"
        path = root / f"carrier-{c}.toml"
        path.write_text(
            carrier_config_text(
                c,
                listen=layout.carrier_endpoints[c],
                holder_listen=layout.holder_endpoints[c],
                holder_web_listen=layout.holder_web_endpoints.get(c),
                gateway=gw,
                extra=limit_text + telemetry(f"carrier-{c}"),
            )
        )
        layout.carrier_configs[c] = path
    for p in platforms:
        layout.platform_endpoints[p] = f"127.0.0.1:{next(ports)}"
        path = root / f"platform-{p}.toml"
        path.write_text(
            platform_config_text(
                p,
                listen=layout.platform_endpoints[p],
                gateway=gw,
                knobs=(platform_knobs or {}).get(p, {}),
                extra=telemetry(f"platform-{p}"),
            )
            + limit_text
        )
        layout.platform_configs[p] = path
    text = limit_text
    for c in carriers:
        text += gateway_member_entry("carrier", c, layout.carrier_endpoints[c])
    for p in platforms:
        mode = (platform_knobs or {}).get(p, {}).get("events")
        text += gateway_member_entry(
            "platform", p, layout.platform_endpoints[p], str(mode) if mode else None
        )
    for i, (config, endpoint) in enumerate(
        zip(layout.replica_configs, layout.replica_endpoints, strict=True), 1
    ):
        gateway = {
            "listen": endpoint,
            "pki_dir": "pki",
            "trust_dir": "trust",
            "state_dir": "state/gateway" if i == 1 else f"state/gateway-{i}",
            "pseudonym_key_file": "state/gateway/pseudonym.key",
        }
        if database_url:
            gateway["database_url"] = database_url
        if facades:
            layout.facade_endpoints.append(f"127.0.0.1:{next(ports)}")
            gateway["facade_listen"] = layout.facade_endpoints[-1]
            gateway["ssf_key_file"] = "state/gateway/ssf-set.key.pem"
        name = "gateway" if i == 1 else f"gateway-{i}"
        config.write_text(toml_section("gateway", gateway) + telemetry(name) + text)
    return layout
