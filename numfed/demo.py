"""``numfed demo``: the whole federation on loopback, walked through the holder's journey.

The story: who is who; then, for numbers recycled once, recycled twice, ported and fresh, a
holder verifies with their carrier, sees what previous holders left, has it released with live
progress, and keeps their own bindings; a carrier about to reassign a number has platforms clean
up first; a platform asks the one-bit recycled question; the holder takes away a proof anyone can
check; the audit log verifies. Exits non-zero if any expectation fails. ``--web`` instead starts
the federation with each carrier's holder's page and waits, for a person to try it.

The processes under it (start, health, stop) are :mod:`numfed.demo_processes`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from numfed import pki
from numfed.cli import Command
from numfed.demo_processes import (
    ExpectationFailed,
    Proc,
    read_sms_code,
    running_federation,
    sms_outbox,
    wait_ready,
    write_subscribers,
)
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import FederationLayout, create_federation
from numfed.identity import PeerId, Role
from numfed.scenario import Holder, Scenario, demo_scenario
from numfed.v1 import gateway_pb2, gateway_pb2_grpc, holder_pb2, holder_pb2_grpc
from platform_stubs.store import PlatformStore

__all__ = ["DEMO", "WHO_IS_WHO", "run_demo", "run_web"]

Outcome = gateway_pb2.PlatformOutcome
QUERY_WORDS = {
    Outcome.PLATFORM_OUTCOME_FOUND: "found",
    Outcome.PLATFORM_OUTCOME_NONE: "nothing",
    Outcome.PLATFORM_OUTCOME_UNAVAILABLE: "did not answer",
    Outcome.PLATFORM_OUTCOME_REFUSED: "refused",
    Outcome.PLATFORM_OUTCOME_EXPIRED: "did not answer in time",
}
"""What a query's answer says, per platform."""
RELEASE_WORDS = {
    Outcome.PLATFORM_OUTCOME_FOUND: "released",
    Outcome.PLATFORM_OUTCOME_NONE: "nothing to release",
    Outcome.PLATFORM_OUTCOME_UNAVAILABLE: "not answered yet; tried again",
    Outcome.PLATFORM_OUTCOME_REFUSED: "refused",
    Outcome.PLATFORM_OUTCOME_EXPIRED: "never answered; nothing released",
}
"""What a release did, per platform: not the query's words."""

WHO_IS_WHO = (
    "Who is who. A carrier (China Mobile cmcc, China Unicom cucc, China Telecom ctcc) hands a "
    "cancelled phone number to a new subscriber, the holder, after a 90-day quiet period. "
    "Platforms (weibo, taobao, douyin, toutiao, meituan, dianping, xiaomi, and the caller-ID "
    "service labels) still have the previous holders' accounts bound to that number. The holder "
    "proves to their own carrier who they are (name, ID number, a code sent by SMS); the "
    'carrier signs one claim, "this number has been held by its current holder since X", '
    "and the gateway, a neutral operator, takes it to every platform. Each platform checks the "
    "signature itself and releases, that is takes the number off, only the accounts bound "
    "before X; accounts are not deleted, and the holder's own bindings are never touched. "
    "Names, ID numbers and codes never leave the carrier. When a carrier gives a number to a "
    'new subscriber we say it reassigns the number; "release" is only what platforms do.'
)


def verify_holder(
    stub: holder_pb2_grpc.HolderServiceStub,
    layout: FederationLayout,
    carrier: str,
    number: str,
    holder: Holder,
) -> holder_pb2.ConfirmVerificationResponse:
    """Name + ID number, then the SMS code from the carrier's outbox: a holder session."""
    start = stub.StartVerification(
        holder_pb2.StartVerificationRequest(
            number=number, name=holder.name, id_number=holder.id_number
        ),
        timeout=5,
    )
    code = read_sms_code(layout, carrier, number)
    session: holder_pb2.ConfirmVerificationResponse = stub.ConfirmVerification(
        holder_pb2.ConfirmVerificationRequest(verification_id=start.verification_id, code=code),
        timeout=5,
    )
    return session


