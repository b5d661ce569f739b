"""Call flows through the running daemon: SIPp as the carrier (UAC) and as the PBX (UAS),
over UDP and over TCP. Each test checks what SIPp saw and the CDR the API returns."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ADMIN, CALLER, Daemon, Sipp, free_port, start_daemon

DID_MAIN = "+74990000001"  # → PBX A
DID_FAILOVER = "+74990000002"  # → PBX A, then PBX B
DID_RING = "+74990000003"  # → PBX A, ring_timeout 2s
DID_AUTH = "+74990000004"  # → a SIP account with digest credentials
DID_UNKNOWN = "+74995555555"


@dataclass
class Plan:
    daemon: Daemon
    transport: str
    pbx_a: int
    pbx_b: int

    @property
    def remote(self) -> str:
        return f"127.0.0.1:{self.daemon.sip_port}"


def config(sip: int, http: int, pbx_a: int, pbx_b: int, transport: str,
           carriers: str = "127.0.0.0/8") -> str:
    def target(port: int) -> str:
        return f'"sip:127.0.0.1:{port};transport={transport}"'

    return f"""
[sip]
listen = ["udp:127.0.0.1:{sip}", "tcp:127.0.0.1:{sip}"]
max_call_duration = "1h"
shutdown_grace = "10s"

[http]
listen = "127.0.0.1:{http}"
admin_token = "{ADMIN}"

[store]
url = "sqlite:///./var/calltrackd.db"

[log]
level = "debug"
format = "json"

[[carriers]]
name = "loopback"
addresses = ["{carriers}"]
did_from = "ruri"
default_country = "RU"

[[trackers]]
id = "main"
public_key = "pk_main"
default_number = "+74990000000"
forward = [{target(pbx_a)}]
ring_timeout = "20s"
  [[trackers.static]]
  number = "{DID_MAIN}"
  channel = "billboard"

[[trackers]]
id = "failover"
public_key = "pk_failover"
default_number = "{DID_FAILOVER}"
forward = [{target(pbx_a)}, {target(pbx_b)}]
ring_timeout = "20s"

[[trackers]]
id = "ring"
public_key = "pk_ring"
default_number = "{DID_RING}"
forward = [{target(pbx_a)}]
ring_timeout = "2s"

