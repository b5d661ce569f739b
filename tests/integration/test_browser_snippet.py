"""The site snippet end to end in a real browser: a page in headless Chromium loads /t.js from the
daemon, shows the visitor's own number, the visitor dials it (SIPp), and the CRM's
receiver gets `call.ended` naming that visitor's client_id and utm_campaign. Also what
the snippet promises a site: the visit's UTM kept across pages, its own CSS class, `tel:`
links around or inside the marked element, and pings that keep the number while the
visitor reads."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import Receiver, Sipp, free_port, start_daemon
from .test_tracking_flow import DEFAULT, POOL, Env, call, check_signature, config

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SNIPPET = '<script src="{api}/t.js" data-key="pk_acme" async></script>'
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Acme sofas</title>
""" + SNIPPET + """</head>
<body><h1>Sofas</h1>
<p>Call us: <a class="calltrackd-phone" href="tel:+74990000010">+7 (499) 000-00-10</a></p>
<p class="other">Office: +7 (499) 555-55-55</p>
<a id="contacts" href="/contacts">Contacts</a>
</body></html>"""
CONTACTS = """<!doctype html>
<html><head><meta charset="utf-8"><title>Contacts</title>""" + SNIPPET + """</head>
<body><p class="calltrackd-phone">+7 (499) 000-00-10</p></body></html>"""
CUSTOM_CLASS = """<!doctype html>
<html><head><meta charset="utf-8"><title>Acme</title>
<script src="{api}/t.js" data-key="pk_acme" data-class="acme-tel" async></script></head>
<body><p id="ours" class="acme-tel">(499) 000-00-10</p>
<p id="trunk" class="acme-tel">8 (499) 000-00-10</p>
<p id="default-class" class="calltrackd-phone">+7 (499) 000-00-10</p></body></html>"""
NESTED = """<!doctype html>
<html><head><meta charset="utf-8"><title>Acme</title>""" + SNIPPET + """</head>
<body><a id="around" href="tel:+74990000010">
<span class="calltrackd-phone">+7 499 000 00 10</span></a>
<span id="inside" class="calltrackd-phone">Call
<a href="tel:+74990000010">+7 (499) 000-00-10</a></span>
<a id="unmarked" href="tel:+74990000010">+7 (499) 000-00-10</a></body></html>"""
PAGES = {"/sofas": PAGE, "/contacts": CONTACTS, "/custom": CUSTOM_CLASS, "/nested": NESTED}


def styled(number: str) -> str:
    """`number` (+7 and 10 digits) in the pages' format "+7 (499) 000-00-10"."""
    d = number[2:]
    return f"+7 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}"


class Site:
    """The client's website on its own origin (so the snippet's requests are cross-origin)."""

    def __init__(self, api: str, pages: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.api = api
        self.pages = pages or PAGES

    async def _page(self, request: web.Request) -> web.Response:
        page = self.pages[request.path].replace("{api}", self.api)
        resp = web.Response(text=page, content_type="text/html")
        resp.set_cookie("_ga", "GA1.2.111.222")
        resp.set_cookie("_ym_uid", "1690000000123")
        return resp

    def __enter__(self) -> Site:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            for path in self.pages:
                app.router.add_get(path, self._page)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_env(tmp_path: Path, receiver: Receiver, ttl: str = "6m") -> Env:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run the README's test command (scripts/test)")
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url).replace(
        'reservation_ttl = "6m"', f'reservation_ttl = "{ttl}"')
    return Env(tmp_path, start_daemon(tmp_path, cfg, sip, http), pbx, cfg)


@pytest.fixture
def browser_env(tmp_path: Path, receiver: Receiver) -> Iterator[Env]:
    env = start_env(tmp_path, receiver)
    yield env
    env.daemon.stop()


