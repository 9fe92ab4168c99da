"""The holder's page in a real browser (headless Chromium) against a whole federation.

The journey clicked through in Chinese and in English until the release completes and the
receipt's proof verifies with ``numfed verify``; a wrong SMS code refused; a platform that is down
shown as such; an own-binding release that touches only the binding picked; caller-ID marks
cleared; accessibility checked with axe-core on every step, and the whole journey done with the
keyboard alone. Each step's screenshot is saved (see conftest); ``make portal-shots`` copies the
journey's into docs/img/portal/.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from numfed.federation import NUMBER_RANGES
from numfed.scenario import Holder, demo_scenario
from numfed.testing import Federation, start_federation
from tests.carrier_adapters.web.conftest import SCREENSHOTS
from tests.integration.holder import sms_code

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

WORLD = demo_scenario()
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
VIEWPORT = {"width": 960, "height": 720}


def now() -> datetime:
    return datetime.now(UTC)


def carrier_of(number: str) -> str:
    carrier = WORLD.histories[number].carrier_at(now())
    assert carrier is not None
    return carrier


def holder_of(number: str) -> Holder:
    tenure = WORLD.histories[number].current_tenure(now())
    assert tenure is not None
    return WORLD.holders[tenure.holder_id]


def prior_of(number: str) -> dict[str, int]:
    """Bindings previous holders left on each platform (bound before X)."""
    x = WORLD.histories[number].tenure_start(now())
    out: dict[str, int] = {}
    for b in WORLD.bindings:
        if b.number == number and b.bound_at < x:
            out[b.platform_id] = out.get(b.platform_id, 0) + 1
    return out


def plain_numbers(carrier: str) -> list[str]:
    """Numbers the carrier serves in its own ranges, held now, with prior bindings; not the
    showcase ones (each test uses numbers of its own)."""
    out = []
    for n, h in sorted(WORLD.histories.items()):
        if n in WORLD.showcase.values() or h.current_tenure(now()) is None:
            continue
        if h.carrier_at(now()) == carrier and n.startswith(NUMBER_RANGES[carrier]) and prior_of(n):
            out.append(n)
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    """One federation for the module, every carrier serving the holder's page; each test uses
    numbers of its own."""
    federation = await start_federation(tmp_path_factory.mktemp("portal") / "fed", holder_web=True)
    try:
        yield federation
    finally:
        await federation.stop()


@dataclass
class Holding:
    """One page of the holder's site in the browser, and what the test saw on it."""

    fed: Federation
    page: Any
    shots: Path
    number: str
    console: list[str] = field(default_factory=list)
    n: int = 0

    @property
    def carrier(self) -> str:
        return carrier_of(self.number)

    async def shot(self, name: str) -> None:
        self.n += 1
        self.shots.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(
            path=str(self.shots / f"{self.n:02d}-{name}.png"), full_page=True
        )

    async def open(self, lang: str) -> None:
        endpoint = self.fed.layout.holder_web_endpoints[self.carrier]
        await self.page.goto(f"http://{endpoint}/?lang={lang}")
        await self.page.wait_for_selector("#number")

    async def submit(self, action: str, then: str) -> None:
        """Click the button of the form posting to ``action``; wait for ``then`` to appear."""
        await self.page.click(f'form[action$="/{action}"] button')
        await self.page.wait_for_selector(then)

    async def enter_number(self) -> None:
        await self.page.fill("#number", self.number[3:])  # as people type it, without +86
        await self.shot("number")
        await self.submit("number", "#name")

    def code(self) -> str:
        state = self.fed.layout.root / "state" / f"carrier-{self.carrier}"
        return sms_code(state, self.number)

    async def verify(self) -> None:
        holder = holder_of(self.number)
        await self.page.fill("#name", holder.name)
        await self.page.fill("#id_number", holder.id_number)
        await self.shot("name-and-id")
        await self.submit("code", "#code")
        await self.page.fill("#code", self.code())
        await self.shot("sms-code")
        await self.submit("confirm", "table.claim")

    async def text(self, selector: str) -> str:
        return str(await self.page.inner_text(selector))

    def active(self, platform: str, *, before_x: bool) -> int:
        x = WORLD.histories[self.number].tenure_start(now())
        store = self.fed.platforms[platform].store
        return sum(
            1
            for b in store.bindings_for([self.number])[self.number]
            if b.active and (b.bound_at < x) == before_x
        )


