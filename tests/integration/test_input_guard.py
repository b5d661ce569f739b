"""Input that cannot poison storage, driven against the running daemon: a lone surrogate
in a session field is refused with 400 naming the field, deep JSON gets 400 (not a 500
RecursionError), and afterwards sessions, calls and /v1/stats all keep working."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Receiver, Sipp, free_port, start_daemon, store_at
from .test_tracking_flow import POOL, Env, call, config


@dataclass
class Guarded:
    daemon: Daemon
    pbx: int
    receiver: Receiver


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def guarded(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """One daemon per store for the module: the tests send it bad input, which it refuses
    without writing anything, and one good visitor with a call, which no other test counts."""
    tmp = tmp_path_factory.mktemp(f"guard-{request.param}")
    receiver = Receiver(free_port())
    receiver.start()
    try:
        with store_at(request.param, tmp) as store:
            sip, http, pbx = free_port(), free_port(), free_port()
            d = start_daemon(tmp, config(sip, http, pbx, receiver.url, store), sip, http)
            try:
                yield Guarded(d, pbx, receiver)
            finally:
                d.stop()
    finally:
        receiver.stop()


@pytest.fixture
def daemon(guarded: Guarded) -> tuple[Daemon, int]:
    return guarded.daemon, guarded.pbx


def post_raw(d: Daemon, path: str, body: bytes,
             content_type: str = "application/json") -> tuple[int, Any]:
    req = urllib.request.Request(d.base + path, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())  # every error answers JSON


def test_lone_surrogate_is_refused_and_nothing_is_poisoned(
    guarded: Guarded, sipp_factory: Callable[..., Sipp]
) -> None:
    d, pbx, receiver = guarded.daemon, guarded.pbx, guarded.receiver
    # exactly the body: the JSON escape of a lone surrogate, unauthenticated
    status, body = post_raw(d, "/v1/sessions", b'{"tracker":"pk_acme","utm_source":"x\\ud800"}')
    assert status == 400, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["message"].startswith("utm_source:")
    # in a nested field, and as text/plain (no CORS preflight): the same guard
    status, body = post_raw(d, "/v1/sessions",
                            b'{"tracker":"pk_acme","custom":{"k":"\\udc00"}}', "text/plain")
    assert status == 400 and body["error"]["message"].startswith("custom.k:"), body

    # a good visitor afterwards: the session is written, the call recorded, stats answer
    status, session = d.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "utm_source": "google", "utm_medium": "cpc"}, admin=False)
    assert status == 200 and session["number"] in POOL, session
    call(Env(d.config.parent, d, pbx, d.config.read_text()), sipp_factory, session["number"])
    cdr = d.wait_call(lambda c: c["did"] == session["number"], timeout=30)
    assert cdr["attribution"]["kind"] == "dynamic"
    assert cdr["attribution"]["session"]["utm_source"] == "google"
    assert "reason" not in cdr
    receiver.wait_event("call.ended", session["number"], timeout=30)
    status, stats = d.http("GET", "/v1/stats")
    assert status == 200, stats
    acme = stats["trackers"][0]
    assert acme["calls"] >= 1
    status, again = d.http("POST", "/v1/sessions", {"tracker": "pk_acme",
                                                   "session_id": session["session_id"]},
                           admin=False)
    assert status == 200 and again["number"] == session["number"]


def test_deep_json_and_oversized_bodies_get_json_errors(daemon: tuple[Daemon, int]) -> None:
    d, _ = daemon
    for depth in (17, 1000, 30000):
        status, body = post_raw(d, "/v1/sessions", b"[" * depth + b"]" * depth)
        assert status == 400, (depth, body)
        assert "nests deeper than" in body["error"]["message"]
    status, body = post_raw(d, "/v1/sessions", b'{"tracker":"pk_acme","x":"' + b"a" * 70000
                            + b'"}')
    assert status == 413, body
    # not JSON at all: the handler's own answer
    status, body = post_raw(d, "/v1/sessions", b"{nope")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = post_raw(d, "/v1/sessions", b'{"tracker":"pk_acme"}')
    assert status == 200, body


def test_slow_clients_are_cut_off(tmp_path: Path, receiver: Receiver) -> None:
    """Headers dribbled byte by byte and a body that never comes: both connections are
    closed by the daemon (http.header_timeout, http.body_timeout), the API goes on."""
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url).replace(
        'admin_token = "', 'header_timeout = "1s"\nbody_timeout = "1s"\nadmin_token = "')
    d = start_daemon(tmp_path, cfg, sip, http)
    try:
        loris = socket.create_connection(("127.0.0.1", http), 5)
        body = socket.create_connection(("127.0.0.1", http), 5)
        body.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{")
        loris.sendall(b"GET /healthz HTTP/1.1\r\n")
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                loris.sendall(b"X")  # one header byte at a time
                loris.settimeout(0.3)
                closed = loris.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed, "a connection dribbling its headers was kept open"
        body.settimeout(30)
        answer = body.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        loris.close()
        body.close()
        status, health = d.http("GET", "/healthz", admin=False)
        assert status == 200, health
    finally:
        d.stop()


def test_snippet_path_and_query_never_reach_the_filesystem(daemon: tuple[Daemon, int]) -> None:
    """`/t.js` is one file read from the package: a query is ignored, and no path that
    tries to climb out of it names a file."""
    d, _ = daemon
    with urllib.request.urlopen(d.base + "/t.js?../../etc/passwd", timeout=10) as resp:
        assert resp.status == 200 and b"calltrackd" in resp.read()
    for path in ("/t.js/../../etc/passwd", "/t.js%2F..%2F..%2Fetc%2Fpasswd",
                 "/../../etc/passwd", "/static/../../pyproject.toml"):
        with socket.create_connection(("127.0.0.1", d.http_port), 10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 404 Not Found", (path, answer[:200])
        assert b"root:" not in answer and b"[project]" not in answer


def test_odd_query_parameters_get_400_not_500(daemon: tuple[Daemon, int]) -> None:
    d, _ = daemon
    for query in ("limit=%C2%B2", "since=" + "9" * 400, "until=%C2%B9%C2%B9",
                  "since=99999999999999999999", "cursor=%ED%A0%80"):
        status, body = d.http("GET", f"/v1/calls?{query}")
        assert status == 400, (query, status, body)
        assert body["error"]["code"] == "invalid_parameter"
    status, body = d.http("GET", "/v1/stats?since=" + "9" * 400)
    assert status == 400, body
