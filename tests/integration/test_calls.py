"""Call flows through the running daemon: SIPp as the carrier (UAC) and as the PBX (UAS),
over UDP and over TCP. Each test checks what SIPp saw and the CDR the API returns."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import (
    CALLER,
    LOOPBACK,
    Daemon,
    Sipp,
    SipTrace,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)

DID_MAIN = "+74990000001"  # → PBX A
DID_FAILOVER = "+74990000002"  # → PBX A, then PBX B
DID_RING = "+74990000003"  # → PBX A, ring_timeout 2s
DID_AUTH = "+74990000004"  # → a SIP account with digest credentials
DID_RING_FAILOVER = "+74990000005"  # → PBX A, ring_timeout 2s, then PBX B
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
    a, b = pbx_uri(pbx_a, transport), pbx_uri(pbx_b, transport)
    return daemon_toml(
        sip, http,
        tracker("main", "+74990000000", a, ring_timeout="20s",
                static=[{"number": DID_MAIN, "channel": "billboard"}]),
        tracker("failover", DID_FAILOVER, a, b, ring_timeout="20s"),
        tracker("ring", DID_RING, a, ring_timeout="2s"),
        tracker("ring_failover", DID_RING_FAILOVER, a, b, ring_timeout="2s"),
        tracker("auth", DID_AUTH, {"uri": a, "username": "acme", "password": "s3cret"}),
        sip={"listen": [f"udp:127.0.0.1:{sip}", f"tcp:127.0.0.1:{sip}"],
             "max_call_duration": "1h", "shutdown_grace": "10s"},
        log={"level": "debug", "format": "json"},
        carriers=[{**LOOPBACK, "addresses": [carriers], "did_from": "ruri"}])


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


def forwarded_call_ids(pbx: Sipp) -> list[str]:
    """The call ids the forwarded INVITEs named in X-Calltrackd-Call, first seen first."""
    ids: list[str] = []
    for msg in pbx.traces():
        in_dialog = ";tag=" in (msg.header("To") or "")  # a re-INVITE names no call
        if msg.sent or in_dialog or not msg.start_line.startswith("INVITE "):
            continue
        call_id = msg.header("X-Calltrackd-Call")
        assert call_id, msg.raw[:600]
        if call_id not in ids:
            ids.append(call_id)
    return ids


def record(plan: Plan, pbx: Sipp, timeout: float = 10.0) -> dict[str, Any]:
    """The CDR of the one call the PBX received, by the id its INVITE carried, once the
    call has its final outcome: not merely the newest call to the same DID."""
    ids = forwarded_call_ids(pbx)
    assert len(ids) == 1, ids
    return fetch_record(plan.daemon, ids[0], timeout)


def fetch_record(daemon: Daemon, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = daemon.http("GET", f"/v1/calls/{call_id}")
        if status == 200 and body["outcome"] is not None:
            assert body["id"] == call_id
            return dict(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished record of {call_id}: {status} {body}")
        time.sleep(0.1)


def message(sipp: Sipp, *, sent: bool, start: str, method: str = "INVITE") -> SipTrace:
    """The first message SIPp sent (or received) whose start line begins with `start`
    and whose CSeq names `method`."""
    for msg in sipp.traces():
        if msg.sent is sent and msg.start_line.startswith(start) and msg.cseq_method == method:
            return msg
    raise AssertionError(f"{sipp.name} {'sent' if sent else 'received'} no {start!r} "
                         f"({method}); it saw {[m.start_line for m in sipp.traces()]}")


def assert_sdp_relayed(sender: Sipp, receiver: Sipp, start: str, method: str = "INVITE"
                       ) -> None:
    """The body the receiver got is the one the sender sent, byte for byte."""
    sent = message(sender, sent=True, start=start, method=method)
    got = message(receiver, sent=False, start=start, method=method)
    assert sent.body.startswith(b"v=0\r\n"), sent.raw
    assert got.body == sent.body
    assert got.header("Content-Type") == sent.header("Content-Type") == "application/sdp"


def received_codes(sipp: Sipp) -> set[int]:
    return {int(m.start_line.split()[1]) for m in sipp.traces()
            if not m.sent and m.start_line.startswith("SIP/2.0 ")}


def test_answered_call_caller_hangs_up(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_answer.xml")
    carrier = uac(plan, sipp_factory, "uac_call.xml", DID_MAIN, "-d", "2000")
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    # the PBX saw the caller's number and the dialled DID, and the caller's SDP as sent
    invite = message(pbx, sent=False, start="INVITE ")
    assert invite.start_line.startswith(f"INVITE sip:{DID_MAIN}@"), invite.start_line
    assert f"sip:{CALLER}@" in (invite.header("From") or ""), invite.raw[:600]
    assert_sdp_relayed(carrier, pbx, "INVITE ")
    assert_sdp_relayed(pbx, carrier, "SIP/2.0 200")
    cdr = record(plan, pbx)
    assert cdr["outcome"] == "answered"
    assert cdr["sip_code"] == 200
    assert cdr["hangup_by"] == "caller"
    assert cdr["caller"] == CALLER
    assert cdr["did"] == DID_MAIN
    assert cdr["tracker"] == "main"
    assert cdr["carrier"] == "loopback"  # the [[carriers]] entry the call came in by
    assert abs(float(cdr["talk_seconds"]) - 2.0) < 0.5, cdr
    assert cdr["answered_at"] and cdr["ended_at"]
    assert plan.daemon.wait_call(lambda c: c["id"] == cdr["id"]) == cdr  # listed as well
    # one log line at the start and one at the end of the call, SIP traces at debug level
    lines = [json.loads(ln) for ln in plan.daemon.log_text().splitlines()
             if ln.startswith("{") and cdr["id"] in ln]
    events = {ln["event"]: ln for ln in lines}
    assert events["call.started"]["did"] == DID_MAIN
    assert events["call.started"]["caller"] == CALLER
    ended = events["call.ended"]
    assert (ended["outcome"], ended["sip_code"], ended["hangup_by"]) == ("answered", 200, "caller")
    assert '"event": "sip.in"' in plan.daemon.log_text()


def test_answered_call_callee_hangs_up(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_bye.xml", None, "uas", "-d", "1000")
    carrier = uac(plan, sipp_factory, "uac_callee_bye.xml", DID_MAIN)
    res = carrier.wait(40)
    assert res.ok, res.output  # the caller got the callee's BYE
    assert pbx.wait(10).ok
    cdr = record(plan, pbx)
    assert cdr["outcome"] == "answered"
    assert cdr["hangup_by"] == "callee"
    assert abs(float(cdr["talk_seconds"]) - 1.0) < 0.5, cdr


def test_busy_target_gives_486_and_busy_record(plan: Plan,
                                               sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_486.xml")
    res = uac(plan, sipp_factory, "uac_expect_486.xml", DID_MAIN).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    cdr = record(plan, pbx)
    assert (cdr["outcome"], cdr["sip_code"], cdr["talk_seconds"]) == ("busy", 486, 0.0)


def test_ring_timeout_gives_480_and_no_answer(plan: Plan,
                                              sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_ring_cancel.xml")
    res = uac(plan, sipp_factory, "uac_expect_480.xml", DID_RING).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok  # the PBX got our CANCEL
    cdr = record(plan, pbx)
    assert (cdr["outcome"], cdr["sip_code"]) == ("no_answer", 480)
    assert 1.5 < float(cdr["ring_seconds"]) < 4.0, cdr


def test_caller_cancel_while_ringing_sends_487(plan: Plan,
                                               sipp_factory: Callable[..., Sipp]) -> None:
    pbx = uas(plan, sipp_factory, "uas_ring_cancel.xml")
    res = uac(plan, sipp_factory, "uac_cancel.xml", DID_MAIN).wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok  # the CANCEL reached the PBX
    cdr = record(plan, pbx)
    assert (cdr["outcome"], cdr["hangup_by"], cdr["sip_code"]) == ("cancelled", "caller", 487)


@pytest.mark.parametrize("code", [503, 480, 408])
def test_failover_from_failing_target_to_second(plan: Plan, sipp_factory: Callable[..., Sipp],
                                                code: int) -> None:
    first = uas(plan, sipp_factory, f"uas_{code}.xml", plan.pbx_a, "pbx_a")
    second = uas(plan, sipp_factory, "uas_answer.xml", plan.pbx_b, "pbx_b")
    carrier = uac(plan, sipp_factory, "uac_call.xml", DID_FAILOVER, "-d", "500")
    res = carrier.wait(40)
    assert res.ok, res.output
    assert first.wait(10).ok and second.wait(10).ok  # the refusal was ACKed
    assert code not in received_codes(carrier)  # the caller never heard of the first target
    assert_sdp_relayed(carrier, second, "INVITE ")
    assert_sdp_relayed(second, carrier, "SIP/2.0 200")
    cdr = record(plan, second)
    assert forwarded_call_ids(first) == [cdr["id"]]  # one call hunted both targets
    assert (cdr["outcome"], cdr["sip_code"]) == ("answered", 200)
    assert cdr["target"] == pbx_uri(plan.pbx_b, plan.transport)


def test_first_target_ringing_too_long_hands_call_to_second(
    plan: Plan, sipp_factory: Callable[..., Sipp]
) -> None:
    first = uas(plan, sipp_factory, "uas_ring_cancel.xml", plan.pbx_a, "pbx_a")
    second = uas(plan, sipp_factory, "uas_answer.xml", plan.pbx_b, "pbx_b")
    res = uac(plan, sipp_factory, "uac_call.xml", DID_RING_FAILOVER, "-d", "500").wait(40)
    assert res.ok, res.output
    assert first.wait(10).ok  # the first target got our CANCEL after 2 s of ringing
    assert second.wait(10).ok
    cdr = record(plan, second)
    assert forwarded_call_ids(first) == [cdr["id"]]
    assert (cdr["outcome"], cdr["sip_code"]) == ("answered", 200)
    assert cdr["target"] == pbx_uri(plan.pbx_b, plan.transport)
    assert 2.0 <= float(cdr["ring_seconds"]) < 4.0, cdr


def test_all_targets_failing_relays_last_code(plan: Plan,
                                              sipp_factory: Callable[..., Sipp]) -> None:
    first = uas(plan, sipp_factory, "uas_503.xml", plan.pbx_a, "pbx_a")
    second = uas(plan, sipp_factory, "uas_486.xml", plan.pbx_b, "pbx_b")
    res = uac(plan, sipp_factory, "uac_expect_486.xml", DID_FAILOVER).wait(40)
    assert res.ok, res.output
    assert first.wait(10).ok and second.wait(10).ok
    cdr = record(plan, second)
    assert forwarded_call_ids(first) == [cdr["id"]]
    assert (cdr["outcome"], cdr["sip_code"]) == ("busy", 486)


def test_early_media_183_reaches_caller_with_its_sdp(
    plan: Plan, sipp_factory: Callable[..., Sipp]
) -> None:
    pbx = uas(plan, sipp_factory, "uas_early_media.xml")
    carrier = uac(plan, sipp_factory, "uac_call.xml", DID_MAIN, "-d", "300")
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    assert_sdp_relayed(pbx, carrier, "SIP/2.0 183")
    assert_sdp_relayed(pbx, carrier, "SIP/2.0 200")
    cdr = record(plan, pbx)
    assert (cdr["outcome"], cdr["sip_code"], cdr["hangup_by"]) == ("answered", 200, "caller")
    assert float(cdr["ring_seconds"]) >= 0.5, cdr  # answered after the early media


def test_reinvite_and_info_during_call_are_relayed(
    plan: Plan, sipp_factory: Callable[..., Sipp]
) -> None:
    pbx = uas(plan, sipp_factory, "uas_reinvite.xml")
    carrier = uac(plan, sipp_factory, "uac_reinvite.xml", DID_MAIN)
    res = carrier.wait(40)
    assert res.ok, res.output  # the caller got the PBX's answer to the hold offer
    assert pbx.wait(10).ok  # the PBX got the hold offer
    reinvite = [m for m in carrier.traces() if m.sent and m.start_line.startswith("INVITE ")][-1]
    relayed = [m for m in pbx.traces() if not m.sent and m.start_line.startswith("INVITE ")][-1]
    assert b"a=sendonly" in reinvite.body and relayed.body == reinvite.body
    assert record(plan, pbx)["outcome"] == "answered"


def test_update_from_callee_reaches_caller_and_its_answer_comes_back(
    plan: Plan, sipp_factory: Callable[..., Sipp]
) -> None:
    pbx = uas(plan, sipp_factory, "uas_update.xml")
    carrier = uac(plan, sipp_factory, "uac_update.xml", DID_MAIN)
    res = carrier.wait(40)
    assert res.ok, res.output  # the caller got the PBX's hold offer
    assert pbx.wait(10).ok  # the PBX got the caller's answer to it
    assert_sdp_relayed(pbx, carrier, "UPDATE ", "UPDATE")
    assert_sdp_relayed(carrier, pbx, "SIP/2.0 200", "UPDATE")
    cdr = record(plan, pbx)
    assert (cdr["outcome"], cdr["hangup_by"]) == ("answered", "caller")


def digest_params(value: str) -> dict[str, str]:
    return {k.lower(): quoted or bare
            for k, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', value)}


def assert_digest_answers(challenge: str, request: SipTrace, header: str, username: str,
                          password: str) -> None:
    """The request's credentials answer the challenge (RFC 2617 §3.2.2), checked here
    rather than trusted to SIPp, whose verifyauth reads Authorization only."""
    asked = digest_params(challenge)
    given = digest_params(request.header(header) or "")
    method, uri = request.start_line.split()[:2]
    assert (given.get("username"), given.get("realm"), given.get("nonce"), given.get("uri")) \
        == (username, asked["realm"], asked["nonce"], uri), given

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{username}:{given['realm']}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if "qop" in given:
        expected = md5(f"{ha1}:{given['nonce']}:{given['nc']}:{given['cnonce']}:"
                       f"{given['qop']}:{ha2}")
    else:
        expected = md5(f"{ha1}:{given['nonce']}:{ha2}")
    assert given.get("response") == expected, given


@pytest.mark.parametrize(("scenario", "challenge", "credentials"), [
    ("uas_auth.xml", "WWW-Authenticate", "Authorization"),
    ("uas_proxy_auth.xml", "Proxy-Authenticate", "Proxy-Authorization"),
], ids=["401", "407"])
def test_sip_account_target_gets_digest_credentials(
    plan: Plan, sipp_factory: Callable[..., Sipp], scenario: str, challenge: str,
    credentials: str,
) -> None:
    account = uas(plan, sipp_factory, scenario)
    res = uac(plan, sipp_factory, "uac_call.xml", DID_AUTH, "-d", "300").wait(40)
    assert res.ok, res.output  # a 403 from the account (bad credentials) would fail this
    assert account.wait(10).ok
    refusal = next(m for m in account.traces() if m.sent and m.header(challenge))
    invites = [m for m in account.traces() if not m.sent and m.start_line.startswith("INVITE ")]
    assert invites[0].header(credentials) is None
    retry = next(m for m in invites if m.header(credentials))
    assert_digest_answers(refusal.header(challenge) or "", retry, credentials, "acme", "s3cret")
    assert retry.body == invites[0].body
    assert record(plan, account)["outcome"] == "answered"


def test_unknown_did_gets_404(plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    res = uac(plan, sipp_factory, "uac_expect_404.xml", DID_UNKNOWN).wait(40)
    assert res.ok, res.output
    assert "b2bua.unknown_did" in plan.daemon.log_text()
    # refused before routing: no record
    assert [c for c in plan.daemon.calls(limit="1000") if c["did"] == DID_UNKNOWN] == []


def read_sip(sock: socket.socket) -> bytes:
    """One SIP message from a datagram socket, or the head of one from a stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        if not chunk:
            break
        data += chunk
    return data


