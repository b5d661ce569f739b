"""Traffic sources and visits end to end: the daemon as a process names each visit's
source as the analytics tools do, a pool for "organic" serves Google's visitors, and a call
(SIPp carrier → daemon → SIPp PBX) to each number carries the visit in its CDR. In
Chromium: the product viewed last is in the call's custom data, and a visitor who comes
back after their reservation ended gets their number again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Receiver, Sipp, by_did, free_port, start_daemon
from .test_browser_snippet import (  # noqa: F401 - the module's Chromium, shared
    SNIPPET,
    browser_page,
    shared_chromium,
    shown_number,
    start_env,
)
from .test_tracking_flow import POOL, Env, config

SEO = ["+74990000021", "+74990000022"]
WEB = [*POOL, "+74990000014", "+74990000015", "+74990000016"]
SITE = "https://acme.example"


def sources_config(sip: int, http: int, pbx: int, hook: str, store: str) -> str:
    text = config(sip, http, pbx, hook, store)
    web = '  [[trackers.pools]]\n  name = "web"'
    assert web in text and json.dumps(POOL) in text
    text = text.replace(json.dumps(POOL), json.dumps(WEB))
    return text.replace(web, f'''  [[trackers.pools]]
  name = "seo"
  sources = ["organic"]
  numbers = {json.dumps(SEO)}
{web}''')


@pytest.fixture
def env(tmp_path: Path, receiver: Receiver, store_url: str) -> Iterator[Env]:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = sources_config(sip, http, pbx, receiver.url, store_url)
    e = Env(tmp_path, start_daemon(tmp_path, cfg, sip, http), pbx, cfg)
    yield e
    e.daemon.stop()


VISITS: list[tuple[str, dict[str, Any], tuple[str, str, str]]] = [
    ("google organic", {"landing_page": f"{SITE}/sofas", "referrer": "https://www.google.com/"},
     ("google", "organic", "organic")),
    ("yandex ad", {"landing_page": f"{SITE}/sofas?yclid=7342516823479123967",
                   "referrer": "https://yandex.ru/"}, ("yandex", "cpc", "paid")),
    ("vk post", {"landing_page": f"{SITE}/sale", "referrer": "https://vk.com/wall-123_456"},
     ("vk.com", "social", "social")),
    ("forum", {"landing_page": f"{SITE}/sofas/42",
               "referrer": "https://forum.example.org/threads/which-sofa.1234/"},
     ("forum.example.org", "referral", "referral")),
    ("email", {"landing_page": f"{SITE}/sale?utm_source=newsletter&utm_medium=email"
                               "&utm_campaign=march", "referrer": "https://e.mail.ru/"},
     ("newsletter", "email", "email")),
    ("typed", {"landing_page": f"{SITE}/"}, ("(direct)", "(none)", "direct")),
]


def call(env: Env, sipp_factory: Callable[..., Sipp], did: str, ms: int = 300) -> None:
    """One answered call to `did`. An INVITE the daemon sheds while the machine is busy
    (e.g. while Chromium starts) is placed again, as a carrier would (`Sipp.wait`)."""
    tag = f"{did[1:]}_{time.monotonic_ns()}"
    pbx = sipp_factory(f"pbx_{tag}", "uas_answer.xml", env.pbx, "-m", "1", "-timeout", "60s")
    res = sipp_factory(f"carrier_{tag}", "uac_call.xml", free_port(), "-s", did, "-m", "1",
                       "-d", str(ms), "-timeout", "30s", "-timeout_error",
                       remote=f"127.0.0.1:{env.daemon.sip_port}").wait(40)
    assert res.ok, res.output
    assert pbx.wait(20).ok


def visit(daemon: Daemon, n: int, fields: dict[str, Any]) -> dict[str, Any]:
    status, answer = daemon.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "visitor_id": f"v_visitor{n:04d}", **fields}, admin=False)
    assert status == 200, answer
    return dict(answer)


def test_each_visit_gets_its_source_and_a_call_to_its_number_carries_it(
    env: Env, sipp_factory: Callable[..., Sipp]
) -> None:
    answers = [visit(env.daemon, n, fields) for n, (_, fields, _) in enumerate(VISITS)]
    assert all(a["kind"] == "dynamic" for a in answers), answers
    assert answers[0]["number"] == SEO[0]  # the "organic" pool serves Google's visitor
    assert all(a["number"] in WEB for a in answers[1:])
    for (name, _, (source, medium, channel)), answer in zip(VISITS, answers, strict=True):
        call(env, sipp_factory, answer["number"], 300)
        cdr = env.daemon.wait_call(by_did(answer["number"]))
        att = cdr["attribution"]
        assert att["kind"] == "dynamic", (name, att)
        assert (att["source"], att["medium"], att["channel"]) == (source, medium, channel), name
        session = att["session"]
        assert session["id"] == answer["session_id"]
        assert (session["source"], session["medium"], session["channel"]) == (
            source, medium, channel), name
    email = env.daemon.wait_call(lambda c: c["did"] == answers[4]["number"])
    assert email["attribution"]["session"]["utm_campaign"] == "march"  # read from the address


def test_a_new_click_in_the_same_tab_starts_a_new_visit(env: Env) -> None:
    first = visit(env.daemon, 1, {"landing_page": f"{SITE}/", "referrer": "https://vk.com/"})
    again = visit(env.daemon, 1, {"session_id": first["session_id"],
                                  "landing_page": f"{SITE}/contacts",
                                  "referrer": f"{SITE}/"})  # internal: the same visit
    assert again["session_id"] == first["session_id"]
    ad = visit(env.daemon, 1, {"session_id": first["session_id"],
                               "landing_page": f"{SITE}/?gclid=EAIaIQob"})
    assert ad["session_id"] != first["session_id"]
    assert ad["number"] == first["number"]  # the same pool: the visitor keeps the number


# --- in the browser ---------------------------------------------------------------------

PRODUCT = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sofa {id}</title>
<script>window.calltrackdCustom = {{product_id: "{id}"}};</script>
""" + SNIPPET + """</head>
<body><h1>Sofa {id}</h1>
<p>Call us: <a class="calltrackd-phone" href="tel:+74990000010">+7 (499) 000-00-10</a></p>
<a id="next" href="/product/{next}">Another sofa</a></body></html>"""
PAGES = {f"/product/{i}": PRODUCT.replace("{{", "{").replace("}}", "}")
         .replace("{id}", str(i)).replace("{next}", str(i + 1)) for i in (1, 2, 3)}