@pytest_asyncio.fixture(loop_scope="session")
async def holding(
    fed: Federation, browser: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Holding]:
    context = await browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = await context.new_page()
    name = request.node.name.replace("[", "-").rstrip("]").removeprefix("test_")
    h = Holding(fed, page, SCREENSHOTS / name, "")
    page.on("console", lambda m: h.console.append(m.text) if _problem(m) else None)
    page.on("pageerror", lambda e: h.console.append(str(e)))
    try:
        yield h
    finally:
        await context.close()
    # No CSP violation and no script error on any step.
    assert h.console == []


def _problem(message: Any) -> bool:
    """A console error other than a refusal the test asked for (a 4xx answer is one)."""
    status = "Failed to load resource: the server responded with a status of 4"
    return bool(message.type == "error" and not message.text.startswith(status))


async def verify_offline(fed: Federation, token: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        "verify",
        token,
        "--trust",
        str(fed.layout.trust_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


JOURNEYS = {"zh": WORLD.showcase["recycled_twice"], "en": plain_numbers("cmcc")[0]}
WORDS = {
    "zh": {"held": "将证明：您从", "released": "已解除", "clean": "干净"},
    "en": {"held": "will attest that you have held", "released": "Released", "clean": "Clean"},
}


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_the_whole_journey_clicked_through(holding: Holding, lang: str) -> None:
    h = holding
    h.number = JOURNEYS[lang]
    prior = prior_of(h.number)
    assert prior
    await h.open(lang)
    assert await h.page.get_attribute("html", "lang") == ("zh-CN" if lang == "zh" else "en")
    await h.enter_number()
    await h.verify()

    # Step 3: X, and the claim: number, carrier, X, purpose, validity, id; nothing about them.
    claim = await h.text("table.claim")
    holder = holder_of(h.number)
    assert h.number in claim and h.carrier in claim and "QUERY_PRIOR" in claim
    assert holder.name not in await h.text("main") and holder.id_number not in claim
    x_local = (
        WORLD.histories[h.number]
        .tenure_start(now())
        .astimezone(h.fed.carriers[h.carrier].adapter.time_zone)
    )
    assert f"{x_local:%Y-%m-%d %H:%M}" in await h.text(".lead")
    assert WORDS[lang]["held"] in await h.text(".lead")
    await h.shot("claim")

    # Step 4: every platform's answer; those with prior bindings are selected.
    await h.submit("query", "table.results")
    checked = await h.page.eval_on_selector_all(
        "input[name=platform]:checked", "els => els.map(e => e.value)"
    )
    assert sorted(checked) == sorted(prior)
    rows = await h.page.locator("table.results tbody tr").count()
    assert rows == len(h.fed.platforms)
    assert WORDS[lang]["clean"] in await h.text("table.results")
    await h.shot("query")

    # Steps 5 and 6: release, live progress until every platform has answered.
    await h.page.click("#release")
    await h.page.wait_for_selector("#progress")
    await h.shot("release")
    await h.page.wait_for_selector("#release-done", timeout=30_000)
    progress = await h.text("#progress")
    assert progress.count(WORDS[lang]["released"]) == len(prior)
    await h.shot("release-done")
    for p in prior:
        assert h.active(p, before_x=True) == 0, p  # previous holders' bindings released
    own_kept = {p: h.active(p, before_x=False) for p in h.fed.platforms}
    assert sum(own_kept.values()) > 0  # and the holder's own still there

    # Step 7: the receipt, and its proof verifies offline.
    await h.submit("receipt", "#proof")
    await h.shot("receipt")
    token = (await h.page.input_value("#proof")).strip()
    assert token.startswith("nfp1.")
    assert token in await h.text("#verify-command")  # printed whole
    said = await verify_offline(h.fed, token)
    assert "valid holder proof" in said and h.number in said


async def test_a_wrong_sms_code_is_refused(holding: Holding) -> None:
    h = holding
    h.number = plain_numbers("cucc")[1]
    await h.open("zh")
    await h.enter_number()
    holder = holder_of(h.number)
    await h.page.fill("#name", holder.name)
    await h.page.fill("#id_number", holder.id_number)
    await h.submit("code", "#code")
    wrong = "000000" if h.code() != "000000" else "111111"
    await h.page.fill("#code", wrong)
    await h.submit("confirm", "#error")
    assert await h.text("#error") == "验证码不对。还可以再试4次。"
    assert await h.page.evaluate("document.activeElement.id") == "error"  # read out first
    await h.shot("wrong-code")
    await h.page.fill("#code", h.code())  # the refusal changed nothing: the right code works
    await h.submit("confirm", "table.claim")


async def test_own_release_touches_only_the_selected_binding(holding: Holding) -> None:
    h = holding
    h.number = WORLD.showcase["ported"]
    await h.open("en")
    await h.enter_number()
    await h.verify()
    await h.submit("own", "table.results")
    await h.shot("own-bindings")
    before = {p: h.active(p, before_x=False) for p in h.fed.platforms}
    prior_before = {p: h.active(p, before_x=True) for p in h.fed.platforms}
    buttons = h.page.locator('form[action$="/own/release"]')
    assert await buttons.count() == sum(before.values()) == 3
    picked = await buttons.nth(0).locator("input[name=platform]").input_value()
    await buttons.nth(0).locator("button").click()
    await h.page.wait_for_selector("#release-done", timeout=30_000)
    await h.shot("own-released")
    after = {p: h.active(p, before_x=False) for p in h.fed.platforms}
    assert after == {**before, picked: before[picked] - 1}  # that one, and no other
    assert {p: h.active(p, before_x=True) for p in h.fed.platforms} == prior_before


async def test_number_marking_clears_marks_left_by_previous_holders(holding: Holding) -> None:
    h = holding
    h.number = WORLD.showcase["recycled_once"]
    await h.open("zh")
    await h.enter_number()
    await h.verify()
    await h.submit("labels", "#clear-marks")
    marks = await h.page.locator("table.results tbody tr").count()
    assert marks == prior_of(h.number)["labels"] == 2
    await h.shot("marks")
    await h.page.click("#clear-marks")
    await h.page.wait_for_selector("#release-done", timeout=30_000)
    assert h.active("labels", before_x=True) == 0
    assert h.active("labels", before_x=False) == 1  # the mark set since is kept
    assert h.active("weibo", before_x=True) == 1  # only the caller-ID service was asked


async def test_closing_the_page_signs_the_holder_out(holding: Holding) -> None:
    h = holding
    h.number = WORLD.showcase["fresh"]  # verified here, released nowhere
    await h.open("en")
    await h.enter_number()
    await h.verify()
    # The language can change at any step; the holder stays where they are.
    await h.page.click('form[action$="/lang"] button')
    await h.page.wait_for_selector('html[lang="zh-CN"]')
    assert await h.text("#step") == "平台会看到什么"
    web = h.fed.carriers[h.carrier].web
    assert web is not None
    before = len(web.page.store)
    await h.page.close(run_before_unload=True)  # the page's beacon: sign out now
    for _ in range(200):  # the beacon comes from the browser process; nothing to await
        if len(web.page.store) < before:
            break
        await asyncio.sleep(0.05)
    assert len(web.page.store) == before - 1
    page = await h.page.context.new_page()  # the same browser, a new page: signed out
    endpoint = h.fed.layout.holder_web_endpoints[h.carrier]
    await page.goto(f"http://{endpoint}/?lang=en")
    assert await page.locator("#number").count() == 1
    assert await page.locator("nav").count() == 0


async def test_accessibility_every_step(fed: Federation, browser: Any) -> None:
    """axe-core finds nothing at WCAG 2.1 A/AA on any step (the script is injected, so this
    context lets the CSP through), and every input has a label."""
    context = await browser.new_context(viewport=VIEWPORT, bypass_csp=True)
    page = await context.new_page()
    h = Holding(fed, page, SCREENSHOTS / "accessibility", plain_numbers("cucc")[0])
    failures: dict[str, Any] = {}

    async def audit(step: str) -> None:
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate(
            """async () => {
                const r = await axe.run(document, {runOnly: {type: 'tag',
                    values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
                return r.violations.map(v => ({id: v.id, nodes: v.nodes.map(n => n.target)}));
            }"""
        )
        unlabelled = await page.eval_on_selector_all(
            "input:not([type=hidden]), textarea, select",
            "els => els.filter(e => !(e.labels && e.labels.length)).map(e => e.outerHTML)",
        )
        if result or unlabelled:
            failures[step] = {"axe": result, "unlabelled": unlabelled}

    try:
        await h.open("zh")
        await audit("number")
        await h.enter_number()
        await audit("name-and-id")
        holder = holder_of(h.number)
        await page.fill("#name", holder.name)
        await page.fill("#id_number", holder.id_number)
        await h.submit("code", "#code")
        await audit("code")
        await page.fill("#code", "999999" if h.code() != "999999" else "888888")
        await h.submit("confirm", "#error")
        await audit("refusal")
        await page.fill("#code", h.code())
        await h.submit("confirm", "table.claim")
        await audit("claim")
        await h.submit("query", "table.results")
        await audit("query")
        await page.click("#release")
        await page.wait_for_selector("#release-done", timeout=30_000)
        await audit("release")
        await h.submit("receipt", "#proof")
        await audit("receipt")
        await h.submit("own", "#step")
        await audit("own")
        await h.submit("labels", "#step")
        await audit("labels")
    finally:
        await context.close()
    assert failures == {}, json.dumps(failures, ensure_ascii=False, indent=1)


async def tab_to(page: Any, selector: str, limit: int = 30) -> None:
    """Press Tab until ``selector`` has the focus (a keyboard user's way there)."""
    for _ in range(limit):
        if await page.evaluate("s => document.activeElement.matches(s)", selector):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"{selector} cannot be reached with Tab")


async def test_keyboard_only_path_through_the_flow(holding: Holding) -> None:
    h = holding
    h.number = plain_numbers("ctcc")[0]
    page = h.page
    await h.open("en")
    holder = holder_of(h.number)
    await tab_to(page, "#number")
    await page.keyboard.type(h.number[3:])
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#name")
    await tab_to(page, "#name")
    await page.keyboard.type(holder.name)
    await tab_to(page, "#id_number")
    await page.keyboard.type(holder.id_number)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#code")
    await tab_to(page, "#code")
    await page.keyboard.type(h.code())
    await page.keyboard.press("Enter")
    await page.wait_for_selector("table.claim")
    await tab_to(page, 'form[action$="/query"] button')
    await page.keyboard.press("Enter")
    await page.wait_for_selector("table.results")
    await tab_to(page, "#release")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#receipt-button", timeout=30_000)
    # The page moves the focus to the receipt when the release is done.
    await page.wait_for_function("document.activeElement.id === 'receipt-button'", timeout=5000)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#proof")
    for p in prior_of(h.number):
        assert h.active(p, before_x=True) == 0


async def test_a_platform_that_is_down_is_shown_as_such(holding: Holding) -> None:
    """Last in the module: it stops a platform."""
    h = holding
    h.number = WORLD.showcase["fresh"]
    await h.fed.platforms["toutiao"].stop(0)
    await h.open("en")
    await h.enter_number()
    await h.verify()
    await h.submit("query", "table.results")
    await h.shot("platform-down")
    answer = await h.text("#a-toutiao")
    assert answer == "Did not answer: we cannot tell whether anything is bound there"
    assert not await h.page.is_checked("#p-toutiao")  # may be picked, is not by default
    assert "did not answer may be down or busy" in await h.text("ul.explain")
    for p in h.fed.platforms:
        if p != "toutiao":  # the others answered: nothing of previous holders
            assert await h.text(f"#a-{p}") == "Clean: nothing bound before X"
