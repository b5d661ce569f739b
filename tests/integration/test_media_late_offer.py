"""A late-offer call anchored through a real rtpengine: the SIPp carrier's INVITE has no
SDP, the SIPp PBX's 200 carries the offer and the carrier's ACK the answer. The carrier
gets rtpengine's offer (a port of rtpengine's) in our 200, the PBX rtpengine's answer in
our ACK; neither sees the other's own media address. Both play G.711 A-law through
rtpengine's ports: the recording has audio on both channels."""

from __future__ import annotations

import wave
from pathlib import Path

from tests.audio import rms

from .conftest import Sipp, free_port
from .test_media_calls import DID, TALK_MS, anchored_daemon, audio_port


def test_late_offer_call_is_anchored(tmp_path: Path) -> None:
    with anchored_daemon(tmp_path) as (rtp, receiver, daemon, sip, pbx_port):
        pbx_media, carrier_media = free_port(), free_port()
        pbx = Sipp(tmp_path, "pbx", "uas_late_offer.xml", pbx_port, "-m", "1", "-timeout",
                   "60s", "-mi", "127.0.0.1", "-mp", str(pbx_media))
        try:
            carrier = Sipp(tmp_path, "carrier", "uac_late_offer.xml", free_port(), "-s",
                           DID, "-m", "1", "-timeout", "60s", "-timeout_error", "-d",
                           str(TALK_MS), "-mi", "127.0.0.1", "-mp", str(carrier_media),
                           remote=f"127.0.0.1:{sip}")
            res = carrier.wait(90)
            assert res.ok, res.output
            assert pbx.wait(20).ok  # the PBX's scenario requires the ACK
        finally:
            pbx.kill()
        received = [m for m in pbx.traces() if not m.sent]
        invite = next(m for m in received if m.start_line.startswith("INVITE "))
        assert invite.body == b""  # nothing to offer: the INVITE went on without SDP
        ack = next(m for m in received if m.start_line.startswith("ACK ")).body.decode()
        answer_port = audio_port(ack)  # rtpengine's answer, not the carrier's own port
        assert rtp.port_min <= answer_port <= rtp.port_min + 999, ack
        ok = [m for m in carrier.traces() if not m.sent and m.start_line.startswith(
            "SIP/2.0 200") and m.body]
        offer = ok[0].body.decode()
        offer_port = audio_port(offer)  # rtpengine's offer, not the PBX's own port
        assert rtp.port_min <= offer_port <= rtp.port_min + 999, offer
        assert offer_port != pbx_media and answer_port != carrier_media
        assert "call.media_direct" not in daemon.log_text()
        call = receiver.wait_event("call.recording", DID, timeout=60)["json"]["call"]
        assert call["media"] == {"mode": "anchor", "recorded": True, "late_offer": True}
        rec = call["recording"]
        assert abs(rec["seconds"] - call["talk_seconds"]) <= 1.0, (rec, call)
        with wave.open(str(next((tmp_path / "rec").rglob("*.wav")))) as w:
            assert w.getnchannels() == 2
            samples = memoryview(w.readframes(w.getnframes())).cast("h")
        left, right = samples[0::2], samples[1::2]
        assert rms(left) > 300 and rms(right) > 300, (rms(left), rms(right))
