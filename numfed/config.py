"""Configuration files (TOML) for each role, read into checked dataclasses.

One file per process. Paths in a file are relative to the file's own folder. Every limit a
server applies lives in :class:`Limits`, so deadlines and caps come from one place.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from numfed.errors import InvalidArgument

__all__ = [
    "EVENT_MODES",
    "MAX_BATCH_ITEMS",
    "MIN_KEEPALIVE_TIME",
    "CarrierConfig",
    "GatewayConfig",
    "Limits",
    "Member",
    "PlatformConfig",
    "Telemetry",
    "load_carrier_config",
    "load_gateway_config",
    "load_platform_config",
]

MAX_BATCH_ITEMS = 500
"""Most claims in one call to a platform (PlatformService's contract: 1 to 500 items)."""
MIN_KEEPALIVE_TIME = 1.0
"""Shortest ``Limits.keepalive_time``: servers accept pings twice as often (numfed/rpc.py), so
any valid client setting is accepted by any server, whatever its own limits."""

_ID = re.compile(r"[a-z0-9_-]{1,32}")
_URL = re.compile(r"https://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")
EVENT_MODES = ("push", "poll", "ssf-push", "ssf-poll")
"""How lifecycle events reach a platform: gRPC DeliverEvents ("push"), gRPC PullEvents
("poll"), or OpenID Shared Signals SETs pushed to its receiver (RFC 8935, "ssf-push") or polled
by it (RFC 8936, "ssf-poll"); see docs/standards.md."""
_ENDPOINT = re.compile(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")
_DATABASE_URL = re.compile(r"(sqlite|postgresql(\+psycopg)?)://.*")
_OTLP_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}/?")


@dataclass(frozen=True)
class Limits:
    """Deadlines, retries and caps. Seconds unless named otherwise."""

    default_call_timeout: float = 5.0
    """Deadline for a downstream call when the caller set none."""
    platform_call_timeout: float = 3.0
    """Longest one call to a platform may take."""
    deadline_margin: float = 0.05
    """Time kept back from the caller's deadline to assemble the answer."""
    release_job_deadline: float = 86400.0
    """Longest the dispatcher retries a platform that has not answered a release. A job also
    stops once platforms would no longer accept its claim (expiry + RELEASE_GRACE), which with
    the default claim lifetime comes first."""
    retry_initial_backoff: float = 0.2
    retry_max_backoff: float = 30.0
    retry_multiplier: float = 2.0
    max_batch_items: int = 500
    """Most claims in one call to a platform."""
    max_in_flight_per_platform: int = 4
    """Calls in flight to one platform at once; more claims wait for the next batch."""
    lease_seconds: float = 30.0
    """How long a dispatcher holds a release task before another may take it."""
    claim_lifetime: float = 600.0
    """How long a carrier's claims stay valid (seconds), at most the trust bundle's
    ``max_claim_lifetime`` once the adapter holds a bundle (30 minutes before)."""
    recycled_rate: float = 20.0
    """Recycled checks per second each platform may make (token bucket)."""
    recycled_burst: float = 40.0
    """Recycled checks a platform may make at once before the rate applies."""
    recycled_distinct_dates: int = 3
    """Distinct dates one platform may ask the recycled check about for one number per
    ``recycled_budget_period``; a date asked already in the period costs nothing."""
    recycled_budget_period: float = 365 * 86400.0
    """The window (seconds) of ``recycled_distinct_dates``: a date counts for this long after
    the platform first asked about it."""
    recycled_probing_alert: int = 6
    """Distinct days all platforms together may ask about one number within the budget period
    before each further day is audited as PROBING_SUSPECTED: platforms that pool their budgets
    are seen, though each stays within its own."""
    breaker_failures: int = 5
    """Failed calls in a row that open a platform's circuit breaker."""
    breaker_cooldown: float = 2.0
    """How long an open breaker fails calls at once before it lets a probe through."""
    max_concurrent_queries: int = 64
    """QueryBindings calls the gateway serves at once; more wait in a queue."""
    max_queued_queries: int = 128
    """QueryBindings calls that may wait for a slot; beyond that, RESOURCE_EXHAUSTED at once."""
    max_concurrent_releases: int = 32
    max_queued_releases: int = 128
    max_concurrent_reads: int = 64
    """GetOperation, GetTrustBundle and CheckRecycled calls at once."""
    max_queued_reads: int = 128
    max_concurrent_events: int = 16
    """PublishEvents and PullEvents calls at once."""
    max_queued_events: int = 64
    max_watches: int = 256
    """WatchOperation streams open at once."""
    max_watches_per_caller: int = 0
    """WatchOperation streams one caller (one peer SPIFFE id) may hold open at once; past it,
    RESOURCE_EXHAUSTED ``CALLER_OVERLOADED``. 0 (the default): a quarter of ``max_watches``."""
    caller_share: float = 0.5
    """Share of each other RPC class's slots, running plus queued (``max_concurrent_*`` +
    ``max_queued_*``), that one caller may hold at once; past it, RESOURCE_EXHAUSTED
    ``CALLER_OVERLOADED``. At 0.5 a lone caller can still use every running slot of a class
    but never fill its queue. At most 1."""
    max_concurrent_holder_calls: int = 64
    """HolderService calls a carrier adapter serves at once (its own app channel and the
    holder's page); more wait in a queue."""
    max_queued_holder_calls: int = 128
    """HolderService calls that may wait for a slot; beyond that, RESOURCE_EXHAUSTED at once."""
    max_holder_watches: int = 256
    """WatchHolderRelease streams a carrier adapter keeps open at once."""
    holder_web_concurrency: int = 32
    """Requests the holder's page serves at once; more wait in a queue."""
    holder_web_queue: int = 64
    """Requests that may wait for a slot; beyond that, HTTP 503 with Retry-After at once."""
    holder_web_streams: int = 512
    """Live release progress streams the holder's page keeps open at once."""
    holder_web_retry_after: int = 5
    """Seconds the holder's page asks a turned-away visitor to wait (Retry-After)."""
    admission_queue_wait: float = 1.0
    """Longest a call waits in its class's queue before it gets RESOURCE_EXHAUSTED."""
    server_call_headroom: int = 128
    """Calls a server with admission classes (the gateway, a carrier's holder channel) holds at
    once beyond the sum of its classes' bounds (running plus queued, watches included): room
    for health checks and health Watch streams, reflection, and the calls admission is still
    turning away. Past that sum plus this headroom, gRPC itself refuses each new call with
    RESOURCE_EXHAUSTED before it costs the event loop a handler (``numfed.rpc.call_cap``)."""
    server_pending_calls: int = 128
    """Calls gRPC's core holds for a server with admission classes before its event loop has
    taken them (``grpc.server.max_pending_requests``; gRPC's default is 1,000). Past it gRPC
    turns more and more new calls away at once, and past twice it every one, before the loop
    sees them: the caller gets CANCELLED, to be retried with backoff. Without this bound a
    crowd that outruns the loop waits in that backlog, unseen by admission, for seconds."""
    server_pending_seconds: int = 5
    """Whole seconds a call may wait in that backlog
    (``grpc.server_max_unrequested_time_in_server``; gRPC's default is 30): a call that waited
    longer is turned away CANCELLED when the loop next takes a call. A saturated loop takes a
    call of a method only every few turns (``numfed_event_loop_lag_seconds``), so a backlog
    costs each call that many turns for every call ahead of it: a bound in time, not only in
    calls. A loop that is merely busy (1,000 platforms, a few queries in flight) keeps calls
    there for a second or more without any crowd, so the default leaves room for that; a
    gateway expecting a crowd sets it near ``admission_queue_wait`` (the launch-day soak: 1)."""
    shutdown_grace: float = 5.0
    """On SIGTERM: how long calls and release batches in flight may take to finish."""
    carrier_sync_wait: float = 30.0
    """At start, how long the gateway waits for every carrier's first sync (port halves and
    served numbers) before it serves anyway; a carrier that never answers holds nobody up."""
    portability_refresh: float = 1.0
    """How often a gateway reads ports completed through other replicas (docs/authority.md)."""
    audit_checkpoint_interval: float = 10.0
    """How often, at most, the gateway signs a checkpoint of its audit log (when it grew): the
    longest the newest entries stay unanchored by a checkpoint that members hold."""
    audit_max_backlog: int = 10_000
    """Audit records the gateway may hold in memory, waiting for the database, before it refuses
    new audited calls with UNAVAILABLE ``AUDIT_BACKLOG`` (and pauses deliveries) until they are
    written."""
    keepalive_time: float = 10.0
    """How long a connection may be quiet before its end (server or client) pings the other;
    at least 1 (every server accepts pings twice that often). A peer that is dead, cut off or
    frozen (SIGSTOP) answers no ping: after ``keepalive_timeout`` its connection is closed and
    its calls and streams end, so they hold no admission slot or call slot past
    ``keepalive_time + keepalive_timeout`` of its last word."""
    keepalive_timeout: float = 5.0
    """How long a ping may go unanswered before the connection is closed."""
    watch_max_age: float = 300.0
    """Longest one WatchOperation (gateway) or WatchHolderRelease (carrier) stream lasts: then
    it ends with OK although the operation is not done, and the client watches again."""
    max_connection_age: float = 1800.0
    """Servers ask a client to reconnect (HTTP/2 GOAWAY) after a connection has lasted this
    long (give or take 10%), so no call or stream lives on one connection forever."""
    max_connection_age_grace: float = 330.0
    """How long the calls and streams of such a connection may still run before it is closed;
    at least ``watch_max_age``, so a watch ends cleanly before its connection does."""

    def __post_init__(self) -> None:
        if self.max_watches_per_caller == 0:
            object.__setattr__(self, "max_watches_per_caller", max(self.max_watches // 4, 1))

    def per_caller(self, concurrency: int, queue: int) -> int:
        """Calls of one class (running plus queued) one caller may hold: its ``caller_share``."""
        return max(int(self.caller_share * (concurrency + queue)), 1)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise InvalidArgument("BAD_CONFIG", f"unknown limits: {sorted(unknown)}")
        defaults = cls()
        values: dict[str, Any] = {}
        for k, v in raw.items():
            # TOML numbers only: int("1_000"), float(" 12 ") or int("١٢") would take text too.
            kind = type(getattr(defaults, k))
            ok = (int, float) if kind is float else (int,)
            if isinstance(v, bool) or not isinstance(v, ok):
                raise InvalidArgument(
                    "BAD_CONFIG", f"limits.{k} must be a {kind.__name__}, not {v!r}"[:200]
                )
            values[k] = kind(v)
        limits = cls(**values)
        for f in fields(limits):
            if getattr(limits, f.name) <= 0:
                raise InvalidArgument("BAD_CONFIG", f"limits.{f.name} must be positive")
        if limits.caller_share > 1:
            raise InvalidArgument("BAD_CONFIG", "limits.caller_share is at most 1")
        if limits.max_watches_per_caller > limits.max_watches:
            raise InvalidArgument(
                "BAD_CONFIG", "limits.max_watches_per_caller is at most limits.max_watches"
            )
        if limits.max_batch_items > MAX_BATCH_ITEMS:
            raise InvalidArgument(
                "BAD_CONFIG",
                f"limits.max_batch_items is at most {MAX_BATCH_ITEMS} (platforms "
                "refuse larger batches)",
            )
        if limits.keepalive_time < MIN_KEEPALIVE_TIME:
            raise InvalidArgument(
                "BAD_CONFIG", f"limits.keepalive_time is at least {MIN_KEEPALIVE_TIME:g} s"
            )
        if limits.max_connection_age_grace < limits.watch_max_age:
            raise InvalidArgument(
                "BAD_CONFIG", "limits.max_connection_age_grace is at least limits.watch_max_age"
            )
        return limits


@dataclass(frozen=True)
class Telemetry:
    """The operator's view of one process: the ``[telemetry]`` section of any config."""

    metrics_listen: str | None = None
    """Loopback HOST:PORT of the process's HTTP endpoint (``/metrics``; the gateway also
    ``/status``). Absent: no endpoint. Port 0: any free port (the log names it)."""
    otlp_endpoint: str | None = None
    """Where spans go, OTLP over gRPC (``http://HOST:PORT`` plaintext, ``https://`` TLS).
    Absent: the ``OTEL_EXPORTER_OTLP_ENDPOINT`` environment variable, else no tracing."""
    trace_sample_ratio: float = 1.0
    """Share of new traces recorded (calls that arrive traced follow their caller)."""


def require_loopback(endpoint: str, setting: str, what: str = "this endpoint listens") -> None:
    """Refuse (InvalidArgument BAD_CONFIG) an endpoint ``HOST:PORT`` whose host is not
    ``localhost`` or a loopback address: what listens there is plaintext or unauthenticated."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidArgument("BAD_CONFIG", f"{setting}={endpoint!r}: {what} on loopback only")


def _telemetry(raw: dict[str, Any]) -> Telemetry:
    sec = raw.get("telemetry", {})
    if not isinstance(sec, dict):
        raise InvalidArgument("BAD_CONFIG", "[telemetry] must be a section")
    unknown = set(sec) - {f.name for f in fields(Telemetry)}
    if unknown:
        raise InvalidArgument("BAD_CONFIG", f"unknown telemetry settings: {sorted(unknown)}")
    listen = None
    if "metrics_listen" in sec:
        listen = _endpoint(sec, "metrics_listen", "telemetry")
        require_loopback(listen, "telemetry.metrics_listen", "the metrics endpoint listens")
    otlp = None
    if "otlp_endpoint" in sec:
        otlp = _str(sec, "otlp_endpoint", "telemetry")
        if not _OTLP_ENDPOINT.fullmatch(otlp):
            raise InvalidArgument(
                "BAD_CONFIG", f"telemetry.otlp_endpoint={otlp!r} is not http(s)://HOST:PORT"
            )
    ratio = _number(sec, "trace_sample_ratio", "telemetry", 1.0)
    if not 0.0 <= ratio <= 1.0:
        raise InvalidArgument("BAD_CONFIG", "telemetry.trace_sample_ratio must be within [0, 1]")
    return Telemetry(metrics_listen=listen, otlp_endpoint=otlp, trace_sample_ratio=ratio)


@dataclass(frozen=True)
class Member:
    """A carrier or platform as the gateway knows it."""

    id: str
    endpoint: str
    events: str = "push"
    """Platforms: how lifecycle events reach them, one of :data:`EVENT_MODES`."""


@dataclass(frozen=True)
class GatewayConfig:
    listen: str
    pki_dir: Path
    trust_dir: Path
    state_dir: Path
    database_url: str
    carriers: tuple[Member, ...]
    platforms: tuple[Member, ...]
    limits: Limits = field(default_factory=Limits)
    gateway_id: str = "main"
    pseudonym_key_file: Path | None = None
    """The HMAC key behind number pseudonyms; every replica of one federation needs the same
    key. Default: ``pseudonym.key`` in the state directory, created on first start."""
    source: Path | None = None
    """The file this config was read from; the gateway re-reads it when it changes."""
    facade_listen: str | None = None
    """Where the standards facades (CAMARA Number Recycling, OpenID Shared Signals) are served
    over HTTPS with mTLS (docs/standards.md); None: not served."""
    facade_url: str | None = None
    """The facades' public base URL (``https://host[:port][/path]``): the SSF issuer and the
    base of every endpoint the SSF configuration names. Default: ``https://`` + the address
    ``facade_listen`` bound."""
    ssf_key_file: Path | None = None
    """The Ed25519 key that signs Security Event Tokens (PEM); every replica needs the same key.
    Default: ``ssf-set.key.pem`` in the state directory, created on first start."""
    telemetry: Telemetry = field(default_factory=Telemetry)


@dataclass(frozen=True)
class PlatformConfig:
    platform_id: str
    listen: str
    pki_dir: Path
    trust_dir: Path
    state_dir: Path
    gateway: str
    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed_scenario: bool = True
    events: str = "push"
    """How lifecycle events arrive: "push" (the gateway calls DeliverEvents) or "poll"; with
    "ssf-push" or "ssf-poll" they arrive at the platform's SSF receiver instead, and this
    process takes none itself."""
    conformance: bool = False
    """Test only: also serve PlatformConformanceService for the conformance kit."""
    trust_refresh: float = 60.0
    """Seconds between two routine fetches of the trust bundle. A verification that may have
    failed for want of a newer bundle fetches one at once, whatever this says."""
    trust_refresh_min_interval: float = 1.0
    """Fewest seconds between two fetches that a version hint or a refusal starts (a test
    platform under the conformance kit sets it lower: the kit makes it refresh often)."""
    event_retry_limit: int = 8
    """Attempts at an event batch this platform cannot judge yet (a key from a newer bundle,
    say) before it may be set aside as a dead letter."""
    event_retry_window: float = 300.0
    """Seconds such a batch is held at least (not acknowledged, sent again by the gateway)
    before it may be set aside: both bounds must be reached."""
    admin_socket: Path | None = None
    """The Unix domain socket of PlatformAdminService (dead letters), for the platform's own
    operator, in a directory private to the platform's OS user (mode 0700). Default: one per
    state directory in ``numfed-<uid>/`` under ``$XDG_RUNTIME_DIR`` or the system's temporary
    directory (``platform_stubs.admin.socket_path``): a socket path has at most 107 bytes,
    which a state directory's path may not leave."""
    limits: Limits = field(default_factory=Limits)
    """Of these, a platform applies the connection settings (keepalive, connection age)."""
    telemetry: Telemetry = field(default_factory=Telemetry)


@dataclass(frozen=True)
class CarrierConfig:
    carrier_id: str
    listen: str
    holder_listen: str
    pki_dir: Path
    state_dir: Path
    gateway: str
    seed_scenario: bool = True
    limits: Limits = field(default_factory=Limits)
    conformance: bool = False
    """Test only: also serve CarrierConformanceService for the conformance kit."""
    holder_web_listen: str | None = None
    """Where the holder's page is served over HTTP (loopback only, like ``holder_listen``);
    None: no page."""
    display_name: str | None = None
    """The carrier's name, for a carrier the reference adapters do not know (the generic
    adapter, ``carrier_adapters/generic.py``); the reference adapters state their own."""
    display_name_zh: str | None = None
    """Its name in Chinese, as holders know it (generic adapter; default: ``display_name``)."""
    sms_signature: str | None = None
    """The sender text its SMS start with (generic adapter; default: the name in 【】)."""
    time_zone: str | None = None
    """The IANA zone whose calendar days its recycled checks answer about (generic adapter;
    default: UTC)."""
    trust_dir: Path | None = None
    """The trust files whose ``root-1.pb`` the carrier pins. With it, the adapter fetches the
    trust bundle and the gateway's audit checkpoint, and keeps the checkpoint
    (numfed/checkpoint.py)."""
    telemetry: Telemetry = field(default_factory=Telemetry)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument("BAD_CONFIG", f"{path}: {exc}") from exc


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    sec = raw.get(name)
    if not isinstance(sec, dict):
        raise InvalidArgument("BAD_CONFIG", f"missing [{name}] section")
    return sec


def _str(sec: dict[str, Any], key: str, where: str) -> str:
    value = sec.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument("BAD_CONFIG", f"{where}.{key} must be a non-empty string")
    return value


def _endpoint(sec: dict[str, Any], key: str, where: str) -> str:
    value = _str(sec, key, where)
    if not _ENDPOINT.fullmatch(value):
        raise InvalidArgument("BAD_CONFIG", f"{where}.{key}={value!r} is not HOST:PORT")
    return value


def _endpoints(sec: dict[str, Any], key: str, where: str) -> str:
    """One HOST:PORT, or several comma-separated (gateway replicas, dialled round-robin)."""
    value = _str(sec, key, where)
    if not all(_ENDPOINT.fullmatch(part.strip()) for part in value.split(",")):
        raise InvalidArgument(
            "BAD_CONFIG", f"{where}.{key}={value!r} is not HOST:PORT[,HOST:PORT...]"
        )
    return value


def _number(sec: dict[str, Any], key: str, where: str, default: float = 0.0) -> float:
    """A TOML number (not text: float() would take " 12 ", "1_0" and other scripts' digits)."""
    value = sec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument("BAD_CONFIG", f"{where}.{key} must be a number")
    return float(value)


def _ident(sec: dict[str, Any], key: str, where: str) -> str:
    value = _str(sec, key, where)
    if not _ID.fullmatch(value):
        raise InvalidArgument("BAD_CONFIG", f"{where}.{key}={value!r} is not a member id")
    return value


def _members(raw: dict[str, Any], name: str) -> tuple[Member, ...]:
    out = []
    for entry in raw.get(name, []):
        mode = entry.get("events", "push")
        if mode not in EVENT_MODES:
            raise InvalidArgument("BAD_CONFIG", f"{name}.events must be one of {EVENT_MODES}")
        out.append(Member(_ident(entry, "id", name), _endpoint(entry, "endpoint", name), mode))
    ids = [m.id for m in out]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("BAD_CONFIG", f"duplicate ids in [[{name}]]")
    return tuple(out)


def load_gateway_config(path: Path) -> GatewayConfig:
    raw = _read(path)
    base = path.parent
    sec = _section(raw, "gateway")
    state_dir = base / _str(sec, "state_dir", "gateway")
    url = sec.get("database_url") or f"sqlite:///{state_dir / 'gateway.db'}"
    if not isinstance(url, str) or not _DATABASE_URL.fullmatch(url):
        raise InvalidArgument(
            "BAD_CONFIG",
            "gateway.database_url must be sqlite:///PATH or postgresql+psycopg://…",
        )
    if "portability" in raw:
        raise InvalidArgument(
            "BAD_CONFIG",
            "[portability] is gone: who serves a number comes from the numbering plan in the "
            "trust bundle and from ports both carriers signed (docs/authority.md)",
        )
    platforms = _members(raw, "platform")
    if "facade_listen" not in sec and any(m.events.startswith("ssf-") for m in platforms):
        raise InvalidArgument(
            "BAD_CONFIG",
            "platforms whose events go by SSF need the facades: set gateway.facade_listen",
        )
    return GatewayConfig(
        listen=_endpoint(sec, "listen", "gateway"),
        pki_dir=base / _str(sec, "pki_dir", "gateway"),
        trust_dir=base / _str(sec, "trust_dir", "gateway"),
        state_dir=state_dir,
        database_url=str(url),
        carriers=_members(raw, "carrier"),
        platforms=platforms,
        limits=Limits.from_mapping(raw.get("limits", {})),
        pseudonym_key_file=(
            base / _str(sec, "pseudonym_key_file", "gateway")
            if "pseudonym_key_file" in sec
            else state_dir / "pseudonym.key"
        ),
        source=path,
        facade_listen=(
            _endpoint(sec, "facade_listen", "gateway") if "facade_listen" in sec else None
        ),
        facade_url=_url(sec, "facade_url", "gateway") if "facade_url" in sec else None,
        ssf_key_file=(
            base / _str(sec, "ssf_key_file", "gateway")
            if "ssf_key_file" in sec
            else state_dir / "ssf-set.key.pem"
        ),
        telemetry=_telemetry(raw),
    )


def _url(sec: dict[str, Any], key: str, where: str) -> str:
    value = _str(sec, key, where)
    if not _URL.fullmatch(value):
        raise InvalidArgument(
            "BAD_CONFIG", f"{where}.{key}={value!r} is not https://HOST[:PORT][/PATH]"
        )
    return value.rstrip("/")


def load_platform_config(path: Path) -> PlatformConfig:
    raw = _read(path)
    base = path.parent
    sec = _section(raw, "platform")
    error_rate = _number(sec, "error_rate", "platform")
    if not 0.0 <= error_rate <= 1.0:
        raise InvalidArgument("BAD_CONFIG", "platform.error_rate must be within [0, 1]")
    retry_limit = sec.get("event_retry_limit", 8)
    if isinstance(retry_limit, bool) or not isinstance(retry_limit, int) or retry_limit < 1:
        raise InvalidArgument("BAD_CONFIG", "platform.event_retry_limit must be an integer >= 1")
    retry_window = _number(sec, "event_retry_window", "platform", 300.0)
    trust_refresh = _number(sec, "trust_refresh", "platform", 60.0)
    min_interval = _number(sec, "trust_refresh_min_interval", "platform", 1.0)
    if retry_window < 0 or trust_refresh <= 0 or min_interval < 0:
        raise InvalidArgument(
            "BAD_CONFIG",
            "platform.event_retry_window and trust_refresh_min_interval must be >= 0 and "
            "platform.trust_refresh positive",
        )
    admin_socket = base / _str(sec, "admin_socket", "platform") if "admin_socket" in sec else None
    return PlatformConfig(
        platform_id=_ident(sec, "id", "platform"),
        listen=_endpoint(sec, "listen", "platform"),
        pki_dir=base / _str(sec, "pki_dir", "platform"),
        trust_dir=base / _str(sec, "trust_dir", "platform"),
        state_dir=base / _str(sec, "state_dir", "platform"),
        gateway=_endpoints(sec, "gateway", "platform"),
        latency_ms=_number(sec, "latency_ms", "platform"),
        error_rate=error_rate,
        seed_scenario=bool(sec.get("seed_scenario", True)),
        events=_events_mode(sec),
        conformance=bool(sec.get("conformance", False)),
        trust_refresh=trust_refresh,
        trust_refresh_min_interval=min_interval,
        event_retry_limit=retry_limit,
        event_retry_window=retry_window,
        admin_socket=admin_socket,
        limits=Limits.from_mapping(raw.get("limits", {})),
        telemetry=_telemetry(raw),
    )


def _events_mode(sec: dict[str, Any]) -> str:
    mode = sec.get("events", "push")
    if mode not in EVENT_MODES:
        raise InvalidArgument("BAD_CONFIG", f"events must be one of {EVENT_MODES}")
    return str(mode)


def load_carrier_config(path: Path) -> CarrierConfig:
    raw = _read(path)
    base = path.parent
    sec = _section(raw, "carrier")
    return CarrierConfig(
        carrier_id=_ident(sec, "id", "carrier"),
        listen=_endpoint(sec, "listen", "carrier"),
        holder_listen=_endpoint(sec, "holder_listen", "carrier"),
        pki_dir=base / _str(sec, "pki_dir", "carrier"),
        state_dir=base / _str(sec, "state_dir", "carrier"),
        gateway=_endpoints(sec, "gateway", "carrier"),
        seed_scenario=bool(sec.get("seed_scenario", True)),
        limits=Limits.from_mapping(raw.get("limits", {})),
        conformance=bool(sec.get("conformance", False)),
        holder_web_listen=(
            _endpoint(sec, "holder_web_listen", "carrier") if "holder_web_listen" in sec else None
        ),
        display_name=_optional(sec, "display_name", "carrier"),
        display_name_zh=_optional(sec, "display_name_zh", "carrier"),
        sms_signature=_optional(sec, "sms_signature", "carrier"),
        time_zone=_time_zone(sec),
        trust_dir=base / _str(sec, "trust_dir", "carrier") if "trust_dir" in sec else None,
        telemetry=_telemetry(raw),
    )


def _optional(sec: dict[str, Any], key: str, where: str) -> str | None:
    return _str(sec, key, where) if key in sec else None


def _time_zone(sec: dict[str, Any]) -> str | None:
    """An IANA time zone name the machine (or tzdata) knows; else BAD_CONFIG."""
    name = _optional(sec, "time_zone", "carrier")
    if name is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument("BAD_CONFIG", f"carrier.time_zone={name!r} is no known zone") from exc
    return name
