"""Call tracking end to end without the browser: a visitor gets a number over the API, SIPp dials
it, and a real HTTP receiver gets the signed `call.ended` webhook naming that visitor.
Also static and default numbers, and webhooks that survive a failing receiver and a
daemon restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from calltrackd.webhooks.signing import verify

from .conftest import (
    CALLER,
    SQLITE,
    Daemon,
    Receiver,
    Sipp,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)

SECRET = "whsec_test_secret"
POOL = ["+74990000011", "+74990000012", "+74990000013"]
DEFAULT = "+74990000010"
STATIC = "+74990000100"


def config(sip: int, http: int, pbx: int, hook: str, store: str = SQLITE) -> str:
    return daemon_toml(
        sip, http, tracker(
            "acme", DEFAULT, pbx_uri(pbx), reservation_ttl="6m", target_call_min_seconds=1,
            pools=[{"name": "web", "sources": ["*"], "numbers": POOL}],
            static=[{"number": STATIC, "channel": "billboard"}],
            webhooks=[{"url": hook, "secret": SECRET}]),
        store=store, sip={"shutdown_grace": "5s"}, log={"level": "info"},
        webhooks={"backoff_base": "200ms", "backoff_cap": "1s"})


@dataclass
class Env:
    tmp: Path
    daemon: Daemon
    pbx: int
    cfg: str


@pytest.fixture
def env(tmp_path: Path, receiver: Receiver, store_url: str) -> Iterator[Env]:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url, store_url)
    daemon = start_daemon(tmp_path, cfg, sip, http)
    e = Env(tmp_path, daemon, pbx, cfg)
    yield e
    e.daemon.stop()


def call(env: Env, sipp_factory: Callable[..., Sipp], did: str, ms: int = 1500) -> None:
    pbx = sipp_factory("pbx", "uas_answer.xml", env.pbx, "-m", "1", "-timeout", "30s")
    res = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", did, "-m", "1",
                       "-d", str(ms), "-timeout", "30s", "-timeout_error",
                       remote=f"127.0.0.1:{env.daemon.sip_port}").wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok


def wait_outbox_empty(daemon: Daemon, timeout: float = 30.0) -> None:
    """Until the daemon lists no delivery as pending (every event sent and acknowledged)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = daemon.http("GET", "/v1/admin/webhooks?status=pending")
        assert status == 200, body
        if not body["deliveries"]:
            return
        assert time.monotonic() < deadline, f"still pending: {body['deliveries']}"
        time.sleep(0.1)


def check_signature(delivery: dict[str, Any]) -> None:
    headers = delivery["headers"]
    assert verify(SECRET, delivery["body"], headers["X-Calltrackd-Signature"])
    assert headers["X-Calltrackd-Delivery"] == delivery["json"]["event_id"]
    assert headers["X-Calltrackd-Event"] == delivery["json"]["event"]


def test_visitor_number_call_reaches_crm_with_visitor_data(
    env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    status, session = env.daemon.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "session_id": None, "client_id": "GA1.2.111.222",
        "ym_uid": "1690000000123", "utm_source": "google", "utm_medium": "cpc",
        "utm_campaign": "spring", "utm_term": "buy sofa", "referrer": "https://www.google.com/",
        "landing_page": "https://acme.example/sofas", "custom": {"product_id": "42"},
    }, admin=False)
    assert status == 200, session
    assert session["kind"] == "dynamic" and session["number"] in POOL
    call(env, sipp_factory, session["number"], 1500)
    ended = receiver.wait_event("call.ended", session["number"])
    check_signature(ended)
    c = ended["json"]["call"]
    assert c["caller"] == CALLER and c["outcome"] == "answered" and c["tracker"] == "acme"
    assert c["carrier"] == "loopback"  # the [[carriers]] entry its source address matched
    assert abs(c["talk_seconds"] - 1.5) < 0.5
    assert c["qualified"] is True and c["first_time_caller"] is True
    att = c["attribution"]
    assert att["kind"] == "dynamic"
    assert att["session"]["id"] == session["session_id"]
    assert att["session"]["client_id"] == "GA1.2.111.222"
    assert att["session"]["utm_campaign"] == "spring"
    assert att["session"]["custom"] == {"product_id": "42"}
    # started and answered went out too, each with its own event id
    started = receiver.wait_event("call.started", session["number"])
    answered = receiver.wait_event("call.answered", session["number"])
    ids = {started["json"]["event_id"], answered["json"]["event_id"], ended["json"]["event_id"]}
    assert len(ids) == 3
    assert started["json"]["call"]["carrier"] == answered["json"]["call"]["carrier"] == "loopback"
    # the CDR says the same, and is listed under its carrier
    cdr = env.daemon.wait_call(lambda x: x["did"] == session["number"])
    assert cdr["attribution"]["session"]["utm_campaign"] == "spring"
    assert cdr["carrier"] == "loopback"
    assert [x["id"] for x in env.daemon.calls(carrier="loopback")] == [cdr["id"]]
    assert env.daemon.calls(carrier="elsewhere") == []
    status, one = env.daemon.http("GET", f"/v1/calls/{cdr['id']}")
    assert status == 200 and one["carrier"] == "loopback"


