"""Recordings in the dashboard, with real components: SIPp carrier and PBX play G.711 RTP
through a real rtpengine, calltrackd records the call; then headless Chromium (Playwright,
Debian's chromium) signs in with the tracker's viewer token, finds the call on the Calls
page with a player, presses play and the audio element's length is the call's talk time.
The player streams from a signed link of the daemon's own origin (an <audio src> cannot
send the token): a link opens one call's recording only, expires, and a viewer of one
tracker gets no link, and no recording, of another's; the page asks for a new link when
its own has expired (download, player) and does not retry in a loop when it cannot get
one. A call made while rtpengine is down (direct, so not recorded) says "not recorded".
No request leaves the daemon's origin and the console stays clean. The screenshot goes
to the test's directory (and to $CALLTRACKD_SCREENSHOTS when set)."""

from __future__ import annotations

import json
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from calltrackd.config.parse import parse_config
from calltrackd.http.recordings import link_key, signed_url

from .conftest import Daemon, daemon_toml, free_port, need, pbx_uri, start_daemon, tracker
from .rtpengine import Rtpengine
from .test_browser_snippet import ARGS, CHROMIUM
from .test_dashboard import Browser, copy_shots
from .test_media_calls import TALK_MS, one_call
from .test_recording_api import get

ACME_VIEWER = "viewer-acme-rec-0123456789"
BETA_VIEWER = "viewer-beta-rec-0123456789"
ACME = "+74990000300"  # acme's billboard
POOL = ["+74990000301", "+74990000302"]  # acme's numbers for website visitors
BETA = "+74990000400"


def config(sip: int, http: int, pbx: int, beta_pbx: int, rtp: Rtpengine,
           recordings: Path) -> str:
    return daemon_toml(
        sip, http,
        tracker("acme", "+74990000310", pbx_uri(pbx), media="anchor", record=True,
                timezone="Europe/Moscow", viewer_tokens=[ACME_VIEWER],
                pools=[{"name": "web", "sources": ["*"], "numbers": POOL}],
                static=[{"number": ACME, "channel": "billboard"}]),
        tracker("beta", "+74990000410", pbx_uri(beta_pbx), media="anchor", record=True,
                viewer_tokens=[BETA_VIEWER], static=[{"number": BETA, "channel": "radio"}]),
        sip={"shutdown_grace": "5s"},
        media={"rtpengine": [rtp.address], "timeout": "1s", "retransmit": "200ms",
               "spool_dir": str(rtp.spool), "recordings_dir": str(recordings)})


def recorded(daemon: Daemon, did: str, timeout: float = 60.0) -> dict[str, Any]:
    """The call to `did` once its recording is stored (a few seconds after it ended)."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = [c for c in daemon.calls(limit="100") if c["did"] == did]
        if seen and seen[0].get("recording"):
            return seen[0]
        time.sleep(0.2)
    raise AssertionError(f"no recording for a call to {did}; saw {seen}")


def viewer(daemon: Daemon, path: str, token: str,
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return get(daemon, path, {"Authorization": f"Bearer {token}", **(headers or {})},
               admin=False)


def link(daemon: Daemon, call_id: str, token: str) -> str:
    status, _, body = viewer(daemon, f"/v1/calls/{call_id}/recording/link", token)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["expires_in"] == 900 and answer["expires"] > time.time() + 800, answer
    url = answer["url"]
    assert isinstance(url, str) and url.startswith(f"/v1/calls/{call_id}/recording?"), url
    return url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Three calls: a visitor from a Google Ads campaign calls acme's pool number while
    beta's radio number is called, both recorded through rtpengine; then (rtpengine
    stopped) acme's billboard is called, which goes direct and is not recorded."""
    need("sipp")
    tmp = tmp_path_factory.mktemp("recsite")
    rtp = Rtpengine(tmp / "rtpengine")
    rtp.start()
    sip, http, pbx, beta_pbx = free_port(), free_port(), free_port(), free_port()
    text = config(sip, http, pbx, beta_pbx, rtp, tmp / "rec")
    daemon = start_daemon(tmp, text, sip, http)
    try:
        status, visit = daemon.http("POST", "/v1/sessions", {
            "tracker": "pk_acme", "utm_source": "google", "utm_medium": "cpc",
            "utm_campaign": "spring_sofas", "utm_term": "buy sofa",
            "landing_page": "https://acme.example/sofas?utm_campaign=spring_sofas"},
            admin=False)
        assert status == 200 and visit["number"] in POOL, visit
        with ThreadPoolExecutor(2) as both:  # at once: each tracker has a PBX of its own
            done = [both.submit(one_call, tmp, n, sip, port, "uas_answer_rtp.xml",
                                "uac_call_rtp.xml", TALK_MS, did=did)
                    for n, port, did in ((1, pbx, visit["number"]), (2, beta_pbx, BETA))]
            for call in done:
                call.result()
        acme, beta = recorded(daemon, visit["number"]), recorded(daemon, BETA)
        assert acme["attribution"]["session"]["utm_campaign"] == "spring_sofas", acme
        rtp.stop()
        one_call(tmp, 3, sip, pbx, "uas_answer.xml", "uac_call.xml", 1500, did=ACME)
        direct = daemon.wait_call(lambda c: c["did"] == ACME, timeout=30)
        assert direct["media"]["mode"] == "direct" and "recording" not in direct, direct
        yield {"daemon": daemon, "tmp": tmp, "acme": acme, "beta": beta, "direct": direct,
               "settings": parse_config(tomllib.loads(text))}
    finally:
        daemon.stop()
        rtp.stop()