[[trackers]]
id = "auth"
public_key = "pk_auth"
default_number = "{DID_AUTH}"
forward = [{{uri = {target(pbx_a)}, username = "acme", password = "s3cret"}}]
"""


@pytest.fixture(scope="module", params=["udp", "tcp"])
def plan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Plan]:
    transport = request.param
    tmp = tmp_path_factory.mktemp(f"daemon-{transport}")
    sip, http, a, b = free_port(), free_port(), free_port(), free_port()
    daemon = start_daemon(tmp, config(sip, http, a, b, transport), sip, http)
    yield Plan(daemon, transport, a, b)
    assert daemon.stop() == 0, daemon.log_text()[-3000:]


def uac(plan: Plan, sipp_factory: Callable[..., Sipp], scenario: str, did: str,
        *args: str) -> Sipp:
    return sipp_factory("uac", scenario, free_port(), "-s", did, "-m", "1",
                        "-timeout", "30s", "-timeout_error", *args, remote=plan.remote,
                        transport=plan.transport)


def uas(plan: Plan, sipp_factory: Callable[..., Sipp], scenario: str, port: int | None = None,
        name: str = "uas", *args: str) -> Sipp:
    return sipp_factory(name, scenario, port or plan.pbx_a, "-m", "1", "-timeout", "30s",
                        *args, transport=plan.transport)


def finished(plan: Plan, did: str) -> dict[str, object]:
    return plan.daemon.wait_call(lambda c: c["did"] == did, limit="5")


def test_answered_call_caller_hangs_up(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_answer.xml")
    carrier = uac(plan, sipp_factory, "uac_call.xml", DID_MAIN, "-d", "2000")
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    # the PBX saw the caller's number and the dialled DID
    invite = pbx.messages().split("INVITE sip:", 1)[1]
    assert invite.startswith(DID_MAIN), invite[:200]
    assert f"sip:{CALLER}@" in invite.split("\n\n")[0]
    assert "m=audio" in invite  # the SDP passed unchanged
    cdr = finished(plan, DID_MAIN)
    assert cdr["outcome"] == "answered"
    assert cdr["sip_code"] == 200
    assert cdr["hangup_by"] == "caller"
    assert cdr["caller"] == CALLER
    assert cdr["tracker"] == "main"
    assert abs(float(cdr["talk_seconds"]) - 2.0) < 0.5, cdr  # type: ignore[arg-type]
    assert cdr["answered_at"] and cdr["ended_at"]
    status, one = plan.daemon.http("GET", f"/v1/calls/{cdr['id']}")
    assert status == 200 and one["id"] == cdr["id"]
    # one log line at the start and one at the end of the call, SIP traces at debug level
    lines = [json.loads(ln) for ln in plan.daemon.log_text().splitlines()
             if ln.startswith("{") and cdr["id"] in ln]
    events = {ln["event"]: ln for ln in lines}
    assert events["call started"]["did"] == DID_MAIN
    assert events["call started"]["caller"] == CALLER
    ended = events["call ended"]
    assert (ended["outcome"], ended["sip_code"], ended["hangup_by"]) == ("answered", 200, "caller")
    assert '"event": "sip in"' in plan.daemon.log_text()


def test_answered_call_callee_hangs_up(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_bye.xml", None, "uas", "-d", "1000")
    carrier = uac(plan, sipp_factory, "uac_callee_bye.xml", DID_MAIN)
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    cdr = finished(plan, DID_MAIN)
    assert cdr["outcome"] == "answered"
    assert cdr["hangup_by"] == "callee"
    assert abs(float(cdr["talk_seconds"]) - 1.0) < 0.5, cdr  # type: ignore[arg-type]


def test_busy_target_gives_486_and_busy_record(plan: Plan,
                                               sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_486.xml")
    res = uac(plan, sipp_factory, "uac_expect_486.xml", DID_MAIN).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    cdr = finished(plan, DID_MAIN)
    assert (cdr["outcome"], cdr["sip_code"], cdr["talk_seconds"]) == ("busy", 486, 0.0)


def test_ring_timeout_gives_480_and_no_answer(plan: Plan,
                                              sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_ring_cancel.xml")
    res = uac(plan, sipp_factory, "uac_expect_480.xml", DID_RING).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok  # the PBX got our CANCEL
    cdr = finished(plan, DID_RING)
    assert (cdr["outcome"], cdr["sip_code"]) == ("no_answer", 480)
    assert 1.5 < float(cdr["ring_seconds"]) < 4.0, cdr  # type: ignore[arg-type]


def test_caller_cancel_while_ringing_sends_487(plan: Plan,
                                               sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_ring_cancel.xml")
    res = uac(plan, sipp_factory, "uac_cancel.xml", DID_MAIN).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok  # the CANCEL reached the PBX
    cdr = finished(plan, DID_MAIN)
    assert (cdr["outcome"], cdr["hangup_by"], cdr["sip_code"]) == ("cancelled", "caller", 487)


def test_failover_from_failing_target_to_second(plan: Plan,
                                                sipp_factory: Callable[..., Sipp]) -> None:
    first = uas(plan, sipp_factory, "uas_503.xml", plan.pbx_a, "pbx_a")
    second = uas(plan, sipp_factory, "uas_answer.xml", plan.pbx_b, "pbx_b")
    res = uac(plan, sipp_factory, "uac_call.xml", DID_FAILOVER, "-d", "500").wait(40)
    assert res.ok, res.output
    assert first.wait(10).ok and second.wait(10).ok
    cdr = finished(plan, DID_FAILOVER)
    assert cdr["outcome"] == "answered"
    assert cdr["target"] == f"sip:127.0.0.1:{plan.pbx_b};transport={plan.transport}"


def test_all_targets_failing_relays_last_code(plan: Plan,
                                              sipp_factory: Callable[..., Sipp]) -> None:
    first = uas(plan, sipp_factory, "uas_503.xml", plan.pbx_a, "pbx_a")
    second = uas(plan, sipp_factory, "uas_486.xml", plan.pbx_b, "pbx_b")
    res = uac(plan, sipp_factory, "uac_expect_486.xml", DID_FAILOVER).wait(40)
    assert res.ok, res.output
    assert first.wait(10).ok and second.wait(10).ok
    cdr = finished(plan, DID_FAILOVER)
    assert (cdr["outcome"], cdr["sip_code"]) == ("busy", 486)


def test_reinvite_and_info_during_call_are_relayed(
    plan: Plan, sipp_factory: Callable[..., Sipp]
) -> None:
    pbx = uas(plan, sipp_factory, "uas_reinvite.xml")
    res = uac(plan, sipp_factory, "uac_reinvite.xml", DID_MAIN).wait(40)
    assert res.ok, res.output  # the caller got the PBX's answer to the hold offer
    assert pbx.wait(10).ok  # the PBX got the hold offer
    assert finished(plan, DID_MAIN)["outcome"] == "answered"


def test_sip_account_target_gets_digest_credentials(plan: Plan,
                                                    sipp_factory: Callable[..., Sipp]) -> None:
    account = uas(plan, sipp_factory, "uas_auth.xml")
    res = uac(plan, sipp_factory, "uac_call.xml", DID_AUTH, "-d", "300").wait(40)
    assert res.ok, res.output  # a 403 from the account (bad credentials) would fail this
    assert account.wait(10).ok
    assert finished(plan, DID_AUTH)["outcome"] == "answered"


def test_unknown_did_gets_404(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    res = uac(plan, sipp_factory, "uac_expect_404.xml", DID_UNKNOWN).wait(40)
    assert res.ok, res.output


def test_options_answered_200(plan: Plan) -> None:
    import socket

    msg = (
        f"OPTIONS sip:127.0.0.1:{plan.daemon.sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKopt1;rport\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
        "Call-ID: opt1@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendto(msg.encode(), ("127.0.0.1", plan.daemon.sip_port))
        data, _ = s.recvfrom(65535)
    assert data.startswith(b"SIP/2.0 200 ")


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose only carrier is an address the test does not call from."""
    sip, http = free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, free_port(), free_port(), "udp",
                                           carriers="192.0.2.0/24"), sip, http)
    yield daemon
    daemon.stop(signal.SIGTERM)


