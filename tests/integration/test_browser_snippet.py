"""SPEC §1 end to end in a real browser: a page in headless Chromium loads /t.js from the
daemon, shows the visitor's own number, the visitor dials it (SIPp), and the CRM's
receiver gets `call.ended` naming that visitor's client_id and utm_campaign."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from .conftest import Receiver, Sipp, free_port, start_daemon
from .test_tracking_flow import DEFAULT, POOL, Env, call, check_signature, config

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Acme sofas</title>
<script src="{api}/t.js" data-key="pk_acme" async></script></head>
<body><h1>Sofas</h1>
<p>Call us: <a class="calltrackd-phone" href="tel:+74990000010">+7 (499) 000-00-10</a></p>
<p class="other">Office: +7 (499) 555-55-55</p>
</body></html>"""


class Site:
    """The client's website on its own origin (so the snippet's requests are cross-origin)."""

    def __init__(self, api: str) -> None:
        self.port = free_port()
        self.api = api

    async def _page(self, request: web.Request) -> web.Response:
        resp = web.Response(text=PAGE.format(api=self.api), content_type="text/html")
        resp.set_cookie("_ga", "GA1.2.111.222")
        resp.set_cookie("_ym_uid", "1690000000123")
        return resp

    def __enter__(self) -> Site:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/sofas", self._page)
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


@pytest.fixture
def browser_env(tmp_path: Path, receiver: Receiver) -> Iterator[Env]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run the README's test command (scripts/test)")
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url)
    daemon = start_daemon(tmp_path, cfg, sip, http)
    env = Env(tmp_path, daemon, pbx, cfg)
    yield env
    env.daemon.stop()


def test_page_shows_visitor_number_and_the_call_reaches_the_crm(
    browser_env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    from playwright.sync_api import sync_playwright

    env = browser_env
    with Site(env.daemon.base) as site, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{site.port}/sofas?utm_source=google&utm_medium=cpc"
                      "&utm_campaign=spring&utm_term=buy+sofa", timeout=20000)
            page.wait_for_function("window.calltrackd && window.calltrackd.number", timeout=15000)
            state = page.evaluate("({...window.calltrackd, ready: undefined})")
            link = page.locator("a.calltrackd-phone")
            shown = link.inner_text()
            href = link.get_attribute("href")
            other = page.locator("p.other").inner_text()
            stored = page.evaluate("sessionStorage.getItem('calltrackd.sid')")
            page.screenshot(path=str(env.tmp / "page.png"))
        finally:
            browser.close()
    assert state["kind"] == "dynamic" and state["number"] in POOL
    number = state["number"]
    digits = number[2:]
    # the page's own format "+7 (499) 000-00-10", with the reserved number's digits
    assert shown == f"+7 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}", shown
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
    assert session["landing_page"].startswith(f"http://127.0.0.1:{site.port}/sofas?")


def test_api_failure_leaves_the_page_untouched(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Site(dead) as site, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{site.port}/sofas", timeout=20000)
            page.wait_for_timeout(1500)
            shown = page.locator("a.calltrackd-phone").inner_text()
        finally:
            browser.close()
    assert shown == "+7 (499) 000-00-10"
    assert errors == []
