"""Calls anchored through a real rtpengine: SIPp carrier and PBX play G.711 A-law RTP
(the capture Debian's sip-tester ships) through rtpengine's ports; calltrackd offers,
answers and deletes, stores the recording, serves it and sends `call.recording` to a
real HTTP receiver. Then rtpengine is stopped: the next call completes direct."""

from __future__ import annotations

import contextlib
import io
import re
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

from tests.audio import rms

from .conftest import (
    ADMIN,
    Daemon,
    Receiver,
    Sipp,
    daemon_toml,
    free_port,
    need,
    pbx_uri,
    start_daemon,
    tracker,
)
from .rtpengine import Rtpengine

DID = "+74990000200"
TALK_MS = 7000  # the capture is 7.05 s of audio


def config(sip: int, http: int, pbx: int, rtp: Rtpengine, recordings: Path, hook: str,
           **media: str) -> str:
    return daemon_toml(
        sip, http, tracker("acme", DID, pbx_uri(pbx), media="anchor", record=True,
                           webhooks=[{"url": hook, "secret": "whsec_media",
                                      "events": ["call.ended", "call.recording"]}]),
        sip={"shutdown_grace": "5s"},
        media={"rtpengine": [rtp.address], "timeout": "1s", "retransmit": "200ms",
               "spool_dir": str(rtp.spool), "recordings_dir": str(recordings), **media})


@contextlib.contextmanager
def anchored_daemon(tmp: Path) -> Iterator[tuple[Rtpengine, Receiver, Daemon, int, int]]:
    """A real rtpengine, a webhook receiver and calltrackd anchoring (and recording) the
    calls to DID through it: rtpengine, receiver, daemon, its SIP port, the PBX's port;
    all stopped after."""
    need("sipp")
    rtp = Rtpengine(tmp / "rtpengine")
    rtp.start()
    receiver = Receiver(free_port())
    receiver.start()
    try:
        sip, http, pbx = free_port(), free_port(), free_port()
        daemon = start_daemon(tmp, config(sip, http, pbx, rtp, tmp / "rec", receiver.url),
                              sip, http)
        try:
            yield rtp, receiver, daemon, sip, pbx
        finally:
            daemon.stop()
    finally:
        receiver.stop()
        rtp.stop()


def one_call(tmp: Path, n: int, sip_port: int, pbx_port: int, uas: str, uac: str,
             talk_ms: int = 0, did: str = DID) -> Sipp:
    """One call to `did`, PBX and carrier each with its own media port; the PBX's SIPp
    (done)."""
    pbx = Sipp(tmp, f"pbx{n}", uas, pbx_port, "-m", "1", "-timeout", "60s",
               "-mi", "127.0.0.1", "-mp", str(free_port()))
    try:
        carrier = Sipp(tmp, f"carrier{n}", uac, free_port(), "-s", did, "-m", "1",
                       "-timeout", "60s", "-timeout_error", "-d", str(talk_ms or 1),
                       "-mi", "127.0.0.1", "-mp", str(free_port()),
                       remote=f"127.0.0.1:{sip_port}")
        res = carrier.wait(90)
        assert res.ok, res.output
        assert pbx.wait(20).ok
    finally:
        pbx.kill()
    return pbx


def audio_port(messages: str) -> int:
    """The m=audio port of the first INVITE the PBX received (or of an SDP)."""
    invite = messages[messages.index("INVITE sip:"):] if "INVITE sip:" in messages \
        else messages
    m = re.search(r"^m=audio (\d+) ", invite, re.M)
    assert m, invite[:2000]
    return int(m.group(1))


