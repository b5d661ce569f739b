"""Dialogs belong to their peers: a stranger who knows a live call's Call-ID and tags (here
read from the daemon's SIP trace; on a real network, from a leaked capture) sends BYE,
re-INVITE, ACK and CANCEL from 127.0.0.2, an address that is neither the carrier nor the
PBX. Each is refused with 481 (the ACK dropped), neither SIPp (carrier or PBX) sees a
thing, the call goes on and its record is that of a normal call. The refusals are counted
and logged once. A refused call's 404 goes on being repeated until the carrier's own
ACK, whoever else sends one copying its INVITE's Via."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, DID_UNKNOWN, config, fetch_record, forwarded_call_ids

STRANGER = "127.0.0.2"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    sip, http, pbx = free_port(), free_port(), free_port()
    # the carrier is 127.0.0.1 only: 127.0.0.2 is nobody
    d = start_daemon(tmp_path, config(sip, http, pbx, free_port(), "udp",
                                      carriers="127.0.0.1/32"), sip, http)
    yield d, pbx
    d.stop()


def traced(daemon: Daemon, direction: str, pred: Callable[[str], bool],
           timeout: float = 20.0, caller: Sipp | None = None) -> str:
    """The first SIP message the daemon traced (log level debug) in `direction` for
    which `pred` holds, waiting for it to appear (while the busy machine makes the
    daemon shed the `caller`'s call, the caller places it again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if caller is not None and caller.again_if_shed():
            deadline = time.monotonic() + timeout
        for line in daemon.log_text().splitlines():
            if line.startswith("{") and f'"sip.{direction}"' in line:
                msg = str(json.loads(line)["message"])
                if pred(msg):
                    return msg
        time.sleep(0.1)
    raise AssertionError(f"no such 'sip {direction}' message in the daemon's log")


def header(msg: str, name: str) -> str:
    found = re.search(rf"^{name}:[ \t]*(.*?)\r$", msg, re.M | re.I)
    assert found, (name, msg)
    return found[1]


def tag(value: str) -> str:
    found = re.search(r";tag=([^;>\s]+)", value)
    assert found, value
    return found[1]


def cseq_is(msg: str, method: str) -> bool:
    return bool(re.search(rf"^CSeq:\s*\d+ {method}\r$", msg, re.M))


class Stranger:
    """A UDP peer on 127.0.0.2 that sends one request at a time and reads the answer."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((STRANGER, 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.daemon = daemon
        self.n = 0

    def send(self, method: str, ruri: str, from_: str, to: str, call_id: str, cseq: str,
             via: str | None = None, body: str = "", answer: bool = True) -> str:
        """The request; the first line of its answer (a 100 Trying skipped), "" for none
        (or without waiting, unless `answer`: an ACK gets none)."""
        self.n += 1
        via = via or f"SIP/2.0/UDP {STRANGER}:{self.port};branch=z9hG4bKstranger{self.n};rport"
        head = [f"{method} {ruri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
                f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq}",
                f"Contact: <sip:evil@{STRANGER}:{self.port}>"]
        if body:
            head.append("Content-Type: application/sdp")
        head.append(f"Content-Length: {len(body.encode())}")
        self.sock.sendto(("\r\n".join(head) + "\r\n\r\n" + body).encode(),
                         ("127.0.0.1", self.daemon.sip_port))
        while answer:  # skip a 100 Trying
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                return ""  # dropped unanswered (the stranger policy, before the engine)
            if not data.startswith("SIP/2.0 100 "):
                return data.split("\r\n", 1)[0]
        return ""

    def close(self) -> None:
        self.sock.close()


EVIL_SDP = ("v=0\r\no=evil 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0\r\n")


def metric_sum(daemon: Daemon, name: str) -> float:
    with urllib.request.urlopen(f"{daemon.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def refusal_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in daemon.log_text().splitlines()
            if ln.startswith("{") and '"b2bua.dialog_refused"' in ln]


def test_stranger_bye_and_reinvite_on_a_live_call_are_refused_and_the_call_goes_on(
    daemon: tuple[Daemon, int], sipp_factory: Callable[..., Sipp]
) -> None:
    d, pbx_port = daemon
    pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "60s")
    carrier = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                           "-d", "4000", "-timeout", "60s", "-timeout_error",
                           remote=f"127.0.0.1:{d.sip_port}")
    # the carrier's leg: our 200 to its INVITE; the PBX's leg: its 200 to ours
    a_ok = traced(d, "out", lambda m: m.startswith("SIP/2.0 200") and cseq_is(m, "INVITE"),
                  caller=carrier)
    b_ok = traced(d, "in", lambda m: m.startswith("SIP/2.0 200") and cseq_is(m, "INVITE"))
    a_from, a_to = header(a_ok, "From"), header(a_ok, "To")
    a_call_id = header(a_ok, "Call-ID")
    b_from, b_to = header(b_ok, "From"), header(b_ok, "To")
    b_call_id = header(b_ok, "Call-ID")
    ruri = f"sip:calltrackd@127.0.0.1:{d.sip_port}"
    stranger = Stranger(d)
    try:
        # as the carrier: BYE and a re-INVITE redirecting the media, with every id right
        assert stranger.send("BYE", ruri, a_from, a_to, a_call_id, "10 BYE") \
            .startswith("SIP/2.0 481 ")
        assert stranger.send("INVITE", ruri, a_from, a_to, a_call_id, "11 INVITE",
                             body=EVIL_SDP).startswith("SIP/2.0 481 ")
        # as the PBX: BYE on its leg (its tag in From, ours in To)
        assert stranger.send("BYE", ruri, b_to, b_from, b_call_id, "10 BYE") \
            .startswith("SIP/2.0 481 ")
        # the carrier's own address with a From tag that is not the carrier's: no match
        assert stranger.send("BYE", ruri, re.sub(r";tag=[^;>\s]+", ";tag=forged", a_from),
                             a_to, a_call_id, "12 BYE").startswith("SIP/2.0 481 ")
        # an ACK for our 2xx, with its SDP: dropped and counted (and, came it before the
        # carrier's, our 2xx would have gone on: tests/unit/b2bua/test_ack_source.py)
        stranger.send("ACK", ruri, a_from, a_to, a_call_id, "1 ACK", body=EVIL_SDP,
                      answer=False)
    finally:
        stranger.close()
    res = carrier.wait(60)
    assert res.ok, res.output  # the carrier's own BYE after 4 s got its 200
    assert pbx.wait(20).ok
    # neither side saw anything of the stranger
    pbx_got = [m.start_line.split()[0] for m in pbx.traces() if not m.sent]
    assert pbx_got == ["INVITE", "ACK", "BYE"], pbx_got
    assert not any(b"127.0.0.2" in m.raw for m in pbx.traces()), "the stranger's SDP leaked"
    carrier_got = [m.start_line for m in carrier.traces() if not m.sent]
    assert all(s.startswith("SIP/2.0 ") for s in carrier_got), carrier_got
    ids = forwarded_call_ids(pbx)
    assert len(ids) == 1
    cdr = fetch_record(d, ids[0])
    assert (cdr["outcome"], cdr["hangup_by"], cdr["sip_code"]) == ("answered", "caller", 200)
    assert float(cdr["talk_seconds"]) >= 3.5, cdr
    assert metric_sum(d, "calltrackd_dialog_rejected_total") == 5
    lines = refusal_lines(d)
    assert len(lines) == 1, lines  # once per source and minute
    assert (lines[0]["source"], lines[0]["reason"]) == (STRANGER, "source")


def test_stranger_cancel_copying_the_carriers_via_does_not_cancel_a_ringing_call(
    daemon: tuple[Daemon, int], sipp_factory: Callable[..., Sipp]
) -> None:
    d, pbx_port = daemon
    pbx = sipp_factory("pbx", "uas_ring_cancel.xml", pbx_port, "-m", "1", "-timeout", "60s")
    carrier = sipp_factory("carrier", "uac_cancel_after.xml", free_port(), "-s", DID_MAIN,
                           "-m", "1", "-d", "3000", "-timeout", "60s", "-timeout_error",
                           remote=f"127.0.0.1:{d.sip_port}")
    invite = traced(d, "in", lambda m: m.startswith("INVITE ") and "Subject:" in m,
                    caller=carrier)
    traced(d, "in", lambda m: m.startswith("SIP/2.0 180"))  # it rings
    ruri = invite.split(" ", 2)[1]
    stranger = Stranger(d)
    try:
        answer = stranger.send("CANCEL", ruri, header(invite, "From"), header(invite, "To"),
                               header(invite, "Call-ID"), "1 CANCEL",
                               via=header(invite, "Via"))
    finally:
        stranger.close()
    # refused by the engine (481), or dropped before it by `[sip] stranger_policy = "drop"`
    assert answer == "" or answer.startswith("SIP/2.0 481 "), answer
    res = carrier.wait(60)
    assert res.ok, res.output  # the carrier's own CANCEL, 3 s later, got 200 and 487
    assert pbx.wait(20).ok  # the PBX got one CANCEL: ours, relaying the carrier's
    assert [m for m in pbx.traces() if not m.sent and m.start_line.startswith("CANCEL")] \
        .__len__() == 1
    cdr = fetch_record(d, forwarded_call_ids(pbx)[0])
    assert (cdr["outcome"], cdr["hangup_by"], cdr["sip_code"]) == ("cancelled", "caller", 487)
    assert float(cdr["ring_seconds"]) >= 2.5, cdr  # rang until the carrier hung up
    if answer:
        assert metric_sum(d, "calltrackd_dialog_rejected_total") == 1
        assert len(refusal_lines(d)) == 1


def test_forged_acks_for_a_refused_calls_404_leave_it_repeated_until_the_carriers_own(
    daemon: tuple[Daemon, int], sipp_factory: Callable[..., Sipp]
) -> None:
    """The carrier (SIPp) acknowledges our 404 only 4 s late; right after the first 404 an
    ACK copying its INVITE's Via comes from the carrier's host at another port (a known
    host, so it reaches the transaction layer) and from 127.0.0.2. Our 404 is repeated
    (Timer G: 0.5, 1.5, 3.5 s) all the same, and stops at the carrier's ACK."""
    d, _ = daemon
    carrier = sipp_factory("carrier", "uac_expect_404_ack_late.xml", free_port(), "-s",
                           DID_UNKNOWN, "-m", "1", "-timeout", "30s", "-timeout_error",
                           remote=f"127.0.0.1:{d.sip_port}")
    invite = traced(d, "in", lambda m: m.startswith("INVITE ") and "Subject:" in m,
                    caller=carrier)
    refused = traced(d, "out", lambda m: m.startswith("SIP/2.0 404"))
    lines = [f"ACK {invite.split(' ', 2)[1]} SIP/2.0", f"Via: {header(invite, 'Via')}",
             f"From: {header(refused, 'From')}", f"To: {header(refused, 'To')}",
             f"Call-ID: {header(refused, 'Call-ID')}", "CSeq: 1 ACK", "Max-Forwards: 70",
             "Content-Length: 0"]
    forged = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for host in ("127.0.0.1", STRANGER):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            sock.sendto(forged, ("127.0.0.1", d.sip_port))
    res = carrier.wait(40)
    assert res.ok, res.output
    got = [m.start_line for m in carrier.traces() if not m.sent]
    # without the rule the forged ACK, sent before 0.5 s, would have left one or two
    assert sum(1 for s in got if s.startswith("SIP/2.0 404 ")) >= 3, got
    # the one from the carrier's host reached the layer and was refused there; 127.0.0.2's
    # (a stranger's ACK naming no dialog of ours) was dropped before it
    assert metric_sum(d, "calltrackd_dialog_rejected_total") == 1
    assert metric_sum(d, "calltrackd_sip_stranger_packets_total") == 1
    assert [(ln["source"], ln["method"], ln["reason"]) for ln in refusal_lines(d)] == [
        ("127.0.0.1", "ACK", "source")]