class SharedChromium:
    """One headless Chromium for a module's tests, launched when a test first asks for a
    tab (2-4 s on a loaded machine, the driver as long again) and closed with the module.
    Each tab gets a browser context of its own: cookies, storage and cache as empty as a
    browser just launched has them."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._browser: Any = None

    def browser(self) -> Any:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            pw = self._stack.enter_context(sync_playwright())
            self._browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                               headless=True)
            self._stack.callback(self._browser.close)
        return self._browser

    def close(self) -> None:
        self._browser = None
        self._stack.close()


_shared: list[SharedChromium] = []  # the current module's, while `shared_chromium` holds it


@pytest.fixture(scope="module", autouse=True)
def shared_chromium() -> Iterator[None]:
    """The module's `browser_page` tabs share one Chromium. Module-wide, not session-wide:
    the sync driver must not outlive the module into tests that run asyncio loops."""
    shared = SharedChromium()
    _shared.append(shared)
    try:
        yield
    finally:
        _shared.remove(shared)
        shared.close()


@contextmanager
def browser_page(api: str, pages: dict[str, str] | None = None) -> Iterator[tuple[Any, str]]:
    """A fresh headless Chromium tab (a new browser context: nothing from earlier tabs) and
    the site's origin (its pages load /t.js from `api`; `pages`: path → HTML instead of
    this module's pages). Chromium is the module's (`shared_chromium`, which a module
    using this imports), or one of the tab's own."""
    with Site(api, pages) as site, ExitStack() as own:
        if _shared:
            browser = _shared[-1].browser()
        else:
            shared = SharedChromium()
            own.callback(shared.close)
            browser = shared.browser()
        context = browser.new_context()
        try:
            yield context.new_page(), f"http://127.0.0.1:{site.port}"
        finally:
            context.close()


def shown_number(page: Any) -> str:
    page.wait_for_function("window.calltrackd && window.calltrackd.number", timeout=15000)
    return str(page.evaluate("window.calltrackd.number"))


