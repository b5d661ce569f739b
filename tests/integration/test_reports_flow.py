"""Reports end to end, on both stores: visitors of several campaigns get numbers over the
API, SIPp calls them, spend comes in as JSON and CSV and a CRM writes values and tags
back; /v1/reports?group_by=campaign,term then shows the counts, spend, CPL and ROI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import Receiver, Sipp, by_did, free_port, start_daemon
from .test_tracking_flow import STATIC, Env, call, config


@pytest.fixture
def env(tmp_path: Path, receiver: Receiver, store_url: str) -> Iterator[Env]:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url, store_url).replace(
        'secret = "whsec_test_secret"',
        'secret = "whsec_test_secret"\n  events = ["call.ended", "call.updated"]')
    daemon = start_daemon(tmp_path, cfg, sip, http)
    e = Env(tmp_path, daemon, pbx, cfg)
    yield e
    e.daemon.stop()


def _raw(env: Env, method: str, path: str, data: bytes, ctype: str) -> tuple[int, Any]:
    req = urllib.request.Request(env.daemon.base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {env.daemon.admin_token}")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_report_by_campaign_and_term_shows_counts_spend_cpl_and_roi(
    env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    visits = [("spring", "buy sofa", 1500), ("spring", "sofa price", 1500),
              ("autumn", "buy sofa", 200)]
    numbers = []
    for campaign, term, _ in visits:
        status, s = env.daemon.http("POST", "/v1/sessions", {
            "tracker": "pk_acme", "utm_source": "google", "utm_medium": "cpc",
            "utm_campaign": campaign, "utm_term": term,
            "landing_page": f"https://acme.example/sofas?utm_campaign={campaign}"},
            admin=False)
        assert status == 200 and s["kind"] == "dynamic", s
        numbers.append(s["number"])
    for number, (_, _, ms) in zip(numbers, visits, strict=True):
        call(env, sipp_factory, number, ms)  # >= 1 s talk is a qualified call here
    call(env, sipp_factory, STATIC, 200)
    cdrs = {n: env.daemon.wait_call(by_did(n), timeout=20)
            for n in (*numbers, STATIC)}
    today = datetime.now(UTC).date().isoformat()

    status, body = env.daemon.http("PUT", "/v1/spend", {"spend": [
        {"tracker": "acme", "day": today, "source": "google", "medium": "cpc",
         "campaign": "spring", "amount": 999.0, "currency": "RUB"}]})
    assert status == 200 and body == {"stored": 1}, body
    # the same key again replaces it (PUT is idempotent); CSV adds autumn
    status, body = _raw(env, "PUT", "/v1/spend", (
        "tracker,day,source,medium,campaign,amount,currency\n"
        f"acme,{today},google,cpc,spring,1000.00,RUB\n"
        f"acme,{today},google,cpc,autumn,500,RUB\n").encode(), "text/csv")
    assert status == 200 and body == {"stored": 2}, body
    status, body = env.daemon.http("GET", "/v1/spend?tracker=acme")
    assert sorted((r["campaign"], r["amount"]) for r in body["spend"]) == [
        ("autumn", 500.0), ("spring", 1000.0)]

    won = cdrs[numbers[0]]["id"]
    status, body = env.daemon.http("PATCH", f"/v1/calls/{won}", {
        "tags": ["won", "sofa"], "lead_status": "won", "value": 4000})
    assert status == 200 and body["value"] == 4000 and body["tags"] == ["won", "sofa"], body
    status, body = env.daemon.http("PATCH", f"/v1/calls/{cdrs[numbers[2]]['id']}",
                                   {"value": 100.5, "lead_status": "lost"})
    assert status == 200, body
    updated = receiver.wait_event("call.updated", numbers[0])["json"]["call"]
    assert updated["tags"] == ["won", "sofa"] and updated["lead_status"] == "won"
    for bad, name in (({"value": -1}, "value"), ({"tags": "vip"}, "tags"),
                      ({"tags": ["ok", ""]}, "tags[1]"), ({"lead_status": "maybe"},
                                                          "lead_status"),
                      ({"colour": "red"}, "colour")):
        status, body = env.daemon.http("PATCH", f"/v1/calls/{won}", bad)
        assert status == 400 and body["error"]["message"].startswith(name + ":"), body
    status, got = env.daemon.http("GET", f"/v1/calls/{won}")
    assert got["value"] == 4000 and got["lead_status"] == "won"

    status, body = env.daemon.http("GET", "/v1/reports?group_by=campaign,term&tracker=acme")
    assert status == 200, body
    rows = {(r["key"]["campaign"], r["key"]["term"]): r for r in body["rows"]}
    assert set(rows) == {("spring", "buy sofa"), ("spring", "sofa price"),
                         ("autumn", "buy sofa"), (None, None)}
    got = {k: (r["visitors"], r["calls"], r["answered"], r["qualified"], r["revenue"])
           for k, r in rows.items()}
    assert got == {("spring", "buy sofa"): (1, 1, 1, 1, 4000.0),
                   ("spring", "sofa price"): (1, 1, 1, 1, 0.0),
                   ("autumn", "buy sofa"): (1, 1, 1, 0, 100.5),
                   (None, None): (0, 1, 1, 0, 0.0)}  # the billboard's call
    assert all(r["spend"] is None for r in body["rows"])  # spend has no term
    assert body["spend_group_by"] == ["campaign"]
    by_campaign = {r["key"]["campaign"]: r for r in body["spend_rows"]}
    spring, autumn = by_campaign["spring"], by_campaign["autumn"]
    assert (spring["calls"], spring["qualified"], spring["spend"]) == (2, 2, 1000.0)
    assert spring["cpl"] == 500.0 and spring["roi"] == 3.0  # (4000 - 1000) / 1000
    assert (autumn["spend"], autumn["cpl"], autumn["roi"]) == (500.0, None, -0.799)
    assert body["totals"]["calls"] == 4

    # grouped by what spend has, the rows carry it themselves
    status, body = env.daemon.http("GET", "/v1/reports?group_by=campaign&source=google")
    assert status == 200, body
    spring = next(r for r in body["rows"] if r["key"] == {"campaign": "spring"})
    assert (spring["spend"], spring["cpl"], spring["roi"], spring["visitors"]) == (
        1000.0, 500.0, 3.0, 2)
    status, body = env.daemon.http("GET", "/v1/reports?group_by=tag&tag=won")
    assert [(r["key"], r["calls"]) for r in body["rows"]] == [({"tag": "won"}, 1)]


def test_bad_report_spend_and_patch_input_gets_400_naming_the_parameter(env: Env) -> None:
    for path, name in (("/v1/reports?group_by=campaign,keyword", "group_by"),
                       ("/v1/reports?hour=25", "hour"),
                       ("/v1/reports?day=yesterday", "day"),
                       ("/v1/reports?tracker=nobody", "tracker"),
                       ("/v1/reports?groupby=campaign", "groupby"),
                       ("/v1/reports?since=2026-12-02&until=2026-12-01", "since")):
        status, body = env.daemon.http("GET", path)
        assert status == 400 and body["error"]["message"].startswith(name + ":"), (path, body)
    status, body = env.daemon.http("PUT", "/v1/spend", {"spend": [
        {"tracker": "acme", "day": "2026-11-30", "amount": -5, "currency": "RUB"}]})
    assert status == 400 and body["error"]["message"].startswith("spend[0].amount:"), body
    status, body = _raw(env, "PUT", "/v1/spend",
                        b"tracker,day,amount,currency\nacme,2026-13-01,5,RUB\n", "text/csv")
    assert status == 400 and body["error"]["message"].startswith("line 2.day:"), body
    status, _ = env.daemon.http("PATCH", "/v1/calls/c_nope", {"value": 1})
    assert status == 404
    status, _ = env.daemon.http("GET", "/v1/reports", admin=False)
    assert status == 401
