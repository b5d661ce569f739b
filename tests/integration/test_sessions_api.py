"""POST /v1/sessions and friends against the daemon as a process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import SQLITE, Daemon, daemon_toml, free_port, start_daemon, tracker

POOL = [f"+7499100{i:04d}" for i in range(100)]
DEFAULT = "+74990009999"


def acme(paid: list[str] = POOL[:3], web: list[str] = POOL[3:]) -> dict[str, Any]:
    return tracker("acme", DEFAULT, "sip:127.0.0.1:5070", reservation_ttl="6m", pools=[
        {"name": "paid", "sources": ["google/cpc"], "numbers": paid},
        {"name": "web", "sources": ["*"], "numbers": web}])


def config(sip: int, http: int, *trackers: dict[str, Any], store: str = SQLITE,
           **rate: int) -> str:
    """acme's site (or `trackers`), sessions not rate limited unless `rate` says so."""
    return daemon_toml(sip, http, *(trackers or [acme()]), store=store,
                       http={"session_rate_limit": 0, **rate}, log={"level": "warning"})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("sessions")
    sip, http = free_port(), free_port()
    d = start_daemon(tmp, config(sip, http), sip, http)
    yield d
    assert d.stop() == 0


def post(daemon: Daemon, body: Any, path: str = "/v1/sessions") -> tuple[int, Any]:
    return daemon.http("POST", path, body, admin=False)


def test_reserve_renew_and_ping_keep_the_number(daemon: Daemon) -> None:
    status, a = post(daemon, {"tracker": "pk_acme", "utm_source": "google",
                              "utm_medium": "cpc", "client_id": "GA1.2.3.4"})
    assert status == 200 and a["kind"] == "dynamic"
    assert a["number"] in POOL[:3]  # the pool serving google/cpc
    assert a["session_id"].startswith("s_") and a["expires_at"].endswith("Z")
    status, b = post(daemon, {"tracker": "pk_acme", "session_id": a["session_id"]})
    assert status == 200 and (b["session_id"], b["number"]) == (a["session_id"], a["number"])
    status, c = post(daemon, None, f"/v1/sessions/{a['session_id']}/ping")
    assert status == 200 and c["number"] == a["number"]
    status, err = post(daemon, None, "/v1/sessions/s_nobodyhasthisid00000000/ping")
    assert status == 404 and err["error"]["code"] == "unknown_session"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "tracker"),
    ({"tracker": "pk_acme", "utm_source": 5}, "utm_source"),
    ({"tracker": "pk_acme", "referrer": "x" * 5000}, "referrer"),
    ({"tracker": "pk_acme", "custom": [1, 2]}, "custom"),
    ({"tracker": "pk_acme", "custom": {"a": {"nested": 1}}}, "custom"),
    ({"tracker": "pk_acme", "session_id": 12}, "session_id"),
])
def test_bad_fields_get_400_naming_the_field(daemon: Daemon, body: Any, field: str) -> None:
    status, err = post(daemon, body)
    assert status == 400
    assert err["error"]["message"].startswith(f"{field}:"), err


def test_not_json_and_unknown_key(daemon: Daemon) -> None:
    status, err = daemon.http("POST", "/v1/sessions", None, admin=False,
                              headers={"Content-Type": "application/json"})
    assert status == 400
    status, err = post(daemon, {"tracker": "pk_nobody"})
    assert status == 404 and err["error"]["code"] == "unknown_tracker"


def test_cors_preflight_and_headers(daemon: Daemon) -> None:
    status, _ = daemon.http("OPTIONS", "/v1/sessions", admin=False, headers={
        "Origin": "https://acme.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204
    import urllib.request

    req = urllib.request.Request(daemon.base + "/t.js", headers={"Origin": "https://x.example"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Content-Type"].startswith("application/javascript")
        assert len(resp.read()) < 6000


def test_1000_concurrent_visitors_against_a_pool_of_100(tmp_path: Path, store_url: str) -> None:
    sip, http = free_port(), free_port()
    text = config(sip, http, acme(paid=[f"{DEFAULT[:-1]}8"], web=POOL), store=store_url)
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        answers = asyncio.run(_storm(daemon.base, 1000))
    finally:
        assert daemon.stop() == 0
    dynamic = [a["number"] for a in answers if a["kind"] == "dynamic"]
    assert len(answers) == 1000
    assert len(dynamic) == 100
    assert sorted(dynamic) == sorted(POOL)  # no number held twice
    assert [a["number"] for a in answers if a["kind"] != "dynamic"] == [DEFAULT] * 900
    assert len({a["session_id"] for a in answers}) == 1000


async def _storm(base: str, n: int) -> list[dict[str, Any]]:
    # no connection limit: all n requests are open at once, each on its own connection
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        async def one(i: int) -> dict[str, Any]:
            async with s.post(f"{base}/v1/sessions",
                              json={"tracker": "pk_acme", "client_id": f"c{i}"}) as r:
                assert r.status == 200, await r.text()
                data: dict[str, Any] = await r.json()
                return data

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_rate_limit_gives_default_number_not_an_error(tmp_path: Path) -> None:
    sip, http = free_port(), free_port()
    daemon = start_daemon(tmp_path, config(
        sip, http, session_rate_limit=6, session_rate_burst=3), sip, http)
    try:
        kinds = []
        first = None
        for _ in range(5):
            status, a = post(daemon, {"tracker": "pk_acme"})
            assert status == 200
            kinds.append(a["kind"])
            first = first or a
        assert kinds == ["dynamic"] * 3 + ["default"] * 2
        assert first is not None
        # a visitor renewing its own session is not a new session: not limited
        status, again = post(daemon, {"tracker": "pk_acme", "session_id": first["session_id"]})
        assert status == 200 and again["number"] == first["number"]
    finally:
        assert daemon.stop() == 0


OTHER_SITE = tracker("other", "+74990008888", "sip:127.0.0.1:5070",
                     pools=[{"name": "web", "sources": ["*"], "numbers": ["+74990008001"]}])


def test_a_session_of_another_site_does_not_pass_the_rate_limit(tmp_path: Path) -> None:
    sip, http = free_port(), free_port()
    daemon = start_daemon(tmp_path, config(
        sip, http, acme(), OTHER_SITE, session_rate_limit=6, session_rate_burst=3), sip, http)
    try:
        status, elsewhere = post(daemon, {"tracker": "pk_other"})
        assert status == 200 and elsewhere["kind"] == "dynamic"
        kinds = [post(daemon, {"tracker": "pk_acme"})[1]["kind"] for _ in range(3)]
        assert kinds == ["dynamic"] * 2 + ["default"]  # one bucket per address
        # an id from the other site is no renewal here: limited like a new visitor
        status, bot = post(daemon, {"tracker": "pk_acme",
                                    "session_id": elsewhere["session_id"]})
        assert status == 200 and bot["kind"] == "default" and bot["number"] == DEFAULT
        # while the other site's visitor still renews its own session
        status, again = post(daemon, {"tracker": "pk_other",
                                      "session_id": elsewhere["session_id"]})
        assert status == 200 and again["number"] == elsewhere["number"]
    finally:
        assert daemon.stop() == 0
