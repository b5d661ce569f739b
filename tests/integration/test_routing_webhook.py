"""The routing webhook end to end: the daemon as a process, a real aiohttp receiver as
the client's system, SIPp as the carrier and the PBXes. The answer chooses a target,
rejects, names the caller; a slow, failing or malformed answer, or one naming a target
the tracker does not have, leaves the call to the rules, and nothing else is dialled (a
SIPp UAS on an unconfigured port receives nothing)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from calltrackd.webhooks.signing import verify

from .conftest import (
    LOOPBACK,
    Daemon,
    Receiver,
    Sipp,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)
from .test_calls import fetch_record, forwarded_call_ids

SECRET = "routing-secret-0123456789"
CHOOSE, SLOW, FAILING, MALFORMED, UNKNOWN, RELAY, REJECT = (
    f"+7499000008{i}" for i in range(7))


@dataclass
class Client(Receiver):
    """The client's system: answers each DID's routing request as `answers` says: a JSON
    answer, ("status", code), ("sleep", seconds) or ("raw", bytes)."""

    answers: dict[str, Any] = field(default_factory=dict)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc = json.loads(body)
        self.received.append({"headers": dict(request.headers), "body": body, "json": doc})
        answer = self.answers.get(doc["did"])
        if isinstance(answer, tuple) and answer[0] == "status":
            return web.Response(status=answer[1], text="no")
        if isinstance(answer, tuple) and answer[0] == "sleep":
            await asyncio.sleep(answer[1])
            return web.json_response({"targets": ["support"]})
        if isinstance(answer, tuple) and answer[0] == "raw":
            return web.Response(body=answer[1], content_type="application/json")
        return web.json_response(answer)

    def request(self, did: str) -> dict[str, Any]:
        found = [r for r in self.received if r["json"]["did"] == did]
        assert len(found) == 1, [r["json"]["did"] for r in self.received]
        return found[0]


@dataclass
class Setup:
    daemon: Daemon
    client: Client
    sales: int
    support: int
    stranger: int  # a port no configuration names


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("routing-webhook")
    sip, http, sales, support, stranger = (free_port() for _ in range(5))
    client = Client(free_port())
    client.answers = {
        CHOOSE: {"targets": ["support"], "caller_name": "VIP \"Ivanov\"\r\nX: y"},
        SLOW: ("sleep", 3.0),
        FAILING: ("status", 500),
        MALFORMED: ("raw", b"{not json"),
        UNKNOWN: {"targets": ["stranger"]},
        RELAY: {"targets": [pbx_uri(stranger)]},
        REJECT: {"reject": 486},
    }
    client.start()
    text = daemon_toml(
        sip, http,
        tracker("acme", "+74990000079",
                {"uri": pbx_uri(sales), "name": "sales"},
                {"uri": pbx_uri(support), "name": "support"},
                ring_timeout="20s",
                static=[{"number": n, "channel": f"line{i}"} for i, n in enumerate(
                    (CHOOSE, SLOW, FAILING, MALFORMED, UNKNOWN, RELAY, REJECT))],
                # the rules: everything to sales only
                routes=[{"name": "all_to_sales", "forward": ["sales"]}],
                routing_webhook={"url": client.url, "secret": SECRET, "timeout": "0.5s"}),
        log={"level": "debug", "format": "json"},
        carriers=[{**LOOPBACK, "did_from": "ruri"}])
    daemon = start_daemon(tmp, text, sip, http)
    yield Setup(daemon, client, sales, support, stranger)
    code = daemon.stop()
    client.stop()
    assert code == 0, daemon.log_text()[-3000:]


def call(s: Setup, sipp_factory: Callable[..., Sipp], did: str, answered_by: str,
         scenario: str = "uac_call.xml") -> tuple[Sipp, Sipp]:
    """A call to `did`, with SIPp PBXes on the sales, support and the stranger's port;
    the one named `answered_by` must take it, the others must see nothing."""
    pbxes = {name: sipp_factory(name, "uas_answer.xml", port, "-m", "1", "-timeout", "40s")
             for name, port in (("sales", s.sales), ("support", s.support),
                                ("stranger", s.stranger))}
    carrier = sipp_factory("uac", scenario, free_port(), "-s", did, "-m", "1", "-d", "300",
                           "-timeout", "30s", "-timeout_error",
                           remote=f"127.0.0.1:{s.daemon.sip_port}")
    res = carrier.wait(40)
    assert res.ok, res.output
    time.sleep(0.5)  # anything dialled late would have arrived by now
    for name, pbx in pbxes.items():
        got = [m for m in pbx.traces() if not m.sent and m.start_line.startswith("INVITE")]
        if name == answered_by:
            assert pbx.wait(20).ok
            assert len(got) == 1
        else:
            assert got == [], f"{name} was dialled"
    return carrier, pbxes[answered_by] if answered_by in pbxes else carrier


def test_answer_chooses_the_target_and_names_the_caller(
        setup: Setup, sipp_factory: Callable[..., Sipp]) -> None:
    _, pbx = call(setup, sipp_factory, CHOOSE, "support")
    request = setup.client.request(CHOOSE)
    assert verify(SECRET, request["body"], request["headers"]["X-Calltrackd-Signature"])
    doc = request["json"]
    assert doc["event"] == "call.routing" and doc["tracker"] == "acme"
    assert doc["targets"] == ["sales", "support"]
    assert doc["rules"] == {"rule": "all_to_sales", "targets": ["sales"]}
    assert doc["attribution"]["channel"] == "line0"
    [invite] = [m for m in pbx.traces() if not m.sent and m.start_line.startswith("INVITE")]
    assert (invite.header("From") or "").startswith('"VIP IvanovX: y" <')
    cdr = fetch_record(setup.daemon, forwarded_call_ids(pbx)[0])
    assert cdr["target"] == pbx_uri(setup.support)


@pytest.mark.parametrize(("did", "reason"), [
    (SLOW, "timeout"), (FAILING, "status 500"), (MALFORMED, "not JSON"),
    (UNKNOWN, "targets: 'stranger' is not one of this tracker's named targets"),
    (RELAY, "targets: 'sip:127.0.0.1:")],
    ids=["slow", "failing", "malformed", "unknown_target", "uri"])
def test_no_usable_answer_leaves_the_call_to_the_rules(
        setup: Setup, sipp_factory: Callable[..., Sipp], did: str, reason: str) -> None:
    _, sales = call(setup, sipp_factory, did, "sales")
    assert setup.client.request(did)
    [call_id] = forwarded_call_ids(sales)
    lines = [json.loads(line) for line in setup.daemon.log_text().splitlines()
             if '"b2bua.routing_webhook_ignored"' in line and call_id in line]
    assert len(lines) == 1 and lines[0]["reason"].startswith(reason), lines
    assert fetch_record(setup.daemon, call_id)["target"] == pbx_uri(setup.sales)


def test_answer_rejects_the_call(setup: Setup, sipp_factory: Callable[..., Sipp]) -> None:
    # the caller hears ringing while the webhook is asked: a 180 before the 486, though
    # no PBX is dialled (the scenario requires it)
    call(setup, sipp_factory, REJECT, "nobody", "uac_ringing_then_486.xml")
    assert setup.client.request(REJECT)


def test_routing_webhook_config_problems_name_their_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(daemon_toml(
        free_port(), free_port(),
        tracker("acme", "+74990000079", "sip:127.0.0.1:5070",
                routing_webhook={"url": "ftp://x", "timeout": "60s", "colour": 1,
                                 "ringing": "yes"})))
    out = subprocess.run([sys.executable, "-m", "calltrackd", "check-config", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    for key in ("routing_webhook.colour", "routing_webhook.url", "routing_webhook.secret",
                "routing_webhook.timeout", "routing_webhook.ringing"):
        assert f"trackers[0].{key}" in text, text
