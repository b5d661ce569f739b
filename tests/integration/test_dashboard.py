"""The dashboard as a marketer and a department head use it: headless Chromium (Playwright,
Debian's chromium) signs in to /ui/ after a handful of real calls through the daemon
(SIPp as carrier and PBX), opens every page and finds the figures the API reports; a
channel drills down to its campaigns; a tag edited on a call shows in the API. A viewer
token of one tracker sees nothing of the other, in the pages and in the API. No request
leaves the daemon's origin and the console stays clean. Screenshots of every page go to
the test's directory (and to $CALLTRACKD_SCREENSHOTS when set)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .conftest import (
    ADMIN,
    Daemon,
    by_did,
    daemon_toml,
    free_port,
    pbx_uri,
    sipp_processes,
    start_daemon,
    tracker,
)
from .test_browser_snippet import CHROMIUM, SharedChromium

ACME_VIEWER = "viewer-acme-0123456789"
BETA_VIEWER = "viewer-beta-0123456789"
POOL = ["+74990000011", "+74990000012", "+74990000013", "+74990000014"]
BILLBOARD = "+74990000100"
RADIO = "+74990000200"
MOSCOW = ZoneInfo("Europe/Moscow")
# two carriers on loopback: the calls placed from 127.0.0.2 come in by "beeline"
CARRIERS = [{"name": "mts", "addresses": ["127.0.0.1/32"], "default_country": "RU"},
            {"name": "beeline", "addresses": ["127.0.0.2/32"], "default_country": "RU"}]
BEELINE = "127.0.0.2"


def local(iso: str) -> str:
    """A time as the page shows it: en-GB in the acme tracker's zone."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(MOSCOW).strftime(
        "%d %b %Y, %H:%M:%S")


def config(sip: int, http: int, pbx: int) -> str:
    return daemon_toml(
        sip, http,
        tracker("acme", "+74990000010", pbx_uri(pbx), target_call_min_seconds=1,
                timezone="Europe/Moscow", viewer_tokens=[ACME_VIEWER],
                pools=[{"name": "web", "sources": ["*"], "numbers": POOL}],
                static=[{"number": BILLBOARD, "channel": "billboard"}]),
        tracker("beta", "+74990000020", pbx_uri(pbx), viewer_tokens=[BETA_VIEWER],
                static=[{"number": RADIO, "channel": "radio"}]),
        carriers=CARRIERS, sip={"shutdown_grace": "5s"}, http={"session_rate_limit": 0})