def test_a_viewer_gets_links_to_its_own_tracker_only(site: dict[str, Any]) -> None:
    daemon: Daemon = site["daemon"]
    acme, beta = site["acme"]["id"], site["beta"]["id"]
    status, _, wav = viewer(daemon, f"/v1/calls/{acme}/recording", ACME_VIEWER)
    assert status == 200 and len(wav) == site["acme"]["recording"]["bytes"]

    # another tracker's call: neither the recording nor a link, as if it did not exist
    for path in (f"/v1/calls/{beta}/recording", f"/v1/calls/{beta}/recording/link"):
        status, _, body = viewer(daemon, path, ACME_VIEWER)
        assert status == 404 and b"no call with that id" in body, (path, body)
    # a call without a recording has no link either
    status, _, _ = viewer(daemon, f"/v1/calls/{site['direct']['id']}/recording/link",
                          ACME_VIEWER)
    assert status == 404

    # the link opens the recording without a token, with ranges for seeking
    url = link(daemon, acme, ACME_VIEWER)
    status, headers, body = get(daemon, url, admin=False)
    assert status == 200 and body == wav and headers["Content-Type"] == "audio/wav"
    status, headers, body = get(daemon, url, {"Range": "bytes=44-1043"}, admin=False)
    assert status == 206 and body == wav[44:1044]
    assert headers["Content-Range"] == f"bytes 44-1043/{len(wav)}"

    # ... and that one call only: its signature on beta's call is refused
    query = urlsplit(url).query
    status, _, body = get(daemon, f"/v1/calls/{beta}/recording?{query}", admin=False)
    assert status == 403 and b"bad_link" in body
    # a changed expiry, a forged signature, no signature: refused
    params = parse_qs(query)
    later = int(params["expires"][0]) + 3600
    status, _, body = get(daemon, f"/v1/calls/{acme}/recording?expires={later}"
                                  f"&sig={params['sig'][0]}", admin=False)
    assert status == 403 and b"bad_link" in body
    status, _, _ = get(daemon, f"/v1/calls/{acme}/recording?expires={later}&sig=00",
                       admin=False)
    assert status == 403
    assert get(daemon, f"/v1/calls/{acme}/recording", admin=False)[0] == 401
    # an expired link, signed with the daemon's own key, is refused as expired
    key = link_key(site["settings"])
    assert key is not None
    status, _, body = get(daemon, signed_url(key, acme, int(time.time()) - 1), admin=False)
    assert status == 403 and b"link_expired" in body
    # beta's viewer gets beta's link, which plays
    assert get(daemon, link(daemon, beta, BETA_VIEWER), admin=False)[0] == 200