def test_invite_from_non_carrier_gets_403(stranger: Daemon,
                                          sipp_factory: Callable[..., Sipp]) -> None:
    res = sipp_factory("uac", "uac_expect_403.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                       "-timeout", "20s", "-timeout_error",
                       remote=f"127.0.0.1:{stranger.sip_port}").wait(30)
    assert res.ok, res.output
    assert stranger.calls() == []  # refused before routing: no record


@pytest.mark.parametrize("plan", ["udp"], indirect=True)
def test_udp_with_10_percent_loss_completes_calls(plan: Plan,
                                                  sipp_factory: Callable[..., Sipp]) -> None:
    since = f"{time.time():.3f}"
    calls = 10
    pbx = sipp_factory("uas", "uas_answer.xml", plan.pbx_a, "-m", str(calls), "-lost", "10",
                       "-timeout", "90s")
    carrier = sipp_factory("uac", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", str(calls),
                           "-r", "2", "-d", "500", "-lost", "10", "-timeout", "90s",
                           "-timeout_error", remote=plan.remote)
    res = carrier.wait(100)
    assert res.ok, res.output
    assert int(res.stats.get("SuccessfulCall(C)", "0")) == calls, res.stats
    # SIPp dropped some of our datagrams: our transactions retransmitted them
    assert pbx.wait(30).ok
    deadline = time.monotonic() + 10
    while True:
        outcomes = [c["outcome"] for c in plan.daemon.calls(limit="100", tracker="main",
                                                              since=since)]
        if outcomes == ["answered"] * calls or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcomes == ["answered"] * calls