VISITS = [  # (utm_source, utm_medium, utm_campaign, utm_term)
    ("google", "cpc", "spring", "buy sofa"),
    ("google", "cpc", "spring", "sofa price"),
    ("yandex", "cpc", "autumn", "corner sofa"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A daemon with two trackers and six finished calls: three visitors of acme (two
    campaigns), acme's billboard twice, beta's radio once; acme's yandex visitor and its
    second billboard call come in by carrier beeline, the others by mts. One for the
    module: the tests read it, and the one edit (a call's tags, by the first) changes
    nothing the others see."""
    tmp_path = tmp_path_factory.mktemp("site")
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, pbx), sip, http)
    try:
        with sipp_processes(tmp_path) as sipp_factory:
            uas = sipp_factory("pbx", "uas_answer.xml", pbx, "-m", "6", "-timeout", "120s")
            dids = []
            for src, medium, campaign, term in VISITS:
                status, s = daemon.http("POST", "/v1/sessions", {
                    "tracker": "pk_acme", "utm_source": src, "utm_medium": medium,
                    "utm_campaign": campaign, "utm_term": term,
                    "landing_page": f"https://acme.example/sofas?utm_campaign={campaign}"},
                    admin=False)
                assert status == 200 and s["kind"] == "dynamic", s
                dids.append(s["number"])
            dids += [BILLBOARD, BILLBOARD, RADIO]
            carriers = [sipp_factory(f"carrier{n}", "uac_call.xml", free_port(), "-s", did,
                                     "-m", "1", "-d", "1200", "-timeout", "30s",
                                     "-timeout_error", *(["-i", BEELINE] if n in (2, 4) else []),
                                     remote=f"127.0.0.1:{sip}")
                        for n, did in enumerate(dids)]
            for carrier in carriers:  # the six calls at once
                res = carrier.wait(40)
                assert res.ok, res.output
            assert uas.wait(30).ok
            for did in dids:
                daemon.wait_call(by_did(did), timeout=20)
        yield {"daemon": daemon, "tmp": tmp_path}
    finally:
        daemon.stop()


class Browser:
    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.console: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:"))
                else self.foreign.append(r.url))

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.base}/ui/", timeout=20000)
        self.page.fill("#token", token)
        self.page.click("#signin button[type=submit]")
        self.wait_page("overview")

    def wait_page(self, name: str) -> None:
        # a selector, not a JavaScript predicate: the page's CSP forbids eval
        self.page.wait_for_selector(f'body[data-loading="0"][data-page="{name}"]',
                                    state="attached", timeout=20000)

    def unmark(self) -> None:
        """Forget which page is shown: the next wait_page waits for the next rendering."""
        self.page.evaluate("document.body.setAttribute('data-page', '')")

    def open(self, name: str) -> None:
        self.unmark()
        self.page.evaluate(f"location.hash = '#/{name}'")
        self.wait_page(name.split("?")[0])

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def tile(self, name: str) -> str:
        return str(self.page.inner_text(f'[data-tile="{name}"] .value'))


@pytest.fixture(scope="module")
def chromium() -> Iterator[SharedChromium]:
    """One Chromium for the module's tests (launched by the first that asks for a tab)."""
    shared = SharedChromium()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def browser(site: dict[str, Any], chromium: SharedChromium) -> Iterator[Callable[[], Browser]]:
    """Tabs on the module's Chromium, each in a browser context of its own (no cookies or
    storage from an earlier test's tabs), closed with the test."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run the README's test command (scripts/test)")
    daemon: Daemon = site["daemon"]
    shots_dir = site["tmp"] / "screenshots"
    shots_dir.mkdir(exist_ok=True)
    contexts: list[Any] = []

    def new() -> Browser:
        context = chromium.browser().new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        return Browser(context.new_page(), daemon.base, shots_dir)

    try:
        yield new
    finally:
        for context in contexts:
            context.close()
    copy_shots(shots_dir)


def copy_shots(shots_dir: Path) -> None:
    """The screenshots to $CALLTRACKD_SCREENSHOTS when set (how docs/img is made)."""
    copy_to = os.environ.get("CALLTRACKD_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for path in shots_dir.glob("*.png"):
            shutil.copy(path, Path(copy_to) / path.name)


def test_every_page_shows_what_the_api_reports(site: dict[str, Any],
                                               browser: Callable[[], Browser]) -> None:
    daemon: Daemon = site["daemon"]
    b = browser()
    b.sign_in(ADMIN)
    b.page.select_option("#period", "30")
    b.wait_page("overview")
    status, report = daemon.http("GET", "/v1/reports?tracker=acme&group_by=channel")
    assert status == 200, report
    calls = sum(r["calls"] for r in report["rows"])
    assert calls == 5  # three visitors and the billboard twice
    assert b.tile("calls") == "5"
    assert b.tile("answered") == "5"
    assert b.tile("missed") == "0"
    assert b.page.locator("#chart-channels").count() == 1
    # the days are the zone's the report counted them in, and the chart says which
    status, by_day = daemon.http("GET", "/v1/reports?tracker=acme&group_by=day")
    assert status == 200, by_day
    assert by_day["timezone"] == "Europe/Moscow"
    assert "(days in Europe/Moscow)" in b.page.inner_text("#page")
    moscow_days = {datetime.fromisoformat(c["started_at"].replace("Z", "+00:00"))
                   .astimezone(MOSCOW).date().isoformat() for c in daemon.calls(tracker="acme")}
    assert {r["key"]["day"] for r in by_day["rows"]} == moscow_days  # the calls' local days
    b.shot("overview")
    # "Today" is the tracker's day: from Moscow's midnight
    midnight = datetime.now(MOSCOW).replace(hour=0, minute=0, second=0, microsecond=0)
    status, today = daemon.http("GET", "/v1/reports?tracker=acme&group_by=channel&since="
                                + midnight.isoformat().replace("+", "%2B"))
    assert status == 200, today
    b.unmark()
    b.page.select_option("#period", "1")
    b.wait_page("overview")
    assert b.tile("calls") == str(sum(r["calls"] for r in today["rows"]))
    b.unmark()
    b.page.select_option("#period", "30")
    b.wait_page("overview")

    # Sources: channel -> source -> campaign -> keyword
    b.open("sources")
    rows = {r["key"]["channel"] or "(none)": r for r in report["rows"]}
    shown = b.page.locator("#report tbody tr")
    assert shown.count() == len(rows)
    b.shot("sources")
    first_paid = next(k for k, r in rows.items() if k != "billboard")
    b.unmark()  # wait for the drilled-down page, not the one shown
    b.page.click(f'#report a[data-drill="{first_paid}"]')
    b.wait_page("sources")
    status, by_source = daemon.http(
        "GET", f"/v1/reports?tracker=acme&group_by=source&channel={first_paid}")
    assert status == 200, by_source
    sources = sorted(str(r["key"]["source"]) for r in by_source["rows"])
    assert sorted(b.page.locator("#report tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)")) == sources
    b.unmark()  # wait for the drilled-down page, not the one shown
    b.page.click('#report a[data-drill="google"]')
    b.wait_page("sources")
    campaigns = b.page.locator("#report tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.key, r.children[3].textContent])")
    assert campaigns == [["spring", "2"]], campaigns  # google's two calls, one campaign
    b.shot("sources-google")

    # Calls: the list is the API's, and a call's tags are editable
    b.open("calls")
    api_calls = daemon.calls(tracker="acme")
    ids = b.page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.call)")
    assert ids == [c["id"] for c in api_calls]
    # times in the tracker's zone, named in the column
    assert "Started (Europe/Moscow)" in b.page.inner_text("#calls thead")
    first = b.page.locator("#calls tbody tr").first.locator("td").first.inner_text()
    assert first == local(api_calls[0]["started_at"]), first
    # none of these calls was recorded (direct media): each row says so, and no player
    # (tests/integration/test_dashboard_recording.py plays a recorded one)
    assert set(b.page.locator("#calls tbody td.rec").all_inner_texts()) == {"not recorded"}
    assert b.page.locator("#calls audio").count() == 0
    b.shot("calls")

    # filters are the API's: a channel shows that channel's calls only, as /v1/calls does
    b.page.fill("#f-channel", "billboard")
    b.unmark()
    b.page.click("#f-apply")
    b.wait_page("calls")
    assert b.page.input_value("#f-channel") == "billboard"
    billboard = daemon.calls(tracker="acme", channel="billboard")
    assert len(billboard) == 2 and {c["did"] for c in billboard} == {BILLBOARD}
    ids = b.page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.call)")
    assert ids == [c["id"] for c in billboard]
    assert set(b.page.locator("#calls tbody tr td:nth-child(8)").all_inner_texts()) == {
        "billboard"}
    b.shot("calls-billboard")

    # the carrier each call came in by, and a carrier chosen narrows the list through
    # the API's own filter (?carrier=)
    b.open("calls")
    assert "Carrier" in b.page.inner_text("#calls thead")
    shown = dict(b.page.locator("#calls tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.call, r.querySelector('td[data-carrier]').textContent])"))
    assert shown == {c["id"]: c["carrier"] for c in api_calls}
    assert sorted(shown.values()) == ["beeline", "beeline", "mts", "mts", "mts"]
    options = b.page.locator("#f-carrier option").evaluate_all("o => o.map(x => x.value)")
    assert options == ["", "mts", "beeline"]  # any, then the configured carriers
    beeline = daemon.calls(tracker="acme", carrier="beeline")
    assert len(beeline) == 2 and {c["carrier"] for c in beeline} == {"beeline"}
    b.unmark()
    with b.page.expect_request(lambda r: "/v1/calls?" in r.url
                               and "carrier=beeline" in r.url) as asked:
        b.page.select_option("#f-carrier", "beeline")
    b.wait_page("calls")
    assert "tracker=acme" in asked.value.url
    ids = b.page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.call)")
    assert ids == [c["id"] for c in beeline]
    assert set(b.page.locator("#calls td[data-carrier]").all_inner_texts()) == {"beeline"}
    assert b.page.input_value("#f-carrier") == "beeline"
    b.shot("calls-carrier")
    b.page.click(f'#calls tr[data-call="{beeline[0]["id"]}"]')
    b.wait_page(f"calls/{beeline[0]['id']}")
    assert b.page.inner_text('[data-field="Carrier"]') == "beeline"
    # a record from before calls had a carrier (`carrier: null`, as old records are
    # answered) shows a dash, not "null"
    def no_carrier(route: Any) -> None:
        answer = route.fetch()
        data = answer.json()
        data["calls"][0]["carrier"] = None
        route.fulfill(status=answer.status, json=data)

    b.page.route("**/v1/calls?*", no_carrier, times=1)
    b.open("calls?outcome=answered")  # all of them (and a hash the next open() changes)
    b.page.unroute("**/v1/calls?*")
    cells = b.page.locator("#calls td[data-carrier]").all_inner_texts()
    assert cells[0] == "—" and cells[1:] == [c["carrier"] for c in api_calls[1:]], cells
    paid = daemon.calls(tracker="acme", channel="paid")
    assert len(paid) == 3 and BILLBOARD not in {c["did"] for c in paid}
    assert [c["id"] for c in daemon.calls(tracker="acme", source="yandex")] == [
        c["id"] for c in paid if c["attribution"]["session"]["utm_source"] == "yandex"]
    pages, cursor = [], ""
    while True:  # pages walk the matching calls only
        status, body = daemon.http(
            "GET", f"/v1/calls?tracker=acme&channel=paid&limit=1&cursor={cursor}")
        assert status == 200, body
        pages += [c["id"] for c in body["calls"]]
        if not body["next_cursor"]:
            break
        cursor = body["next_cursor"]
    assert pages == [c["id"] for c in paid]
    for bad in ("channel=a&channel=b", "tag=" + "x" * 300, "source=%01"):
        status, body = daemon.http("GET", f"/v1/calls?tracker=acme&{bad}")
        assert status == 400 and body["error"]["message"].startswith(bad.split("=")[0] + ":")
    b.open("calls")
    target = next(c for c in api_calls if c["attribution"]["kind"] == "dynamic")
    b.page.click(f'#calls tr[data-call="{target["id"]}"]')
    b.wait_page(f"calls/{target['id']}")
    assert b.page.inner_text('[data-field="Campaign"]') == (
        target["attribution"]["session"]["utm_campaign"])
    b.page.fill("#edit-tags", "lead, sofa")
    b.page.select_option("#edit-status", "qualified")
    b.page.fill("#edit-value", "1500")
    b.page.click("#edit-save")
    b.page.wait_for_selector("#edit-result.ok", timeout=15000)
    status, updated = daemon.http("GET", f"/v1/calls/{target['id']}")
    assert status == 200
    assert updated["tags"] == ["lead", "sofa"]
    assert updated["lead_status"] == "qualified" and updated["value"] == 1500
    started = b.page.inner_text('[data-field="Started"]')
    assert started == local(target["started_at"]) + " GMT+3", started
    assert b.page.inner_text('[data-field="Time zone"]') == "Europe/Moscow"
    assert b.page.inner_text("#recording") == "Recording\nThis call was not recorded."
    b.shot("call")
    # the tag just written filters the list, on the page and in the API
    assert [c["id"] for c in daemon.calls(tracker="acme", tag="sofa")] == [target["id"]]
    b.open("calls?tag=sofa")
    ids = b.page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.call)")
    assert ids == [target["id"]]

    # Pools: the figures of /v1/stats
    b.open("pools")
    status, stats = daemon.http("GET", "/v1/stats?tracker=acme")
    assert status == 200
    pool = stats["trackers"][0]["pools"][0]
    text = b.page.inner_text(f'[data-pool="{pool["pool"]}"]')
    assert f"Size\n{pool['size']}" in text or f"Size\t{pool['size']}" in text, text
    assert str(pool["recommended_size"]) in text
    if pool["replayed_accuracy"] is not None:  # its calls' figure and the replay's, named
        assert f"{pool['replayed_accuracy'] * 100:.1f}%" in text, text
    assert "Estimated accuracy (its calls)" in text and "Replay at this size" in text
    # numbers in use over today (Moscow's) against the pool size, as /v1/pools/usage says
    status, usage = daemon.http("GET", "/v1/pools/usage?tracker=acme")
    assert status == 200, usage
    assert usage["timezone"] == "Europe/Moscow"
    assert usage["date"] == b.page.input_value("#f-date")  # today in Moscow, on both sides
    [web] = usage["pools"]
    assert web["pool"] == "web" and web["size"] == len(POOL) and len(web["hours"]) == 24
    assert web["hours"][0]["local"].startswith(usage["date"] + "T00:00:00+03:00")
    peak = max(h["peak"] for h in web["hours"] if h["peak"] is not None)
    assert peak == len(VISITS)  # the three visitors held a number each at once
    assert b.page.locator('[data-usage="web"] canvas').count() == 1
    summary = b.page.locator('[data-usage-summary="web"]')
    assert summary.get_attribute("data-peak") == str(peak)
    assert f"Most in use: {peak} of {len(POOL)}" in summary.inner_text()
    assert usage["date"] in b.page.inner_text('[data-usage="web"] h2')
    for bad in ("date=2026-13-01", "date=yesterday", "pool=nope", "tracker=nope"):
        query = bad if bad.startswith("tracker") else f"tracker=acme&{bad}"
        status, body = daemon.http("GET", f"/v1/pools/usage?{query}")
        assert status == 400 and body["error"]["message"].startswith(bad.split("=")[0] + ":")
    b.shot("pools")

    # Health
    b.open("health")
    assert b.tile("status") == "ok"
    b.shot("health")

    # a phone-sized window still shows the overview
    b.page.set_viewport_size({"width": 390, "height": 844})
    b.open("overview")
    assert b.tile("calls") == "5"
    b.shot("overview-phone")
    assert b.console == []
    assert b.foreign == []


def test_a_viewer_sees_only_its_own_tracker(site: dict[str, Any],
                                            browser: Callable[[], Browser]) -> None:
    daemon: Daemon = site["daemon"]
    beta = {"Authorization": f"Bearer {BETA_VIEWER}"}

    def get(path: str) -> tuple[int, Any]:
        return daemon.http("GET", path, admin=False, headers=beta)

    status, body = get("/v1/calls")
    assert status == 200 and {c["tracker"] for c in body["calls"]} == {"beta"}
    assert len(body["calls"]) == 1
    acme_call = daemon.calls(tracker="acme")[0]
    assert get(f"/v1/calls/{acme_call['id']}")[0] == 404
    assert get("/v1/calls?tracker=acme")[0] == 403
    assert get("/v1/stats?tracker=acme")[0] == 403
    assert get("/v1/pools/usage?tracker=acme")[0] == 403
    status, usage = get("/v1/pools/usage")
    assert status == 400 and "pool:" in usage["error"]["message"]  # beta has no pools
    status, stats = get("/v1/stats")
    assert status == 200 and [t["tracker"] for t in stats["trackers"]] == ["beta"]
    status, report = get("/v1/reports?group_by=channel")
    assert status == 200 and sum(r["calls"] for r in report["rows"]) == 1
    assert get("/v1/admin/webhooks")[0] == 403
    status, _ = daemon.http("PATCH", f"/v1/calls/{body['calls'][0]['id']}", {"tags": ["x"]},
                            admin=False, headers=beta)
    assert status == 403
    status, me = get("/v1/me")
    assert status == 200 and me["role"] == "viewer"
    assert [t["id"] for t in me["trackers"]] == ["beta"]
    assert me["carriers"] == ["mts", "beeline"]  # the configured names, the carrier filter's

    b = browser()
    b.sign_in(BETA_VIEWER)
    options = b.page.locator("#tracker option").evaluate_all("o => o.map(x => x.value)")
    assert options == ["beta"]
    assert b.page.locator('nav a[data-page="health"]').is_hidden()
    b.page.select_option("#period", "30")
    b.wait_page("overview")
    assert b.tile("calls") == "1"
    b.open("calls")
    ids = b.page.locator("#calls tbody tr").evaluate_all("rows => rows.map(r => r.dataset.call)")
    assert ids == [body["calls"][0]["id"]]
    b.page.evaluate(f"location.hash = '#/calls/{acme_call['id']}'")
    b.wait_page(f"calls/{acme_call['id']}")
    assert "no call with that id" in b.page.inner_text("#page")
    # a viewer's Save button is disabled, and looks it (greyed, not the accent colour)
    own = body["calls"][0]["id"]
    b.open(f"calls/{own}")
    save = b.page.locator("#edit-save")
    assert save.is_disabled()
    look = save.evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).cursor]")
    assert look == ["rgb(228, 231, 235)", "not-allowed"], look
    b.page.evaluate(f"location.hash = '#/calls/{acme_call['id']}'")
    b.wait_page(f"calls/{acme_call['id']}")
    b.shot("viewer-calls")
    # the console shows the refused request as a failed load; nothing else
    assert all("404" in line for line in b.console), b.console
    assert b.foreign == []


def test_the_page_carries_a_strict_content_security_policy(site: dict[str, Any]) -> None:
    import urllib.request

    daemon: Daemon = site["daemon"]
    for path in ("/ui/", "/ui/app.js", "/ui/vendor/chart.umd.min.js"):
        with urllib.request.urlopen(daemon.base + path, timeout=10) as resp:
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe" not in csp
            # recordings play from signed links of this origin: no blob: or data: media
            assert "media-src 'self';" in csp and "blob:" not in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    status, _ = daemon.http("GET", "/ui/../calltrackd.toml", admin=False)
    assert status == 404
    status, _ = daemon.http("GET", "/ui/vendor/chart.js-LICENSE.md", admin=False)
    assert status == 200