def test_the_calls_page_plays_the_recording(site: dict[str, Any]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run the README's test command (scripts/test)")
    from playwright.sync_api import sync_playwright

    daemon: Daemon = site["daemon"]
    acme, direct = site["acme"], site["direct"]
    talk = acme["talk_seconds"]
    assert abs(acme["recording"]["seconds"] - talk) <= 1.0, acme
    shots = site["tmp"] / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            b = Browser(chromium.new_page(viewport={"width": 1280, "height": 480}),
                        daemon.base, shots)
            b.sign_in(ACME_VIEWER)
            b.open("calls")
            page = b.page
            rows = page.locator("#calls tbody tr")
            assert rows.count() == 2  # acme's two calls; beta's is not shown
            assert "google/cpc · spring_sofas" in rows.last.inner_text()
            row = page.locator(f'tr[data-call="{acme["id"]}"]')
            audio = row.locator("audio")
            audio.wait_for(state="attached")
            assert audio.get_attribute("preload") == "none"
            page.wait_for_selector(f'tr[data-call="{acme["id"]}"] audio[src]', state="attached")
            src = audio.get_attribute("src") or ""
            assert src.startswith(f"/v1/calls/{acme['id']}/recording?expires="), src
            download = row.locator("a.download")
            assert download.get_attribute("href") == src
            assert download.get_attribute("download") == f"{acme['id']}.wav"
            assert row.locator(".rec-len").inner_text() == secs(acme["recording"]["seconds"])
            unrecorded = page.locator(f'tr[data-call="{direct["id"]}"] td.rec')
            assert unrecorded.inner_text() == "not recorded"

            # play, as a listener does: the browser fetches the WAV from the signed link
            selector = f'tr[data-call="{acme["id"]}"] audio'
            played = page.evaluate(
                "s => document.querySelector(s).play().then(() => 'ok', e => String(e))",
                selector)
            assert played == "ok", played
            state = wait_audio(page, selector, lambda a: a["time"] > 1.0)
            assert abs(state["duration"] - talk) <= 1.0, (state, talk)
            assert state["error"] is None and not state["paused"], state
            page.evaluate("s => document.querySelector(s).pause()", selector)
            page.mouse.move(5, 470)  # no row under the pointer (hover colours it)
            b.shot("dashboard-recording")

            # a quarter of an hour later (the page's clock): the download asks for a new
            # link first, and so does the player when its link is refused as expired
            page.clock.install()
            page.clock.fast_forward("16:00")
            with page.expect_request("**/recording/link") as asked, \
                    page.expect_download() as got:
                download.click()
            assert asked.value.headers["authorization"] == f"Bearer {ACME_VIEWER}"
            fetched = got.value
            assert fetched.suggested_filename == f"{acme['id']}.wav"
            assert Path(fetched.path()).stat().st_size == acme["recording"]["bytes"]
            renewed = download.get_attribute("href") or ""
            assert renewed.startswith(src.split("?")[0] + "?expires="), renewed
            page.clock.fast_forward("16:00")
            # the daemon would answer the old link 403 link_expired (as the API test shows)
            refused: list[str] = []

            def refuse(route: Any) -> None:
                refused.append(route.request.url)
                route.fulfill(status=403, content_type="application/json",
                              body='{"error": {"code": "link_expired", "message": "expired"}}')

            page.route("**/recording?*", refuse, times=1)
            with page.expect_request("**/recording/link") as relinked:
                page.evaluate("s => { const a = document.querySelector(s); a.load(); "
                              "a.play().catch(() => null); }", selector)
            assert refused == [daemon.base + renewed], refused
            relinked.value.response()
            # the player loads the new link: its metadata come, no error left
            wait_audio(page, selector, lambda a: a["ready"] >= 1 and a["error"] is None,
                       stop_on_error=False)
            played = page.evaluate(
                "s => document.querySelector(s).play().then(() => 'ok', e => String(e))",
                selector)
            assert played == "ok", played
            state = wait_audio(page, selector, lambda a: a["time"] > 0.5)
            assert state["error"] is None and abs(state["duration"] - talk) <= 1.0, state
            page.evaluate("s => document.querySelector(s).pause()", selector)

            # no new link to be had (the daemon unreachable): the player says so once and
            # does not retry in a loop
            page.clock.fast_forward("16:00")
            asked_again: list[str] = []

            def unreachable(route: Any) -> None:
                asked_again.append(route.request.url)
                route.abort()

            page.route("**/recording?*", refuse)
            page.route("**/recording/link", unreachable)
            page.evaluate("s => { const a = document.querySelector(s); a.load(); "
                          "a.play().catch(() => null); }", selector)
            row.locator(".player .error").wait_for()
            page.wait_for_timeout(1000)  # a loop would ask again and again meanwhile
            assert len(asked_again) == 1 and len(refused) == 2, (asked_again, refused)
            page.unroute_all()
            # the refused loads and the unreachable link, nothing else
            b.console = [line for line in b.console
                         if "403" not in line and "ERR_FAILED" not in line]

            # the call's own page has the player too
            b.open(f"calls/{acme['id']}")
            page.wait_for_selector("#recording audio[src]", state="attached")
            assert page.locator("#recording .rec-len").inner_text() == secs(
                acme["recording"]["seconds"])
            # the viewer cannot save the lead: the button is disabled and looks it
            save = page.locator("#edit-save")
            assert save.is_disabled()
            look = save.evaluate(
                "e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).cursor]")
            assert look == ["rgb(228, 231, 235)", "not-allowed"], look
            assert page.inner_text('[data-field="Carrier"]') == acme["carrier"] == "loopback"
            b.shot("dashboard-recording-call")
            page.set_viewport_size({"width": 390, "height": 800})  # a phone
            b.shot("dashboard-recording-call-phone")
            b.open(f"calls/{direct['id']}")
            assert "This call was not recorded." in page.inner_text("#recording")
            assert b.console == [], b.console
            assert b.foreign == [], b.foreign
        finally:
            chromium.close()
    copy_shots(shots)


def secs(value: float) -> str:
    """A length as the page shows it (m:ss)."""
    s = round(value)
    return f"{s // 60}:{s % 60:02d}"


def wait_audio(page: Any, selector: str, done: Any, timeout: float = 30.0,
               stop_on_error: bool = True) -> dict[str, Any]:
    """The audio element's state once `done(state)` holds (polled: no timing assert)."""
    script = """s => { const a = document.querySelector(s);
        return { duration: isFinite(a.duration) ? a.duration : null, time: a.currentTime,
                 paused: a.paused, error: a.error ? a.error.code : null,
                 ready: a.readyState }; }"""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.evaluate(script, selector)
        if (stop_on_error and state["error"] is not None) or (state["duration"] and done(state)):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the audio did not play: {state}")
