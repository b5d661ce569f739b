"""Analytics and alerts through the running daemon: real calls (SIPp carrier and PBX) reach
local stand-ins for GA4's Measurement Protocol, Metrica's upload_calls, Telegram's
sendMessage and a Slack incoming webhook, each checking its requests the way the service
documents them; a CRM endpoint with `batch` gets JSON arrays. Every service fails its
first requests (500), the daemon is restarted while they fail, and each call arrives at
each service once it is acknowledged, and never again after another restart."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from calltrackd.webhooks.signing import verify

from .conftest import (
    Daemon,
    Sipp,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)
from .test_tracking_flow import wait_outbox_empty

GA_ID, GA_SECRET = "G-TEST123", "ga-api-secret-xyz"
YM_COUNTER, YM_TOKEN = 4242, "y0_metrica-oauth-token"
TG_TOKEN, TG_CHAT = "123456:tg-bot-token", "-1001234"
SLACK_PATH = "/services/T000/B000/slacksecret"
HOOK_SECRET = "whsec_batch"
POOL = ["+74990000021", "+74990000022"]
STATIC = "+74990000120"
GA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
YM_COLUMNS = {"UserId", "ClientId", "Yclid", "DateTime", "StaticCall", "Price", "Currency",
              "PhoneNumber", "TalkDuration", "HoldDuration", "CallMissed", "Tag",
              "FirstTimeCaller", "URL", "CallTrackerURL"}


@dataclass
class Services:
    """GA4, Metrica, Telegram, Slack and a CRM on one loopback port, each failing its first
    `outage` requests with 500; `accepted` holds what each acknowledged, `problems` every
    way a request differed from the service's documentation."""

    port: int
    outage: int = 2
    attempts: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, list[Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _down(self, name: str) -> bool:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        return self.attempts[name] <= self.outage

    def _problem(self, name: str, text: str) -> web.Response:
        self.problems.append(f"{name}: {text}")
        return web.Response(status=400, text=text)

    async def ga4(self, request: web.Request) -> web.Response:
        # https://developers.google.com/analytics/devguides/collection/protocol/ga4
        if request.query.get("measurement_id") != GA_ID or \
                request.query.get("api_secret") != GA_SECRET:
            return self._problem("ga4", f"query {dict(request.query)}")
        if request.content_type != "application/json":
            return self._problem("ga4", f"content type {request.content_type}")
        doc = json.loads(await request.read())
        if not isinstance(doc.get("client_id"), str) or not doc["client_id"]:
            return self._problem("ga4", "no client_id")
        ts = doc.get("timestamp_micros")
        if not isinstance(ts, int) or not time.time() - 72 * 3600 < ts / 1e6 <= time.time() + 60:
            return self._problem("ga4", f"timestamp_micros {ts!r} outside 72 hours")
        events = doc.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= 25:
            return self._problem("ga4", "events: 1..25 expected")
        for e in events:
            if not GA_NAME.match(e.get("name", "")):
                return self._problem("ga4", f"event name {e.get('name')!r}")
            params = e.get("params", {})
            if len(params) > 25 or any(len(k) > 40 for k in params):
                return self._problem("ga4", "more than 25 params or a name over 40")
            for v in params.values():
                if not isinstance(v, str | int | float) or (isinstance(v, str) and len(v) > 100):
                    return self._problem("ga4", f"param value {v!r}")
        if self._down("ga4"):
            return web.Response(status=500)
        self.accepted.setdefault("ga4", []).append(doc)
        return web.Response(status=204)

    async def metrica(self, request: web.Request) -> web.Response:
        # yandex.ru/dev/metrika: management/v1/counter/{id}/offline_conversions/upload_calls
        if request.match_info["counter"] != str(YM_COUNTER):
            return self._problem("metrica", "counter")
        if request.headers.get("Authorization") != f"OAuth {YM_TOKEN}":
            return web.json_response({"errors": [{"error_type": "invalid_token"}],
                                      "code": 403, "message": "Invalid oauth_token"},
                                     status=403)
        if request.query.get("client_id_type", "").upper() != "CLIENT_ID":
            return self._problem("metrica", "client_id_type")
        if request.content_type != "multipart/form-data":
            return self._problem("metrica", f"content type {request.content_type}")
        reader = await request.multipart()
        part = await reader.next()
        if part is None or getattr(part, "name", None) != "file":
            return self._problem("metrica", "no file field")
        text = (await part.read()).decode()  # type: ignore[union-attr]
        rows = list(csv.DictReader(io.StringIO(text)))
        header = text.splitlines()[0].split(",")
        if set(header) - YM_COLUMNS or "ClientId" not in header or "DateTime" not in header:
            return self._problem("metrica", f"columns {header}")
        for r in rows:
            if not r["ClientId"].isdigit() or not r["DateTime"].isdigit():
                return self._problem("metrica", f"row {r}")
            if time.time() - int(r["DateTime"]) > 21 * 86400:
                return self._problem("metrica", "a call older than 21 days")
        if self._down("metrica"):
            return web.Response(status=500)
        self.accepted.setdefault("metrica", []).extend(rows)
        return web.json_response({"uploading": {
            "id": len(self.accepted["metrica"]), "source_quantity": len(rows),
            "line_quantity": len(rows), "client_id_type": "CLIENT_ID", "status": "UPLOADED"}})

    async def telegram(self, request: web.Request) -> web.Response:
        # core.telegram.org/bots/api#sendmessage: JSON (or form) chat_id and text
        if request.match_info["token"] != TG_TOKEN:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        if request.content_type == "application/json":
            doc = json.loads(await request.read())
        else:
            doc = dict(await request.post())
        text = doc.get("text")
        if str(doc.get("chat_id")) != TG_CHAT or not isinstance(text, str) \
                or not 1 <= len(text) <= 4096:
            return web.json_response({"ok": False, "error_code": 400,
                                      "description": "Bad Request: chat not found"}, status=400)
        if self._down("telegram"):
            return web.json_response({"ok": False, "error_code": 500,
                                      "description": "Internal Server Error"}, status=500)
        self.accepted.setdefault("telegram", []).append(text)
        return web.json_response({"ok": True, "result": {"message_id": len(
            self.accepted["telegram"]), "chat": {"id": int(TG_CHAT)}, "text": text}})

    async def slack(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        if not isinstance(doc.get("text"), str):
            return self._problem("slack", "no text")
        if self._down("slack"):
            return web.Response(status=500, text="server_error")
        self.accepted.setdefault("slack", []).append(doc["text"])
        return web.Response(text="ok")

    async def crm(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(HOOK_SECRET, body, request.headers.get("X-Calltrackd-Signature", "")):
            return self._problem("crm", "bad signature")
        events = json.loads(body)
        if not isinstance(events, list) or request.headers.get("X-Calltrackd-Batch") != str(
                len(events)):
            return self._problem("crm", "not a batch")
        if self._down("crm"):
            return web.Response(status=500)
        self.accepted.setdefault("crm", []).extend(events)
        return web.Response(status=204)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/mp/collect", self.ga4)
            app.router.add_post("/management/v1/counter/{counter}/offline_conversions/"
                                "upload_calls", self.metrica)
            app.router.add_post("/bot{token}/sendMessage", self.telegram)
            app.router.add_post(SLACK_PATH, self.slack)
            app.router.add_post("/crm", self.crm)
            runner = web.AppRunner(app)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def count(self, name: str) -> int:
        return len(self.accepted.get(name, []))


@pytest.fixture
def services() -> Iterator[Services]:
    s = Services(free_port())
    s.start()
    yield s
    s.stop()


def config(sip: int, http: int, pbx: int, base: str, store: str) -> str:
    return daemon_toml(
        sip, http, tracker(
            "acme", "+74990000020", pbx_uri(pbx), target_call_min_seconds=1,
            pools=[{"name": "web", "numbers": POOL}],
            static=[{"number": STATIC, "channel": "billboard"}],
            webhooks=[{"url": f"{base}/crm", "secret": HOOK_SECRET, "events": ["call.ended"],
                       "batch": 10}],
            analytics=[
                {"kind": "ga4", "measurement_id": GA_ID, "api_secret": GA_SECRET,
                 "base_url": base},
                {"kind": "metrica", "counter_id": YM_COUNTER, "token": YM_TOKEN,
                 "base_url": base, "upload_interval": "1s"}],
            alerts=[
                {"kind": "telegram", "bot_token": TG_TOKEN, "chat_id": TG_CHAT, "base_url": base},
                {"kind": "slack", "url": f"{base}{SLACK_PATH}"}]),
        store=store, sip={"shutdown_grace": "5s"}, http={"public_url": "https://track.example"},
        webhooks={"backoff_base": "200ms", "backoff_cap": "1s"})


def call(daemon: Daemon, sipp_factory: Callable[..., Sipp], pbx_port: int, did: str,
         name: str, busy: bool = False, ms: int = 1500) -> None:
    pbx = sipp_factory(f"pbx_{name}", "uas_486.xml" if busy else "uas_answer.xml", pbx_port,
                       "-m", "1", "-timeout", "30s")
    carrier = sipp_factory(f"carrier_{name}", "uac_expect_486.xml" if busy else "uac_call.xml",
                           free_port(), "-s", did, "-m", "1", "-d", str(ms), "-timeout", "30s",
                           "-timeout_error", remote=f"127.0.0.1:{daemon.sip_port}")
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    with __import__("urllib.request").request.urlopen(f"{daemon.base}/metrics",
                                                      timeout=10) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_exports_arrive_in_the_documented_shape_through_an_outage_and_a_restart(
    tmp_path: Any, services: Services, sipp_factory: Callable[..., Sipp], store_url: str,
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, services.base, store_url)
    daemon = start_daemon(tmp_path, cfg, sip, http)
    try:
        status, session = daemon.http("POST", "/v1/sessions", {
            "tracker": "pk_acme", "client_id": "GA1.2.111.222", "ym_uid": "1690000000123",
            "ga_session_id": "1690000000", "utm_source": "google", "utm_medium": "cpc",
            "utm_campaign": "spring", "landing_page": "https://acme.example/sofas"},
            admin=False)
        assert status == 200 and session["kind"] == "dynamic", session
        number = session["number"]
        call(daemon, sipp_factory, pbx, number, "answered")
        call(daemon, sipp_factory, pbx, number, "busy", busy=True)
        call(daemon, sipp_factory, pbx, STATIC, "static")  # no visitor: no analytics row
        for kind, reason in (("ga4", "no GA client id"), ("metrica", "no Metrica client id")):
            wait_for(f"{kind} skip counted", lambda k=kind, r=reason: metric(  # type: ignore[misc]
                daemon, "calltrackd_outbox_skipped_total", kind=k, reason=r) == 1.0)
        # every service is being tried and failing: restart while the outage lasts
        wait_for("a failed attempt at every service", lambda: all(
            services.attempts.get(n, 0) >= 1 for n in ("ga4", "metrica", "telegram", "slack",
                                                        "crm")))
        assert daemon.stop() == 0
        daemon = start_daemon(tmp_path, cfg, sip, http)
        wait_for("every delivery acknowledged", lambda: (
            services.count("ga4") >= 2 and services.count("metrica") >= 2
            and services.count("telegram") >= 1 and services.count("slack") >= 1
            and services.count("crm") >= 3))
        # acknowledged: another restart sends nothing again
        acknowledged = {name: services.count(name) for name in services.accepted}
        assert daemon.stop() == 0
        daemon = start_daemon(tmp_path, cfg, sip, http)
        # a later answered call (to the static number: a CRM event, nothing else) goes out
        # after anything still due; once nothing is pending, a resent row would have
        # arrived, or still be waiting
        call(daemon, sipp_factory, pbx, STATIC, "later", ms=200)
        wait_for("the later call's event", lambda: services.count("crm") > acknowledged["crm"])
        wait_outbox_empty(daemon)
        acknowledged["crm"] += 1
        assert {name: services.count(name) for name in services.accepted} == acknowledged
        assert services.problems == []

        # GA4: one event per call (and one more for the qualified one), the visitor's ids
        outcomes = sorted(ev["params"]["outcome"] for doc in services.accepted["ga4"]
                          for ev in doc["events"] if ev["name"] == "calltrackd_call")
        assert outcomes == ["answered", "busy"]
        names = sorted(ev["name"] for doc in services.accepted["ga4"] for ev in doc["events"])
        assert names == ["calltrackd_call", "calltrackd_call", "calltrackd_qualified_call"]
        for doc in services.accepted["ga4"]:
            assert doc["client_id"] == "111.222"
            params = doc["events"][0]["params"]
            assert params["tracking_number"] == number and params["campaign"] == "spring"
        # Metrica: the two visitor calls, once each
        rows = sorted(services.accepted["metrica"], key=lambda r: r["CallMissed"])
        assert [(r["ClientId"], r["PhoneNumber"], r["CallMissed"]) for r in rows] == [
            ("1690000000123", number, "0"), ("1690000000123", number, "1")]
        assert rows[0]["URL"] == "https://acme.example/sofas"
        assert rows[0]["CallTrackerURL"].startswith("https://track.example/ui/#/calls/c_")
        # alerts: the busy call, once per service, with a link to it
        (tg,) = services.accepted["telegram"]
        (sl,) = services.accepted["slack"]
        assert tg == sl and tg.startswith(f"Missed call (busy) from +79161234567 to {number}")
        assert "https://track.example/ui/#/calls/c_" in tg
        # the CRM: call.ended of the three calls and the later one, in arrays, each once
        assert len({e["event_id"] for e in services.accepted["crm"]}) == 4
        # the rows are listed with their kind
        status, body = daemon.http("GET", "/v1/admin/webhooks?status=delivered&kind=ga4")
        assert status == 200 and len(body["deliveries"]) == 2
        assert all(d["kind"] == "ga4" and d["url"] == f"ga4:{GA_ID}" for d in body["deliveries"])
        status, body = daemon.http("GET", "/v1/admin/webhooks?limit=1000")
        kinds = sorted(d["kind"] for d in body["deliveries"])
        assert kinds == ["ga4"] * 2 + ["metrica"] * 2 + ["slack", "telegram"] + ["webhook"] * 4
        log = daemon.log_text()
        for secret in (GA_SECRET, YM_TOKEN, TG_TOKEN, SLACK_PATH):
            assert secret not in log  # no token in any log line
    finally:
        daemon.stop()


def test_a_failed_export_is_listed_and_resent(
    tmp_path: Any, services: Services, sipp_factory: Callable[..., Sipp],
) -> None:
    services.outage = 10**6  # Telegram is down for good
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, services.base, "sqlite:///./var/calltrackd.db").replace(
        'backoff_cap = "1s"', 'backoff_cap = "1s"\nmax_age = "1s"')
    daemon = start_daemon(tmp_path, cfg, sip, http)
    try:
        call(daemon, sipp_factory, pbx, STATIC, "busy", busy=True)
        failed: list[dict[str, Any]] = []

        def telegram_failed() -> bool:
            nonlocal failed
            _, body = daemon.http("GET", "/v1/admin/webhooks?status=failed&kind=telegram")
            failed = body["deliveries"]
            return len(failed) == 1

        wait_for("the alert given up", telegram_failed)
        assert failed[0]["last_error"] == "HTTP 500: Internal Server Error"
        assert TG_TOKEN not in json.dumps(failed)
        services.outage = 0
        status, _ = daemon.http("POST", f"/v1/admin/webhooks/{failed[0]['id']}/resend")
        assert status == 202
        wait_for("the alert resent", lambda: services.count("telegram") == 1)
        assert services.accepted["telegram"][0].startswith("Missed call (busy)")
    finally:
        daemon.stop()