def test_page_shows_visitor_number_and_the_call_reaches_the_crm(
    browser_env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    env = browser_env
    with browser_page(env.daemon.base) as (page, site):
        page.goto(f"{site}/sofas?utm_source=google&utm_medium=cpc"
                  "&utm_campaign=spring&utm_term=buy+sofa", timeout=20000)
        shown_number(page)
        state = page.evaluate("({...window.calltrackd, ready: undefined})")
        link = page.locator("a.calltrackd-phone")
        shown = link.inner_text()
        href = link.get_attribute("href")
        other = page.locator("p.other").inner_text()
        stored = page.evaluate("sessionStorage.getItem('calltrackd.sid')")
        page.screenshot(path=str(env.tmp / "page.png"))
    assert state["kind"] == "dynamic" and state["number"] in POOL
    number = state["number"]
    # the page's own format "+7 (499) 000-00-10", with the reserved number's digits
    assert shown == styled(number), shown
    assert href == f"tel:{number}"
    assert other == "Office: +7 (499) 555-55-55"  # elements without the class are untouched
    assert stored == state["sessionId"]
    assert number != DEFAULT
    # the visitor dials the number shown
    call(env, sipp_factory, number, 1000)
    ended = receiver.wait_event("call.ended", number)
    check_signature(ended)
    session = ended["json"]["call"]["attribution"]["session"]
    assert ended["json"]["call"]["attribution"]["kind"] == "dynamic"
    assert session["id"] == state["sessionId"]
    assert session["client_id"] == "GA1.2.111.222"
    assert session["ym_uid"] == "1690000000123"
    assert (session["utm_source"], session["utm_medium"], session["utm_campaign"],
            session["utm_term"]) == ("google", "cpc", "spring", "buy sofa")
    assert session["landing_page"].startswith(f"{site}/sofas?")


def test_api_failure_leaves_the_page_untouched(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with browser_page(dead) as (page, site):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{site}/sofas", timeout=20000)
        page.wait_for_timeout(1500)
        shown = page.locator("a.calltrackd-phone").inner_text()
    assert shown == "+7 (499) 000-00-10"
    assert errors == []


def test_utm_and_referrer_of_the_landing_page_stay_with_the_visit(
    browser_env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    env = browser_env
    with browser_page(env.daemon.base) as (page, site):
        page.goto(f"{site}/sofas?utm_source=google&utm_medium=cpc&utm_campaign=spring",
                  referer="https://www.google.com/", timeout=20000)
        number = shown_number(page)
        first = page.evaluate("window.calltrackd.sessionId")
        with page.expect_request(lambda r: r.url.endswith("/v1/sessions")) as asked:
            page.click("#contacts")  # the next page's address has no UTM parameters
        page.wait_for_url(f"{site}/contacts")
        assert shown_number(page) == number
        second = page.evaluate("window.calltrackd.sessionId")
        contacts = page.locator("p.calltrackd-phone").inner_text()
        sent = json.loads(asked.value.post_data or "{}")
    assert second == first and sent["session_id"] == first  # the same session, renewed
    assert (sent["utm_source"], sent["utm_medium"], sent["utm_campaign"]) == (
        "google", "cpc", "spring")
    assert sent["referrer"] == "https://www.google.com/"  # where the visit came from
    assert sent["landing_page"].startswith(f"{site}/sofas?")
    assert contacts == styled(number)
    call(env, sipp_factory, number, 300)
    session = env.daemon.wait_call(lambda c: c["did"] == number)["attribution"]["session"]
    assert session["id"] == first
    assert (session["utm_source"], session["utm_campaign"]) == ("google", "spring")
    assert session["referrer"] == "https://www.google.com/"


def test_a_site_may_mark_its_phone_numbers_with_its_own_class(browser_env: Env) -> None:
    with browser_page(browser_env.daemon.base) as (page, site):
        page.goto(f"{site}/custom", timeout=20000)
        number = shown_number(page)
        ours = page.locator("#ours").inner_text()
        other = page.locator("#default-class").inner_text()
    d = number[2:]
    assert ours == f"({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}"  # national style, as the page had
    assert other == "+7 (499) 000-00-10"  # the default class means nothing on this site


def test_a_number_written_with_the_national_8_keeps_it(browser_env: Env) -> None:
    with browser_page(browser_env.daemon.base) as (page, site):
        page.goto(f"{site}/custom", timeout=20000)
        number = shown_number(page)
        trunk = page.locator("#trunk").inner_text()
    d = number[2:]
    assert trunk == f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}"  # not "7 (499) ..."


def test_tel_links_around_and_inside_the_marked_element_call_the_visitor_number(
    browser_env: Env
) -> None:
    with browser_page(browser_env.daemon.base) as (page, site):
        page.goto(f"{site}/nested", timeout=20000)
        number = shown_number(page)
        around = (page.locator("#around").get_attribute("href"),
                  page.locator("#around span").inner_text())
        inside = (page.locator("#inside a").get_attribute("href"),
                  page.locator("#inside").inner_text())
        unmarked = page.locator("#unmarked").get_attribute("href")
    d = number[2:]
    assert around == (f"tel:{number}", f"+7 {d[:3]} {d[3:6]} {d[6:8]} {d[8:]}")
    assert inside == (f"tel:{number}", f"Call {styled(number)}")
    assert unmarked == "tel:+74990000010"  # a link outside any marked element is the site's


def test_the_snippet_pings_while_the_page_is_open_and_the_number_stays_reserved(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = start_env(tmp_path, receiver, ttl="3s")  # a ping about every second
    try:
        with browser_page(env.daemon.base) as (page, site):
            pings: list[int] = []
            page.on("response", lambda r: pings.append(r.status)
                    if r.url.endswith("/ping") and r.request.method == "POST" else None)
            page.goto(f"{site}/sofas", timeout=20000)
            number = shown_number(page)
            # four pings, a second apart: well past the first reservation's end
            deadline = time.monotonic() + 60
            while len(pings) < 4 and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            held = page.evaluate("window.calltrackd.number")
            status, stats = env.daemon.http("GET", "/v1/stats?tracker=acme")
        assert len(pings) >= 4 and set(pings) == {200}, pings
        assert held == number
        assert status == 200
        (pool,) = stats["trackers"][0]["pools"]
        assert pool["reserved"] == 1  # renewed by the pings, not lapsed after 3 s
    finally:
        env.daemon.stop()