def test_options_answered_200(plan: Plan) -> None:
    kind = socket.SOCK_DGRAM if plan.transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", plan.daemon.sip_port))
        port = s.getsockname()[1]
        s.sendall((
            f"OPTIONS sip:127.0.0.1:{plan.daemon.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{plan.transport.upper()} 127.0.0.1:{port};branch=z9hG4bKopt1;rport\r\n"
            "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: opt-{plan.transport}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode())
        data = read_sip(s)
    assert data.startswith(b"SIP/2.0 200 "), data
    assert f"Via: SIP/2.0/{plan.transport.upper()} ".encode() in data, data


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose only carrier is an address the test does not call from, answering
    strangers 403 on UDP too (the UDP default is to drop them: tests/integration/
    test_strangers.py). One for both transports: it never has a call."""
    tmp_path = tmp_path_factory.mktemp("stranger")
    sip, http = free_port(), free_port()
    text = config(sip, http, free_port(), free_port(), "udp", carriers="192.0.2.0/24")
    text = text.replace("[sip]\n", '[sip]\nstranger_policy = "reject"\n', 1)
    daemon = start_daemon(tmp_path, text, sip, http)
    yield daemon
    daemon.stop(signal.SIGTERM)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_invite_from_non_carrier_gets_403(stranger: Daemon, sipp_factory: Callable[..., Sipp],
                                          transport: str) -> None:
    res = sipp_factory("uac", "uac_expect_403.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                       "-timeout", "20s", "-timeout_error",
                       remote=f"127.0.0.1:{stranger.sip_port}", transport=transport).wait(30)
    assert res.ok, res.output
    assert stranger.calls() == []  # refused before routing: no record


def retransmissions(daemon: Daemon) -> float:
    with urllib.request.urlopen(f"{daemon.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(r"^calltrackd_sip_retransmissions_total (\S+)$", text, re.M)
    assert found, "no calltrackd_sip_retransmissions_total in /metrics"
    return float(found[1])


@pytest.mark.parametrize("plan", ["udp"], indirect=True)
def test_udp_with_10_percent_loss_completes_calls(plan: Plan,
                                                  sipp_factory: Callable[..., Sipp]) -> None:
    before = retransmissions(plan.daemon)
    calls = 10
    pbx = sipp_factory("uas", "uas_answer.xml", plan.pbx_a, "-m", str(calls), "-lost", "10",
                       "-timeout", "90s")
    carrier = sipp_factory("uac", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", str(calls),
                           "-r", "5", "-d", "500", "-lost", "10", "-timeout", "90s",
                           "-timeout_error", remote=plan.remote)
    res = carrier.wait(100)
    assert res.ok, res.output
    assert int(res.stats.get("SuccessfulCall(C)", "0")) == calls, res.stats
    assert pbx.wait(30).ok
    ids = forwarded_call_ids(pbx)
    assert len(ids) == calls, ids
    assert [fetch_record(plan.daemon, i)["outcome"] for i in ids] == ["answered"] * calls
    # SIPp dropped some of our datagrams: our transactions retransmitted them
    assert retransmissions(plan.daemon) > before
