"""The holder's page: a small ASGI app over the carrier's HolderService.

One page, seven steps: the number; name, ID number and the SMS code; what the platforms will see
(the claim, nothing more); the query; select and release; live progress; a receipt with the
holder proof. Two more tabs: the holder's own bindings, released one by one, and number marking
(caller-ID marks left by previous holders). Every step is a plain HTML form; the page's script
posts it in the background and puts the answer in place, so the holder's session lives only as
long as the page (see ``guard`` and ``state``).

The app holds no rule of the domain: verification, claims, releases and their limits are the
HolderService's, asked through :class:`~carrier_adapters.web.client.HolderClient`. What it adds
is the person's side: words in Chinese and English, refusals as sentences, CSRF protection and a
strict Content-Security-Policy, a per-page limit on code requests and attempts, and shedding
load with "busy, try again in N s" (see ``shedding``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import jinja2
from google.longrunning import operations_pb2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from carrier_adapters.sentences import BUSY_REASONS, LANGUAGES, explain, wait_seconds
from carrier_adapters.web import i18n
from carrier_adapters.web.client import HolderClient
from carrier_adapters.web.guard import (
    BROWSER_COOKIE,
    SECURITY_HEADERS,
    PageTokens,
    browser_cookie,
    check_origin,
    new_browser_id,
)
from carrier_adapters.web.shedding import STREAM, SecurityHeaders, ShedLoad, web_admission
from carrier_adapters.web.state import PageState, PageStore, Release
from numfed.claims import Purpose, normalize_number
from numfed.config import Limits
from numfed.errors import InvalidArgument, NumfedError, Unauthenticated
from numfed.observability import metrics
from numfed.observability.asgi import TimedRequests
from numfed.ratelimit import RateLimiter
from numfed.timeutil import from_timestamp
from numfed.v1 import binding_pb2, claim_pb2, gateway_pb2, holder_pb2

__all__ = ["CarrierFacts", "HolderPage", "create_app"]

log = logging.getLogger(__name__)

Outcome = gateway_pb2.PlatformOutcome
PRIOR = holder_pb2.BINDING_SCOPE_PRIOR
OWN = holder_pb2.BINDING_SCOPE_OWN
LABEL_KIND = 4
"""BindingKind.BINDING_KIND_LABEL: a caller-ID mark."""

CODE_REQUESTS = (1 / 60, 5.0)
"""Code requests one browser may make: 5 at once, then one a minute (rate/s, burst). The
carrier's own limit per number (5 per 10 minutes) holds whatever the browser."""
CODE_ATTEMPTS = (1 / 10, 10.0)
"""Codes one browser may try: 10 at once, then one every 10 s. The carrier voids a
verification after 5 wrong codes."""
MAX_FORM_BYTES = 16 * 1024
_LENGTH = re.compile(r"[0-9]{1,12}")
KEEPALIVE = 15.0
"""Seconds between keep-alive comments on a quiet progress stream."""
_HTTP = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    # The federation could not take or finish the call now (overload, a call dropped on the
    # way): come back later, never a 502.
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 503,
    "CANCELLED": 503,
}
_BACK_TO_NUMBER = frozenset(
    {"MALFORMED_NUMBER", "NUMBER_NOT_SERVED", "UNKNOWN_NUMBER", "NO_CURRENT_HOLDER"}
)
"""Refusals of the number itself: the page goes back to step 1."""
_SIGNED_OUT = frozenset({"NO_SESSION", "NOT_THE_HOLDER"})
_MAYBE_DONE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL", "UNKNOWN"})
"""Codes of a release call whose outcome is unknown: a retry reuses the request_id."""


@dataclass(frozen=True)
class CarrierFacts:
    """What the page says about the carrier serving it."""

    carrier_id: str
    name_zh: str
    name_en: str
    time_zone: tzinfo


def http_status(err: NumfedError) -> tuple[int, int | None]:
    """(HTTP status, Retry-After seconds or None) for a refusal."""
    status = _HTTP.get(err.code, 502)
    if err.code == "RESOURCE_EXHAUSTED" and err.reason in BUSY_REASONS:
        status = 503
    if status in (429, 503):
        return status, max(math.ceil(wait_seconds(err)), 1)
    return status, None