def test_anchored_recorded_call_then_rtpengine_down(tmp_path: Path) -> None:
    with anchored_daemon(tmp_path) as (rtp, receiver, daemon, sip, pbx):
        sipp = one_call(tmp_path, 1, sip, pbx, "uas_answer_rtp.xml", "uac_call_rtp.xml",
                        TALK_MS)
        # the PBX was offered rtpengine's port, not the carrier's
        port = audio_port(sipp.messages())
        assert rtp.port_min <= port <= rtp.port_min + 999, port
        event = receiver.wait_event("call.recording", DID, timeout=60)["json"]
        call = event["call"]
        assert call["outcome"] == "answered"
        assert call["media"] == {"mode": "anchor", "recorded": True}
        rec = call["recording"]
        assert rec["url"] == f"/v1/calls/{call['id']}/recording"
        talk = call["talk_seconds"]
        assert abs(rec["seconds"] - talk) <= 1.0, (rec, talk)

        # listen to it as a user would: the file the API serves
        req = urllib.request.Request(daemon.base + rec["url"],
                                     headers={"Authorization": f"Bearer {ADMIN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        assert len(data) == rec["bytes"]
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
            seconds = w.getnframes() / w.getframerate()
            frames = w.readframes(w.getnframes())
        assert abs(seconds - talk) <= 1.0, (seconds, talk)
        samples = memoryview(frames).cast("h")
        left, right = samples[0::2], samples[1::2]
        assert rms(left) > 300 and rms(right) > 300, (rms(left), rms(right))
        # the stored CDR carries it too
        status, stored = daemon.http("GET", f"/v1/calls/{call['id']}")
        assert status == 200 and stored["recording"] == rec, stored

        # rtpengine gone: the next call completes direct, nothing lost
        rtp.stop()
        sipp = one_call(tmp_path, 2, sip, pbx, "uas_answer.xml", "uac_call.xml", 500)
        assert not rtp.port_min <= audio_port(sipp.messages()) <= rtp.port_min + 999
        ended = [e["json"]["call"] for e in receiver.events("call.ended")]
        deadline = time.monotonic() + 30
        while len(ended) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            ended = [e["json"]["call"] for e in receiver.events("call.ended")]
        assert [c["outcome"] for c in ended] == ["answered", "answered"], ended
        assert "recording" not in ended[1]
        assert ended[1]["media"]["mode"] == "direct", ended[1]  # and the record says why
        assert ended[1]["media"]["reason"].startswith("offer: "), ended[1]
        assert "call.media_direct" in daemon.log_text()


def test_call_whose_media_stopped_is_ended_by_the_system(tmp_path: Path) -> None:
    """Both phones play 7 s of audio and then fall silent without a BYE: with a 3 s
    media timeout calltrackd hangs up both legs; the talk time ends at the last media."""
    need("sipp")
    rtp = Rtpengine(tmp_path / "rtpengine")
    rtp.start()
    receiver = Receiver(free_port())
    receiver.start()
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, pbx, rtp, tmp_path / "rec",
                                           receiver.url, media_timeout="3s"), sip, http)
    try:
        started = time.monotonic()
        # both SIPp scenarios pass only if they receive our BYE
        one_call(tmp_path, 1, sip, pbx, "uas_answer_rtp.xml", "uac_rtp_wait_bye.xml")
        took = time.monotonic() - started
        call = receiver.wait_event("call.ended", DID, timeout=30)["json"]["call"]
        assert (call["outcome"], call["hangup_by"], call.get("reason")) == (
            "answered", "system", "media_timeout"), call
        assert 5.5 <= call["talk_seconds"] <= 9.0, call  # the 7 s of audio, not `took`
        assert took >= 9.0, took  # 7 s of audio + at least the 3 s timeout
        assert "call.media_timeout" in daemon.log_text()
    finally:
        daemon.stop()
        receiver.stop()
        rtp.stop()


def test_reinvite_of_an_anchored_call_goes_through_rtpengine(tmp_path: Path) -> None:
    """A hold re-INVITE from the carrier reaches the PBX with rtpengine's SDP (its port,
    the sendonly direction kept), and the PBX's answer comes back through rtpengine."""
    need("sipp")
    rtp = Rtpengine(tmp_path / "rtpengine")
    rtp.start()
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, pbx, rtp, tmp_path / "rec",
                                           "http://127.0.0.1:9/hook"), sip, http)
    try:
        sipp = one_call(tmp_path, 1, sip, pbx, "uas_reinvite.xml", "uac_reinvite.xml")
        invites = [m for m in sipp.traces() if not m.sent and m.start_line.startswith("INVITE ")]
        assert len(invites) == 2
        hold = invites[-1].body.decode()
        assert "a=sendonly" in hold
        assert rtp.port_min <= audio_port(hold) <= rtp.port_min + 999, hold
        assert "call.media_direct" not in daemon.log_text()
    finally:
        daemon.stop()
        rtp.stop()