class Journey:
    def __init__(self, layout: FederationLayout, scenario: Scenario, console: Console) -> None:
        self.layout = layout
        self.scenario = scenario
        self.console = console
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"  {mark} {what}")
        if not ok:
            self.failures.append(what)

    def expected_counts(self, number: str, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
        x = self.scenario.histories[number].tenure_start(now)
        prior: dict[str, int] = {}
        own: dict[str, int] = {}
        for b in self.scenario.bindings:
            if b.number == number:
                side = prior if b.bound_at < x else own
                side[b.platform_id] = side.get(b.platform_id, 0) + 1
        return prior, own

    def heading(self, text: str) -> None:
        """A table's title on a line of its own: never wrapped to the table's width."""
        self.console.print(f"\n[bold]{text}[/]")

    def table(
        self, title: str, results: list[gateway_pb2.PlatformResult], *, release: bool = False
    ) -> None:
        """One row per platform: what a query found, or what a release did."""
        self.heading(title)
        words = RELEASE_WORDS if release else QUERY_WORDS
        t = Table()
        t.add_column("platform", no_wrap=True)
        t.add_column("released" if release else "answer", no_wrap=True)
        t.add_column("bindings (masked)", overflow="fold")
        t.add_column("count", justify="right")
        for r in results:
            labels = ", ".join(f"{b.masked_label}" for b in r.bindings) or "—"
            count = sum(b.count for b in r.bindings)
            t.add_row(r.platform_id, words.get(r.outcome, "?"), labels, str(count))
        self.console.print(t)

    def walk(self, label: str, number: str) -> None:
        now = datetime.now(UTC)
        history = self.scenario.histories[number]
        carrier = history.carrier_at(now)
        assert carrier is not None
        tenure = history.current_tenure(now)
        assert tenure is not None
        holder = self.scenario.holders[tenure.holder_id]
        prior, own = self.expected_counts(number, now)
        self.console.rule(f"[bold]{label.replace('_', ' ')}[/]: {number} at {carrier}")
        with grpc.insecure_channel(self.layout.holder_endpoints[carrier]) as channel:
            stub = holder_pb2_grpc.HolderServiceStub(channel)
            # A stranger with the wrong details gets nothing.
            try:
                stub.StartVerification(
                    holder_pb2.StartVerificationRequest(
                        number=number, name="冒名", id_number=holder.id_number
                    ),
                    timeout=5,
                )
                self.expect(False, "a stranger's verification is refused")
            except grpc.RpcError as exc:
                self.expect(
                    exc.code() == grpc.StatusCode.PERMISSION_DENIED,
                    f"a stranger's verification is refused ({exc.code().name})",
                )
            session = verify_holder(stub, self.layout, carrier, number, holder)
            x = session.tenure_start.ToDatetime(tzinfo=UTC)
            self.expect(
                x == tenure.start, f"holder verified by SMS; tenure began {x:%Y-%m-%d %H:%M} (X)"
            )
            token = session.session_token

            q = stub.QueryHolderBindings(
                holder_pb2.QueryHolderBindingsRequest(
                    session_token=token, scope=holder_pb2.BINDING_SCOPE_PRIOR
                ),
                timeout=10,
            )
            self.table("Query: bindings left by previous holders (bound before X)", list(q.results))
            found = {r.platform_id: sum(b.count for b in r.bindings) for r in q.results}
            same = all(found.get(p, 0) == n for p, n in prior.items()) and sum(
                found.values()
            ) == sum(prior.values())
            if prior:
                what = (
                    f"the query found every binding previous holders left: "
                    f"{sum(prior.values())} on {len(prior)} platform(s)"
                )
            else:
                what = "nothing of previous holders on any platform: nothing to release"
            self.expect(same, what)
            if prior:
                self.release(stub, token, prior)
                q2 = stub.QueryHolderBindings(
                    holder_pb2.QueryHolderBindingsRequest(
                        session_token=token, scope=holder_pb2.BINDING_SCOPE_PRIOR
                    ),
                    timeout=10,
                )
                self.expect(
                    all(r.outcome == Outcome.PLATFORM_OUTCOME_NONE for r in q2.results),
                    "query again: clean on every platform",
                )
            mine = stub.QueryHolderBindings(
                holder_pb2.QueryHolderBindingsRequest(
                    session_token=token, scope=holder_pb2.BINDING_SCOPE_OWN
                ),
                timeout=10,
            )
            self.table(
                "The current holder's own bindings (bound at or after X)", list(mine.results)
            )
            got = {
                r.platform_id: sum(b.count for b in r.bindings) for r in mine.results if r.bindings
            }
            self.expect(
                got == own, f"the current holder's {sum(own.values())} own binding(s) are untouched"
            )
            if prior.get("labels") or own.get("labels"):
                self.expect(
                    got.get("labels", 0) == own.get("labels", 0),
                    f"caller-ID labels set before X cleared ({prior.get('labels', 0)}); "
                    f"labels set since kept ({own.get('labels', 0)})",
                )

    def publish(self, carrier: str, events: list[LifecycleEvent]) -> None:
        """Publish a signed batch as the carrier's operator would."""
        signer = pki.load_carrier_signer(self.layout.pki_dir, carrier)
        envelope = sign_event_batch(carrier, events, signer, now=datetime.now(UTC))
        creds = pki.channel_credentials(self.layout.pki_dir, PeerId(Role.CARRIER, carrier))
        with grpc.secure_channel(self.layout.gateway_endpoint, creds) as channel:
            gateway_pb2_grpc.GatewayServiceStub(channel).PublishEvents(
                gateway_pb2.PublishEventsRequest(batch=envelope.to_proto()), timeout=5
            )

    def platform_store(self, platform: str) -> PlatformStore:
        return PlatformStore(self.layout.root / "state" / f"platform-{platform}" / "platform.db")

    def wait_for(self, check: Callable[[], bool], within: float = 10.0) -> bool:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def events(self) -> None:
        """Lifecycle events: platforms clean up before re-release; stale bindings stop takeovers."""
        now = datetime.now(UTC)
        free = next(
            h
            for h in self.scenario.histories.values()
            if h.carrier_at(now) == "cmcc"
            and h.current_tenure(now) is None
            and any(b.number == h.number for b in self.scenario.bindings)
        )
        number = free.number
        platforms = sorted({b.platform_id for b in self.scenario.bindings if b.number == number})
        self.console.rule("[bold]lifecycle events[/]")
        self.console.print(
            f"cmcc will soon reassign {number} (give it to a new subscriber). It tells the "
            "platforms first, PENDING_RELEASE, so that they release what previous holders left "
            "before anyone new gets the number."
        )

        def active(p: str) -> int:
            store = self.platform_store(p)
            try:
                return sum(1 for b in store.bindings_for([number])[number] if b.active)
            finally:
                store.close()

        counts_before = {p: active(p) for p in platforms}
        pending = LifecycleEvent.new(number, EventKind.PENDING_RELEASE, now, as_of=now)
        self.publish("cmcc", [pending])

        cleaned = self.wait_for(lambda: all(active(p) == 0 for p in platforms))
        self.heading("PENDING_RELEASE(as_of=now), pushed to every platform")
        t = Table()
        t.add_column("platform")
        t.add_column("former holders' bindings before", justify="right")
        t.add_column("after", justify="right")
        for p in platforms:
            t.add_row(p, str(counts_before[p]), str(active(p)))
        self.console.print(t)
        self.expect(cleaned, "platforms cleaned the number before anyone new gets it")

        number = self.scenario.showcase["recycled_once"]
        x = self.scenario.histories[number].tenure_start(now)
        old = next(
            b for b in self.scenario.bindings_on("weibo") if b.number == number and b.bound_at < x
        )
        store = self.platform_store("weibo")
        try:
            before = store.login_by_sms(number, old.account_id)
            self.publish(
                "cmcc", [LifecycleEvent.new(number, EventKind.REASSIGNED, x, tenure_start=x)]
            )
            refused = self.wait_for(lambda: not store.login_by_sms(number, old.account_id))
        finally:
            store.close()
        self.console.print(
            f"  REASSIGNED({number}, X={x:%Y-%m-%d}): SMS-code login into the previous holder's "
            f"weibo account: before {'opens' if before else 'refused'}, after "
            f"{'refused' if refused else 'opens'}"
        )
        self.expect(before and refused, "a takeover by SMS code alone is refused")

    def recycled(self) -> None:
        """A platform asks whether a number changed holder since a day: one signed bit, which
        the platform verifies itself before it believes it."""
        from google.type import date_pb2

        from numfed.claims import verify_recycled_claim
        from numfed.envelope import Envelope
        from numfed.trustfiles import load_trusted_state

        self.console.rule("[bold]recycled check[/] (platform weibo asks; the carrier answers)")
        number = self.scenario.showcase["recycled_once"]
        creds = pki.channel_credentials(self.layout.pki_dir, PeerId(Role.PLATFORM, "weibo"))
        trust = load_trusted_state(self.layout.trust_dir, now=datetime.now(UTC))
        t = Table(title_justify="left")
        for col in ("number", "changed holder after the end of", "signed answer"):
            t.add_column(col)
        answers = {}
        with grpc.secure_channel(self.layout.gateway_endpoint, creds) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            for year in (2020, 2024):
                answer = stub.CheckRecycled(
                    gateway_pb2.CheckRecycledRequest(
                        number=number, specified_date=date_pb2.Date(year=year, month=1, day=1)
                    ),
                    timeout=5,
                )
                verified = verify_recycled_claim(
                    Envelope.from_proto(answer.answer),
                    trust,
                    now=datetime.now(UTC),
                    audience="weibo",
                )
                changed = verified.claim.changed
                answers[year] = changed
                t.add_row(number, f"{year}-01-01", f"{changed} (signed by {verified.carrier_id})")
        self.console.print(t)
        self.expect(answers == {2020: True, 2024: False}, "one signed bit per question, never X")

    def proof(self) -> None:
        """The holder of a ported number takes away a proof anyone can check offline."""
        self.console.rule("[bold]holder proof[/] (checked offline with numfed verify)")
        number = self.scenario.showcase["ported"]
        now = datetime.now(UTC)
        history = self.scenario.histories[number]
        tenure = history.current_tenure(now)
        carrier = history.carrier_at(now)
        assert tenure is not None and carrier is not None
        holder = self.scenario.holders[tenure.holder_id]
        with grpc.insecure_channel(self.layout.holder_endpoints[carrier]) as channel:
            stub = holder_pb2_grpc.HolderServiceStub(channel)
            session = verify_holder(stub, self.layout, carrier, number, holder)
            issued = stub.IssueHolderProof(
                holder_pb2.IssueHolderProofRequest(session_token=session.session_token), timeout=5
            )
        trust = str(self.layout.trust_dir)
        result = subprocess.run(
            [sys.executable, "-m", "numfed", "verify", issued.token, "--trust", trust],
            capture_output=True,
            text=True,
            check=False,
        )
        self.console.print("  $ numfed verify TOKEN --trust trust/   with TOKEN the whole proof:")
        print(issued.token, flush=True)  # whole, on a line of its own: copy it and try
        self.console.print("  " + result.stdout.strip().replace("\n", "\n  "))
        self.expect(result.returncode == 0, "the proof verifies offline against the trust files")

    def audit(self) -> None:
        """``numfed audit verify``: the gateway's log is intact."""
        self.console.rule("[bold]audit[/]")
        time.sleep(0.2)  # the gateway appends in small groups
        config = str(self.layout.gateway_config)
        result = subprocess.run(
            [sys.executable, "-m", "numfed", "audit", "verify", "--config", config],
            capture_output=True,
            text=True,
            check=False,
        )
        self.console.print("  $ numfed audit verify --config gateway.toml")
        self.console.print("  " + result.stdout.strip())
        self.expect(result.returncode == 0, "the hash-chained audit log verifies")

    def release(
        self, stub: holder_pb2_grpc.HolderServiceStub, token: str, prior: dict[str, int]
    ) -> None:
        started = time.monotonic()
        op = stub.ReleaseHolderBindings(
            holder_pb2.ReleaseHolderBindingsRequest(
                session_token=token,
                scope=holder_pb2.BINDING_SCOPE_PRIOR,
                request_id=uuid.uuid4().hex,
            ),
            timeout=10,
        )
        meta = gateway_pb2.ReleaseMetadata()
        with Progress(
            TextColumn("  release"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("platforms"),
            console=self.console,
        ) as bar:
            task = bar.add_task("release", total=None)
            for update in stub.WatchHolderRelease(
                holder_pb2.WatchHolderReleaseRequest(session_token=token, name=op.name), timeout=30
            ):
                update.metadata.Unpack(meta)
                bar.update(task, total=meta.platforms_total, completed=meta.platforms_done)
                op = update
        elapsed = time.monotonic() - started
        response = gateway_pb2.ReleaseResponse()
        op.response.Unpack(response)
        self.table(
            f"Release {op.name}: done in {elapsed:.2f} s", list(response.results), release=True
        )
        released = {
            r.platform_id: sum(b.count for b in r.bindings) for r in response.results if r.bindings
        }
        self.expect(
            op.done and released == prior,
            f"released {sum(prior.values())} binding(s) of previous holders; accounts kept",
        )


@contextmanager
def _workdir(workdir: Path | None, console: Console) -> Iterator[Path]:
    """``workdir`` (kept, and said so), or a temporary folder removed at the end: the federation
    holds private keys, and nothing is left behind without saying where."""
    if workdir is not None:
        console.print(
            f"The federation is laid out in {workdir} and kept there: PKI with private keys, "
            "trust files, one config per process, logs, state. Delete it when done."
        )
        yield workdir
        return
    root = Path(tempfile.mkdtemp(prefix="numfed-demo-"))
    console.print(
        f"The federation is laid out in a temporary folder, {root}, removed at the end (it holds "
        "private keys); --workdir DIR keeps one."
    )
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _endpoints(layout: FederationLayout, procs: list[Proc], console: Console) -> None:
    console.print("\n[bold]Federation on loopback (mTLS, SQLite)[/]")
    t = Table()
    for col in ("process", "endpoint", "pid"):
        t.add_column(col, no_wrap=True)
    endpoints = {"gateway": layout.gateway_endpoint}
    endpoints |= {f"carrier-{c}": e for c, e in layout.carrier_endpoints.items()}
    endpoints |= {f"platform-{p}": e for p, e in layout.platform_endpoints.items()}
    for proc in procs:
        t.add_row(proc.name, endpoints.get(proc.name, ""), str(proc.popen.pid))
    console.print(t)


def run_demo(workdir: Path | None = None, console: Console | None = None) -> int:
    console = console or Console()
    started = time.monotonic()
    console.print("[bold]numfed demo[/]\n")
    console.print(WHO_IS_WHO + "\n")
    failures: list[str] = []
    with _workdir(workdir, console) as root:
        layout = create_federation(root, holder_web=True)
        scenario = demo_scenario()
        listed = write_subscribers(layout, scenario, root / "subscribers.json")
        if workdir is not None:
            console.print(f"Made-up subscribers to try by hand: {listed}")
        journey = Journey(layout, scenario, console)
        try:
            with running_federation(layout, console) as procs:
                wait_ready(layout, procs)
                _endpoints(layout, procs, console)
                console.print(f"ready in {time.monotonic() - started:.1f} s")
                journey.events()
                for label, number in scenario.showcase.items():
                    journey.walk(label, number)
                journey.recycled()
                journey.proof()
                journey.audit()
        except (ExpectationFailed, grpc.RpcError) as exc:
            journey.failures.append(str(exc))
            console.print(f"[red]demo stopped: {exc}[/]")
        failures = journey.failures
    elapsed = time.monotonic() - started
    if failures:
        console.print(f"[red bold]{len(failures)} expectation(s) failed[/] in {elapsed:.1f} s")
        return 1
    console.print(f"[green bold]every expectation held[/] — {elapsed:.1f} s")
    return 0


def _try_me(layout: FederationLayout, scenario: Scenario) -> tuple[str, str, Holder]:
    """A subscriber worth trying: previous holders left bindings (and caller-ID marks)."""
    number = scenario.showcase["recycled_once"]
    now = datetime.now(UTC)
    history = scenario.histories[number]
    tenure, carrier = history.current_tenure(now), history.carrier_at(now)
    assert tenure is not None and carrier is not None
    return number, carrier, scenario.holders[tenure.holder_id]


def run_web(workdir: Path | None = None, console: Console | None = None) -> int:
    """Start the federation with each carrier's holder's page and wait for Ctrl-C."""
    console = console or Console()
    console.print("[bold]numfed demo --web[/]\n")
    console.print(WHO_IS_WHO + "\n")
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    with _workdir(workdir, console) as root:
        layout = create_federation(root, holder_web=True)
        scenario = demo_scenario()
        listed = write_subscribers(layout, scenario, root / "subscribers.json")
        with running_federation(layout, console) as procs:
            wait_ready(layout, procs)
            _endpoints(layout, procs, console)
            number, carrier, holder = _try_me(layout, scenario)
            console.print("\n[bold]The holder's page[/] (one per carrier)")
            for c, endpoint in layout.holder_web_endpoints.items():
                console.print(f"  {c}: http://{endpoint}/")
            console.print(
                f"\n[bold]Try it[/]: open http://{layout.holder_web_endpoints[carrier]}/ and "
                f"enter\n  number     {number}\n  name       {holder.name}\n"
                f"  ID number  {holder.id_number}\n"
                f"The SMS code goes to the carrier's SMS outbox: {sms_outbox(layout, carrier)}\n"
                f"Every made-up subscriber, with name and ID number: {listed}\n"
                f"The same journey from a terminal: numfed holder start {number} --name "
                f"{holder.name} --id-number {holder.id_number} --target "
                f"{layout.holder_endpoints[carrier]}   (docs/holders.md)"
            )
            # Ready for Ctrl-C before saying so: a signal right after the line stops cleanly.
            previous = {
                sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                console.print("\nPress Ctrl-C to stop.", highlight=False)
                sys.stdout.flush()
                while not stop["now"]:
                    for proc in procs:
                        if proc.popen.poll() is not None:
                            console.print(f"[red]{proc.name} exited; see {proc.log}[/]")
                            return 1
                    time.sleep(0.2)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        console.print("stopped")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="lay the federation out here and keep it (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help="start the federation with each carrier's holder's page, print its address and a "
        "test subscriber, and wait for Ctrl-C (instead of the scripted journey)",
    )


DEMO = Command(
    "demo",
    "run the whole federation on loopback through the holder's journey (--web: try the page)",
    _configure,
    lambda args: run_web(args.workdir) if args.web else run_demo(args.workdir),
)