def test_static_and_default_numbers_are_attributed(
    env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    call(env, sipp_factory, STATIC, 300)
    static = receiver.wait_event("call.ended", STATIC)["json"]["call"]
    assert static["attribution"]["kind"] == "static"
    assert static["attribution"]["channel"] == "billboard"
    assert static["first_time_caller"] is True
    call(env, sipp_factory, DEFAULT, 300)
    default = receiver.wait_event("call.ended", DEFAULT)["json"]["call"]
    assert default["attribution"]["kind"] == "default"
    assert default["first_time_caller"] is False  # the same caller called before


def test_pool_exhaustion_gives_default_number(env: Env) -> None:
    kinds = []
    numbers = []
    for _ in range(len(POOL) + 2):
        status, s = env.daemon.http("POST", "/v1/sessions", {"tracker": "pk_acme"}, admin=False)
        assert status == 200, s
        kinds.append(s["kind"])
        numbers.append(s["number"])
    assert kinds.count("dynamic") == len(POOL)
    assert sorted(n for n, k in zip(numbers, kinds, strict=True) if k == "dynamic") == POOL
    assert [n for n, k in zip(numbers, kinds, strict=True) if k == "default"] == [DEFAULT] * 2


def test_webhook_survives_failing_receiver_and_restart(
    env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    receiver.fail_first = 3  # down for the first three attempts
    call(env, sipp_factory, STATIC, 300)
    deadline = time.monotonic() + 15
    while receiver.attempts < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.attempts >= 2, "the receiver was never tried"
    assert env.daemon.stop() == 0  # restart with events still undelivered
    env.daemon = start_daemon(env.tmp, env.cfg, env.daemon.sip_port, env.daemon.http_port)
    for event in ("call.started", "call.answered", "call.ended"):
        receiver.wait_event(event, STATIC, timeout=30)
    assert receiver.attempts >= 3 + 3
    # every event acknowledged: a further restart must not send any of them again
    acknowledged = receiver.attempts
    assert env.daemon.stop() == 0
    env.daemon = start_daemon(env.tmp, env.cfg, env.daemon.sip_port, env.daemon.http_port)
    # a later call's events go out after anything still due, and then nothing is pending:
    # a resent event would have reached the receiver by now, or still be waiting
    call(env, sipp_factory, DEFAULT, 300)
    for event in ("call.started", "call.answered", "call.ended"):
        receiver.wait_event(event, DEFAULT, timeout=30)
    wait_outbox_empty(env.daemon)
    assert receiver.attempts == acknowledged + 3  # the later call's three events, no more
    by_event: dict[str, list[str]] = {}
    for r in receiver.received:  # the receiver keeps only deliveries it acknowledged
        check_signature(r)
        if r["json"]["call"]["did"] == STATIC:
            by_event.setdefault(r["json"]["event"], []).append(r["json"]["event_id"])
    # each event arrived once it was acknowledged, under one event_id, exactly once
    assert sorted(by_event) == ["call.answered", "call.ended", "call.started"]
    for ids in by_event.values():
        assert len(ids) == 1, by_event


def test_stats_count_calls_coverage_accuracy_and_pool_use(
    env: Env, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    sessions = []
    for source in ("google", "google", "yandex", "google"):  # 4 visitors, 3 pool numbers
        status, s = env.daemon.http("POST", "/v1/sessions", {
            "tracker": "pk_acme", "utm_source": source, "utm_medium": "cpc"}, admin=False)
        assert status == 200
        sessions.append(s)
    assert [s["kind"] for s in sessions] == ["dynamic"] * 3 + ["default"]
    call(env, sipp_factory, sessions[0]["number"], 1200)  # qualified (>= 1 s)
    call(env, sipp_factory, DEFAULT, 200)  # a call to the default number: not qualified
    receiver.wait_event("call.ended", DEFAULT)
    status, body = env.daemon.http("GET", "/v1/stats?tracker=acme")
    assert status == 200, body
    (acme,) = body["trackers"]
    assert (acme["calls"], acme["answered"], acme["missed"]) == (2, 2, 0)
    assert acme["qualified"] == 1 and acme["first_time"] == 1
    assert acme["visitors"] == 4 and acme["coverage"] == 0.75
    assert acme["accuracy"] == 0.5  # 1 - calls to the default number / all calls
    by_source = {s["source"]: s for s in acme["sources"]}
    assert by_source["google/cpc"]["calls"] == 1 and by_source["default"]["calls"] == 1
    (pool,) = acme["pools"]
    assert (pool["size"], pool["reserved"], pool["free"]) == (3, 3, 0)
    assert pool["peak"] == 3 and pool["shortfall"] == 1
    # short: the pool's visits replayed (four at once) need a number each
    assert pool["recommended_size"] == 4
    status, _ = env.daemon.http("GET", "/v1/stats", admin=False)
    assert status == 401


def test_stats_recommend_fewer_numbers_than_a_pool_that_was_never_full(env: Env) -> None:
    status, s = env.daemon.http("POST", "/v1/sessions", {"tracker": "pk_acme"}, admin=False)
    assert status == 200 and s["kind"] == "dynamic"
    status, body = env.daemon.http("GET", "/v1/stats?tracker=acme")
    assert status == 200, body
    (pool,) = body["trackers"][0]["pools"]
    assert (pool["size"], pool["peak"], pool["shortfall"]) == (3, 1, 0)
    assert pool["recommended_size"] == 1  # its one visit replayed: two numbers can go


def test_failed_webhook_is_listed_and_resent_by_the_admin_api(
    tmp_path: Path, receiver: Receiver, sipp_factory: Callable[..., Sipp], store_url: str
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url, store_url).replace(
        'backoff_cap = "1s"', 'backoff_cap = "1s"\nmax_age = "1s"')
    env = Env(tmp_path, start_daemon(tmp_path, cfg, sip, http), pbx, cfg)
    try:
        receiver.fail_first = 10**6  # the CRM is down for good
        call(env, sipp_factory, STATIC, 200)
        deadline = time.monotonic() + 20
        failed: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(failed) < 3:
            status, body = env.daemon.http("GET", "/v1/admin/webhooks?status=failed")
            assert status == 200
            failed = body["deliveries"]
            time.sleep(0.2)
        assert sorted(d["event"] for d in failed) == ["call.answered", "call.ended",
                                                       "call.started"]
        assert all(d["attempts"] >= 1 and d["last_error"] for d in failed)
        receiver.fail_first = 0
        receiver.attempts = 0
        ended = next(d for d in failed if d["event"] == "call.ended")
        status, body = env.daemon.http("POST", f"/v1/admin/webhooks/{ended['id']}/resend")
        assert status == 202, body
        got = receiver.wait_event("call.ended", STATIC)
        assert got["json"]["event_id"] == ended["event_id"]  # the same event, sent again
        status, _ = env.daemon.http("POST", "/v1/admin/webhooks/dlv_nope/resend")
        assert status == 404
    finally:
        env.daemon.stop()