def sessions_request(r: Any) -> bool:
    return bool(r.url.endswith("/v1/sessions") and r.method == "POST")


def test_the_call_carries_the_product_viewed_last(
    tmp_path: Path, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    env = start_env(tmp_path, receiver)
    try:
        with browser_page(env.daemon.base, PAGES) as (page, site):
            page.goto(f"{site}/product/1", referer="https://www.google.com/", timeout=20000)
            number = shown_number(page)
            with page.expect_request(sessions_request) as asked:
                page.click("#next")
            page.wait_for_url(f"{site}/product/2")
            assert shown_number(page) == number
            sent = json.loads(asked.value.post_data or "{}")
            assert sent["custom"] == {"product_id": "2"} and sent["visitor_id"]
            call(env, sipp_factory, number, 300)
            cdr = env.daemon.wait_call(lambda c: c["did"] == number)
            # a single-page shop changes the product in place: the snippet sends it
            with page.expect_request(lambda r: r.url.endswith("/ping"), timeout=15000) as ping:
                page.evaluate("window.calltrackdCustom = {product_id: '3', color: 'grey'}")
            assert json.loads(ping.value.post_data or "{}")["custom"]["product_id"] == "3"
            ping.value.response()
        call(env, sipp_factory, number, 300)
        later = env.daemon.wait_call(lambda c: c["did"] == number and c["id"] != cdr["id"])
    finally:
        env.daemon.stop()
    att = cdr["attribution"]
    assert att["kind"] == "dynamic" and att["session"]["custom"] == {"product_id": "2"}
    assert (att["source"], att["medium"], att["channel"]) == ("google", "organic", "organic")
    assert later["attribution"]["session"]["custom"] == {"product_id": "3", "color": "grey"}


def test_a_returning_visitor_gets_their_number_back_when_it_is_free(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = start_env(tmp_path, receiver, ttl="2s")  # the visit ends 2 s after the tab closes
    try:
        with browser_page(env.daemon.base, PAGES) as (page, site):
            page.goto(f"{site}/product/1", timeout=20000)
            first = shown_number(page)
            first_session = page.evaluate("window.calltrackd.sessionId")
            visitor = page.evaluate("window.calltrackd.visitorId")
            saved = page.context.storage_state()  # cookies and localStorage, as a browser keeps
            browser = page.context.browser
            page.close()
            wait_reserved(env.daemon, 0)  # "the next day": the reservation ended
            status, stranger = env.daemon.http("POST", "/v1/sessions", {"tracker": "pk_acme"},
                                               admin=False)
            assert status == 200 and stranger["kind"] == "dynamic"
            assert stranger["number"] != first  # others get the number idle longest
            # the browser opened again: no session id in the tab, the same visitor id
            back = browser.new_context(storage_state=saved).new_page()
            back.goto(f"{site}/product/2", timeout=20000)
            again = shown_number(back)
            state = back.evaluate("({...window.calltrackd, ready: undefined})")
            back.context.close()  # the browser is the module's: leave nothing open in it
    finally:
        env.daemon.stop()
    assert again == first
    assert state["visitorId"] == visitor and state["sessionId"] != first_session


def wait_reserved(daemon: Daemon, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pools: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, stats = daemon.http("GET", "/v1/stats?tracker=acme")
        assert status == 200, stats
        pools = stats["trackers"][0]["pools"]
        if sum(p["reserved"] for p in pools) == count:
            return
        time.sleep(0.2)
    raise AssertionError(f"still reserved: {pools}")


def test_a_ping_may_carry_the_pages_custom_data_and_bad_bodies_get_400(env: Env) -> None:
    a = visit(env.daemon, 7, {"landing_page": f"{SITE}/", "custom": {"product_id": "1"}})
    path = f"/v1/sessions/{a['session_id']}/ping"
    status, b = env.daemon.http("POST", path, {"custom": {"product_id": "2"}}, admin=False)
    assert status == 200 and b["number"] == a["number"]
    for bad, field in [({"custom": [1]}, "custom"), ({"custom": {"a": {"b": 1}}}, "custom")]:
        status, err = env.daemon.http("POST", path, bad, admin=False)
        assert status == 400 and err["error"]["message"].startswith(field), err
    status, err = env.daemon.http("POST", path, None, admin=False,
                                  headers={"Content-Type": "application/json"})
    assert status == 200  # no body: a plain ping
    status, err = env.daemon.http("POST", "/v1/sessions", {"tracker": "pk_acme",
                                  "visitor_id": ["x"]}, admin=False)
    assert status == 400 and err["error"]["message"].startswith("visitor_id:"), err
    status, b = env.daemon.http("POST", "/v1/sessions", {"tracker": "pk_acme",
                                "landing_page": "http://[::1/broken", "referrer": "::::"},
                                admin=False)
    assert status == 200 and b["kind"] == "dynamic"  # what cannot be read counts as direct