def typed_number(raw: str) -> str:
    """The number as typed, in E.164: spaces and dashes dropped, a number without a country
    code taken as Chinese (+86). Whether it is a valid number is ``normalize_number``'s."""
    digits = "".join(c for c in raw.strip() if c not in " -()")
    if digits and not digits.startswith("+"):
        digits = "+86" + digits
    return normalize_number(digits[:40])


class HolderPage:
    """The page's handlers and rendering, over one HolderClient."""

    def __init__(
        self,
        client: HolderClient,
        carrier: CarrierFacts,
        limits: Limits,
        *,
        tokens: PageTokens | None = None,
        store: PageStore | None = None,
    ) -> None:
        self.client = client
        self.carrier = carrier
        self.limits = limits
        self.tokens = tokens or PageTokens()
        self.store = store or PageStore()
        self.codes = RateLimiter(*CODE_REQUESTS, max_keys=self.store.limit)
        self.attempts = RateLimiter(*CODE_ATTEMPTS, max_keys=self.store.limit)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("carrier_adapters.web", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.actions: dict[str, Callable[[PageState, FormData, str], Awaitable[None]]] = {
            "number": self.enter_number,
            "code": self.send_code,
            "new-code": self.new_code,
            "confirm": self.confirm,
            "claim": self.show_claim,
            "query": self.query,
            "release": self.release_prior,
            "release/status": self.release_status,
            "receipt": self.receipt,
            "own": self.query_own,
            "own/release": self.release_own,
            "labels": self.query_labels,
            "labels/release": self.release_labels,
            "lang": self.switch_language,
            "restart": self.restart,
        }

    # -- the steps -------------------------------------------------------------------------

    async def enter_number(self, state: PageState, form: FormData, browser: str) -> None:
        state.view = "number"
        state.number = str(form.get("number", ""))[:40]
        number = typed_number(state.number)
        state.sign_out()
        state.number, state.view = number, "verify"

    async def send_code(self, state: PageState, form: FormData, browser: str) -> None:
        if not state.number:
            state.view = "number"
            return
        state.view = "verify"
        self.codes.take(browser)
        answer = await self.client.start(
            state.number, _field(form, "name", 64), _field(form, "id_number", 32)
        )
        state.verification_id = answer.verification_id
        state.code_expires = from_timestamp(answer.expire_time)

    async def new_code(self, state: PageState, form: FormData, browser: str) -> None:
        state.verification_id, state.code_expires = "", None
        state.view = "verify" if state.number else "number"

    async def confirm(self, state: PageState, form: FormData, browser: str) -> None:
        if not state.verification_id:
            state.view = "verify" if state.number else "number"
            return
        state.view = "verify"
        self.attempts.take(browser)
        try:
            session = await self.client.confirm(state.verification_id, _field(form, "code", 16))
        except NumfedError as err:
            if err.reason == "VERIFICATION_NOT_FOUND" or (
                err.reason == "WRONG_CODE" and err.metadata.get("attempts_left") == "0"
            ):
                state.verification_id = ""  # void: the holder asks for a new code
            raise
        state.verification_id, state.code_expires = "", None
        state.session_token = session.session_token
        state.tenure_start = from_timestamp(session.tenure_start)
        await self.show_claim(state, form, browser)

    async def show_claim(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        state.claim = await self.client.preview(state.session_token, claim_pb2.PURPOSE_QUERY_PRIOR)
        state.view = "claim"

    async def query(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        state.prior = await self.client.query(state.session_token, PRIOR)
        state.view = "query"

    async def release_prior(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        known = {r.platform_id for r in state.prior}
        picked = sorted({str(p) for p in form.getlist("platform")})
        if not picked:
            state.view = "query"
            raise InvalidArgument("NO_BINDINGS_SELECTED", "no platform selected")
        if not set(picked) <= known:
            state.view = "query"
            raise InvalidArgument("UNKNOWN_PLATFORM", "a selected platform was not asked")
        await self._release(state, "prior", PRIOR, platforms=picked)

    async def release_own(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        ref, platform = str(form.get("ref", "")), str(form.get("platform", ""))
        known = {(r.platform_id, b.binding_ref) for r in state.own for b in r.bindings}
        if (platform, ref) not in known:
            state.view = "own"
            raise InvalidArgument("NO_BINDINGS_SELECTED", "the binding is not listed")
        await self._release(state, "own", OWN, platforms=[platform], refs=[ref])

    async def release_labels(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        platforms = sorted(r.platform_id for r in _with_labels(state.labels))
        if not platforms:
            state.view = "labels"
            raise InvalidArgument("NO_BINDINGS_SELECTED", "no marks to clear")
        await self._release(state, "labels", PRIOR, platforms=platforms)

    async def _release(
        self,
        state: PageState,
        scope_name: str,
        scope: holder_pb2.BindingScope.ValueType,
        *,
        platforms: Sequence[str],
        refs: Sequence[str] = (),
    ) -> None:
        """Start a release; after an unclear failure, the same selection retries with the same
        request_id, so it is never started twice (AIP-155)."""
        state.view = {"prior": "query", "own": "own", "labels": "labels"}[scope_name]
        selection = f"{scope_name}|{','.join(platforms)}|{','.join(refs)}"
        pending = state.release
        if pending is None or pending.operation or pending.selection != selection:
            pending = Release(uuid.uuid4().hex, scope_name, selection=selection)
        state.release = pending
        try:
            op = await self.client.release(
                state.session_token, scope, pending.request_id, refs=refs, platform_ids=platforms
            )
        except NumfedError as err:
            if err.code not in _MAYBE_DONE:
                state.release = None
            raise
        pending.operation = op.name
        _follow(pending, op)
        state.proof = None
        state.view = "release"

    async def release_status(self, state: PageState, form: FormData, browser: str) -> None:
        """Without the page's script: the release as it stands now."""
        self._verified(state)
        release = state.release
        if release is None or not release.operation:
            state.view = "claim"
            return
        state.view = "release"
        async for op in self.client.watch(state.session_token, release.operation):
            _follow(release, op)
            break

    async def receipt(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        if state.proof is None:
            issued = await self.client.proof(state.session_token)
            state.proof = (issued.token, from_timestamp(issued.expire_time))
        state.view = "receipt"

    async def query_own(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        state.view = "own"
        state.own = await self.client.query(state.session_token, OWN)

    async def query_labels(self, state: PageState, form: FormData, browser: str) -> None:
        self._verified(state)
        state.view = "labels"
        state.labels = await self.client.query(state.session_token, PRIOR)

    async def switch_language(self, state: PageState, form: FormData, browser: str) -> None:
        lang = str(form.get("lang", ""))
        if lang in LANGUAGES:
            state.lang = lang

    async def restart(self, state: PageState, form: FormData, browser: str) -> None:
        state.sign_out()

    def _verified(self, state: PageState) -> None:
        if not state.verified:
            raise Unauthenticated("NO_SESSION", "verify first")

    # -- HTTP ------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        """A new page: a new page token (the holder's session will belong to this page)."""
        browser = request.cookies.get(BROWSER_COOKIE) or new_browser_id()
        lang = i18n.choose_language(
            request.query_params.get("lang"), request.headers.get("accept-language", "")
        )
        token = self.tokens.issue(browser)
        response = self.render(request, PageState(lang), token, full=True)
        if request.cookies.get(BROWSER_COOKIE) != browser:
            response.headers.append(
                "set-cookie", browser_cookie(browser, secure=request.url.scheme == "https")
            )
        return response

    async def post(self, request: Request) -> Response:
        action = self.actions.get(request.path_params["action"])
        if action is None:
            return Response(status_code=404)
        try:
            key, browser, token, form = await self._admit(request)
        except NumfedError as err:
            return self._refused_page(request, err)
        # A new state speaks the language the page was shown in.
        lang = i18n.choose_language(
            str(form.get("page_lang", "")), request.headers.get("accept-language", "")
        )
        status, retry = 200, None
        try:
            state = self.store.open(key, lang)
        except NumfedError as err:
            return self._refused_page(request, err)
        state.error = ""
        try:
            await action(state, form, browser)
        except NumfedError as err:
            status, retry = http_status(err)
            self._after_refusal(state, err)
        except Exception:
            log.exception("holder page: %s failed", request.url.path)
            status = 500
            state.error = explain(
                NumfedError("INTERNAL", "unexpected"), state.lang, **self._names()
            )
        response = self.render(request, state, token, full=not _wants_fragment(request))
        response.status_code = status
        if retry is not None:
            response.headers["retry-after"] = str(retry)
        return response

    def _after_refusal(self, state: PageState, err: NumfedError) -> None:
        if err.reason in _SIGNED_OUT:
            state.sign_out()
        elif err.reason in _BACK_TO_NUMBER:
            state.view = "number"
        state.error = explain(err, state.lang, **self._names())

    async def signout(self, request: Request) -> Response:
        """The page is closing (a beacon): forget its state at once."""
        with contextlib.suppress(NumfedError):
            key, _, _, _ = await self._admit(request)
            self.store.close(key)
        return Response(status_code=204)

    async def events(self, request: Request) -> Response:
        """Live progress of the page's release (server-sent events over WatchHolderRelease)."""
        try:
            key = self.tokens.check(
                request.cookies.get(BROWSER_COOKIE), request.query_params.get("page")
            )
        except NumfedError:
            return Response(status_code=204)  # tells EventSource to stop
        state = self.store.get(key)
        if state is None or state.release is None or not state.release.operation:
            return Response(status_code=204)
        return StreamingResponse(
            self._progress(
                state, request.scope.get("root_path", ""), request.query_params.get("page", "")
            ),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def _progress(self, state: PageState, base: str, token: str) -> AsyncIterator[str]:
        release = state.release
        assert release is not None
        updates: asyncio.Queue[operations_pb2.Operation | NumfedError | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for op in self.client.watch(state.session_token, release.operation):
                    await updates.put(op)
            except NumfedError as err:
                await updates.put(err)
            await updates.put(None)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        item = await updates.get()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                if isinstance(item, NumfedError):
                    state.error = explain(item, state.lang, **self._names())
                    yield _sse("done", self._fragment("progress.html", base, state, token))
                    return
                _follow(release, item)
                kind = "done" if release.done else "progress"
                yield _sse(kind, self._fragment("progress.html", base, state, token))
                if release.done:
                    return
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _admit(self, request: Request) -> tuple[str, str, str, FormData]:
        """CSRF: the browser says the request is from this page's origin, and it carries this
        browser's page token. Returns (page key, browser id, page token, form)."""
        check_origin(request.headers, f"{request.url.scheme}://{request.headers.get('host', '')}")
        length = request.headers.get("content-length", "0")
        if not _LENGTH.fullmatch(length) or int(length) > MAX_FORM_BYTES:
            raise InvalidArgument("FORM_TOO_LARGE", "the form is too large")
        form = await request.form(max_files=0, max_fields=64, max_part_size=4096)
        token = request.headers.get("x-page-token") or str(form.get("page_token", ""))
        browser = request.cookies.get(BROWSER_COOKIE, "")
        return self.tokens.check(browser, token), browser, token, form

    # -- rendering -------------------------------------------------------------------------

    def _names(self) -> dict[str, str]:
        return {"carrier_zh": self.carrier.name_zh, "carrier_en": self.carrier.name_en}

    def when(self, t: datetime | None) -> str:
        """A moment as the holder reads it: the carrier's local time and its UTC offset."""
        if t is None:
            return ""
        local = t.astimezone(self.carrier.time_zone)
        offset = local.utcoffset()
        hours = offset.total_seconds() / 3600 if offset is not None else 0.0
        zone = f"UTC{hours:+g}" if hours else "UTC"
        return f"{local:%Y-%m-%d %H:%M} ({zone})"

    def context(self, base: str, state: PageState, token: str) -> dict[str, Any]:
        lang = state.lang
        other = "en" if lang == "zh" else "zh"
        t = i18n.translator(lang, **self._names())
        x = self.when(state.tenure_start)
        return {
            "t": t,
            "lang": lang,
            "html_lang": _html_lang(lang),
            "other_lang": other,
            "other_html_lang": _html_lang(other),
            "carrier_name": self.carrier.name_zh if lang == "zh" else self.carrier.name_en,
            "base": base,
            "page_token": token,
            "state": state,
            "view": state.view,
            "error": state.error,
            "number": state.number,
            "x": x,
            "when": self.when,
            "platform": lambda p: i18n.platform_name(p, lang),
            "kind": lambda k: i18n.KINDS[k].say(lang) if k in i18n.KINDS else "",
            "rows": _rows(state, t, self.when),
            "own_bindings": _own_bindings(state.own),
            "unanswered": [
                i18n.platform_name(r.platform_id, lang)
                for r in (state.own if state.view == "own" else state.labels)
                if r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
            ],
            "marks": [
                (r.platform_id, b)
                for r in _with_labels(state.labels)
                for b in r.bindings
                if b.kind == LABEL_KIND
            ],
            "claim": _claim_rows(state.claim, t, self.when),
            "title": f"{t(_TITLES.get(state.view, 'service'))} · {self.carrier_name(lang)}",
        }

    def carrier_name(self, lang: str) -> str:
        return self.carrier.name_zh if lang == "zh" else self.carrier.name_en

    def render(self, request: Request, state: PageState, token: str, *, full: bool) -> Response:
        ctx = self.context(request.scope.get("root_path", ""), state, token)
        html = self.env.get_template("page.html" if full else "app.html").render(ctx)
        state.error = ""
        return HTMLResponse(html)

    def _fragment(self, name: str, base: str, state: PageState, token: str) -> str:
        html = self.env.get_template(name).render(self.context(base, state, token))
        state.error = ""
        return html

    def _refused_page(self, request: Request, err: NumfedError) -> Response:
        """A request the page cannot place (no valid page token, say): a page of its own."""
        lang = i18n.choose_language(None, request.headers.get("accept-language", ""))
        state = PageState(lang, view="refused", error=explain(err, lang, **self._names()))
        status, retry = http_status(err)
        response = self.render(request, state, "", full=not _wants_fragment(request))
        response.status_code = status
        if retry is not None:
            response.headers["retry-after"] = str(retry)
        return response

    def busy(self, scope: Mapping[str, Any], seconds: int) -> bytes:
        """The 503 page of a request turned away at the door (see ``shedding``)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        lang = i18n.choose_language(None, headers.get("accept-language", ""))
        t = i18n.translator(lang, **self._names())
        return (
            self.env.get_template("busy.html")
            .render(
                t=t,
                lang=lang,
                html_lang=_html_lang(lang),
                seconds=seconds,
                base=scope.get("root_path", ""),
                title=f"{t('busy_title')} · {self.carrier_name(lang)}",
            )
            .encode()
        )


_TITLES = {
    "number": "number_title",
    "verify": "verify_title",
    "claim": "claim_title",
    "query": "query_title",
    "release": "release_title",
    "receipt": "receipt_title",
    "own": "own_title",
    "labels": "labels_title",
    "refused": "error_title",
}


def _html_lang(lang: str) -> str:
    return "zh-CN" if lang == "zh" else "en"


def _wants_fragment(request: Request) -> bool:
    return request.headers.get("x-fragment") == "1"


def _field(form: FormData, name: str, limit: int) -> str:
    """A text field as typed, surrounding spaces dropped; longer than ``limit``: cut there (the
    carrier refuses it precisely)."""
    return str(form.get(name, "")).strip()[: limit + 1]


def _sse(event: str, html: str) -> str:
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\n{data}\n"


def _follow(release: Release, op: operations_pb2.Operation) -> None:
    """Take in a state of the operation: per-platform progress, and the result once done."""
    meta = gateway_pb2.ReleaseMetadata()
    if op.metadata.Unpack(meta):
        release.platforms_done = meta.platforms_done
        release.platforms_total = meta.platforms_total
        release.results = list(meta.results)
        if meta.HasField("deadline"):
            release.deadline = from_timestamp(meta.deadline)
    if op.done:
        response = gateway_pb2.ReleaseResponse()
        if op.response.Unpack(response):
            release.results = list(response.results)
        release.platforms_done = release.platforms_total = len(release.results)
        release.done = True


def _with_labels(results: Sequence[gateway_pb2.PlatformResult]) -> list[gateway_pb2.PlatformResult]:
    return [r for r in results if any(b.kind == LABEL_KIND for b in r.bindings)]


def _count(r: gateway_pb2.PlatformResult) -> int:
    return sum(b.count for b in r.bindings)


@dataclass(frozen=True)
class _Row:
    platform_id: str
    answer: str
    bindings: tuple[str, ...]
    selectable: bool
    selected: bool


def _rows(
    state: PageState, t: Callable[..., str], when: Callable[[datetime | None], str]
) -> list[_Row]:
    """One row per platform of the query (step 4) or of the release (steps 6 and 7)."""
    if state.view in ("release", "receipt") and state.release is not None:
        return [_release_row(r, state.release, t, when) for r in state.release.results]
    rows = []
    for r in state.prior:
        found = r.outcome == Outcome.PLATFORM_OUTCOME_FOUND
        unavailable = r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE
        answer = {
            Outcome.PLATFORM_OUTCOME_FOUND: t("found", count=_count(r)),
            Outcome.PLATFORM_OUTCOME_NONE: t("clean"),
            Outcome.PLATFORM_OUTCOME_UNAVAILABLE: t("no_answer"),
            Outcome.PLATFORM_OUTCOME_EXPIRED: t("no_answer"),
        }.get(r.outcome, t("refused"))
        labels = tuple(b.masked_label for b in r.bindings)
        rows.append(_Row(r.platform_id, answer, labels, found or unavailable, found))
    return rows


def _release_row(
    r: gateway_pb2.PlatformResult,
    release: Release,
    t: Callable[..., str],
    when: Callable[[datetime | None], str],
) -> _Row:
    if r.outcome == Outcome.PLATFORM_OUTCOME_FOUND:
        answer = t("released", count=_count(r))
    elif r.outcome == Outcome.PLATFORM_OUTCOME_NONE:
        answer = t("nothing_to_release")
    elif r.outcome == Outcome.PLATFORM_OUTCOME_UNAVAILABLE:
        answer = t("retrying", deadline=when(release.deadline))
    elif r.outcome == Outcome.PLATFORM_OUTCOME_EXPIRED:
        answer = t("expired")
    elif r.outcome == Outcome.PLATFORM_OUTCOME_REFUSED:
        answer = t("refused")
    else:
        answer = t("waiting")
    return _Row(r.platform_id, answer, tuple(b.masked_label for b in r.bindings), False, False)


def _own_bindings(
    results: Sequence[gateway_pb2.PlatformResult],
) -> list[tuple[str, binding_pb2.BindingSummary]]:
    return [(r.platform_id, b) for r in results for b in r.bindings if b.binding_ref]


def _claim_rows(
    claim: object, t: Callable[..., str], when: Callable[[datetime | None], str]
) -> list[tuple[str, str]]:
    """Step 3: every field of the claim as platforms receive it, in words."""
    if not isinstance(claim, claim_pb2.TenureClaim):
        return []
    purpose = Purpose(claim.purpose).name
    issued, expires = from_timestamp(claim.issued_at), from_timestamp(claim.expires_at)
    return [
        (t("claim_number"), claim.number),
        (t("claim_carrier"), claim.carrier_id),
        (t("claim_x"), when(from_timestamp(claim.tenure_start))),
        (t("claim_purpose"), f"{purpose} ({t('purpose_' + purpose)})"),
        (t("claim_valid"), t("claim_valid_value", issued=when(issued), expires=when(expires))),
        (t("claim_id"), claim.claim_id.hex()),
    ]


def create_app(
    target: str, carrier: CarrierFacts, limits: Limits, *, page: HolderPage | None = None
) -> tuple[Any, HolderPage]:
    """The ASGI app of the holder's page, calling the HolderService at ``target``; returns it
    with its :class:`HolderPage` (for shutdown and tests)."""
    page = page or HolderPage(HolderClient(target), carrier, limits)
    static = StaticFiles(packages=[("carrier_adapters.web", "static")])
    routes = [
        Route("/", page.home, methods=["GET"]),
        Route("/signout", page.signout, methods=["POST"]),
        Route("/release/events", page.events, methods=["GET"]),
        Route("/{action:path}", page.post, methods=["POST"]),
        Mount("/static", app=static, name="static"),
    ]

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("holder page: unhandled %s on %s", type(exc).__name__, request.url.path)
        return page._refused_page(request, NumfedError("INTERNAL", "unexpected"))

    app = Starlette(routes=routes, exception_handlers={Exception: server_error})
    admission = web_admission(limits)
    metrics.add_source(admission)  # numfed_admission_* {rpc_class="page"|"stream"}
    shed = ShedLoad(
        app,
        admission,
        classify=lambda path: STREAM if path == "/release/events" else "page",
        retry_after=limits.holder_web_retry_after,
        busy=page.busy,
    )
    # Timed outside the shedding, so a request turned away counts as a 503.
    return TimedRequests(SecurityHeaders(shed, SECURITY_HEADERS), routes), page
