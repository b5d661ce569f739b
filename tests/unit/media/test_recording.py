"""rtpengine's metadata + pcap → a two-channel WAV, on captures built by the test the way
rtpengine writes them (only received packets, link type RAW)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calltrackd.media.pcap import PcapError, read_datagrams
from calltrackd.media.recording import (
    RecordingError,
    convert,
    convert_files,
    parse_metadata,
)
from tests.audio import dominant, ipv4_udp, pcap, rms, rtp_packets, tone, wav_channels

CALLER = ("127.0.0.1", 36517)  # the phones
CALLEE = ("127.0.0.1", 48114)
PORT_OFFER, PORT_ANSWER = 41000, 41018  # rtpengine's ports in the SDPs it sent out


def metadata(offer_pts: str = "0 8 101", answer_pts: str = "8 101",
             extra: str = "") -> str:
    def sdp(port: int, pts: str) -> str:
        return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\n"
                f"{extra}a=sendrecv\r\na=rtcp:{port + 1}\r\n")

    return ("/spool/pcaps/c_1-abc.pcap\n\n\nTimestamp started ms: 1796158479853.071\n"
            "SDP mode: offer\nSDP before RTP packet: 1\n\n" + sdp(PORT_OFFER, offer_pts)
            + "\nTimestamp started ms: 1796158479853.084\nSDP mode: answer\n"
            "SDP before RTP packet: 1\n\n" + sdp(PORT_ANSWER, answer_pts)
            + "\ncall start time: 2026-12-01T20:54:39\ncall end time: 2026-12-01T20:54:42"
            "\n\n\ncalltrackd call c_1\n")


def capture(caller: list[bytes], callee: list[bytes], t0: float = 1796158480.0,
            callee_delay: float = 0.0) -> bytes:
    records = [(t0 + 0.02 * i, ipv4_udp(CALLER, ("127.0.0.1", PORT_ANSWER), p))
               for i, p in enumerate(caller)]
    records += [(t0 + callee_delay + 0.02 * i, ipv4_udp(CALLEE, ("127.0.0.1", PORT_OFFER), p))
                for i, p in enumerate(callee)]
    records.sort(key=lambda r: r[0])
    return pcap(records)


def test_metadata_is_parsed() -> None:
    meta = parse_metadata(metadata())
    assert meta.pcaps == ("/spool/pcaps/c_1-abc.pcap",)
    assert [m for m, _ in meta.sdps] == ["offer", "answer"]
    assert "m=audio 41000 RTP/AVP 0 8 101" in meta.sdps[0][1]
    assert meta.end == "2026-12-01T20:54:42" and meta.text == "calltrackd call c_1"


def test_caller_left_callee_right_with_their_tones(tmp_path: Path) -> None:
    caller = list(rtp_packets("PCMU", tone(440, 3.0), pt=0, ssrc=1111, ts0=4000000000))
    callee = list(rtp_packets("PCMA", tone(1000, 3.0), pt=8, ssrc=2222, ts0=77))
    out = tmp_path / "c.wav"
    result = convert(parse_metadata(metadata()), capture(caller, callee), out)
    assert result.wav and result.packets == [150, 150]
    assert result.codecs == {"PCMU", "PCMA"}
    channels, left, right = wav_channels(str(out))
    assert channels == 2 and abs(len(left) / 8000 - 3.0) < 0.05
    assert dominant(left[8000:16000]) == 440 and dominant(right[8000:16000]) == 1000


def test_a_late_side_and_lost_packets_stay_silent_where_nothing_came(tmp_path: Path) -> None:
    caller = list(rtp_packets("PCMU", tone(440, 2.0), pt=0, ssrc=1))
    callee = list(rtp_packets("PCMU", tone(1000, 1.0), pt=0, ssrc=2))
    lost = caller[:25] + caller[75:]  # 1 s lost: 0.5..1.5 s
    out = tmp_path / "c.wav"
    # the offer allows PCMU on both sides here
    result = convert(parse_metadata(metadata(answer_pts="0 101")),
                     capture(lost, callee, callee_delay=1.0), out)
    _, left, right = wav_channels(str(out))
    assert result.wav and abs(len(left) / 8000 - 2.0) < 0.05
    assert rms(left[5000:11000]) == 0  # the gap
    assert dominant(left[12800:15000]) == 440
    assert rms(right[:7000]) == 0 and dominant(right[9000:15000]) == 1000


def test_dynamic_payload_type_from_the_sdp(tmp_path: Path) -> None:
    extra = "a=rtpmap:96 PCMA/8000\r\n"
    caller = list(rtp_packets("PCMA", tone(600, 1.0), pt=96, ssrc=1))
    callee = list(rtp_packets("PCMA", tone(1500, 1.0), pt=96, ssrc=2))
    out = tmp_path / "c.wav"
    result = convert(parse_metadata(metadata("96 101", "96 101", extra)),
                     capture(caller, callee), out)
    _, left, right = wav_channels(str(out))
    assert result.wav and dominant(left) == 600 and dominant(right) == 1500


def test_telephone_events_and_rtcp_are_left_out(tmp_path: Path) -> None:
    caller = list(rtp_packets("PCMU", tone(440, 1.0), pt=0, ssrc=1))
    dtmf = [p[:1] + bytes([101]) + p[2:16] for p in caller[:5]]
    rtcp = [bytes([0x80, 200]) + bytes(26)]
    out = tmp_path / "c.wav"
    result = convert(parse_metadata(metadata()), capture(caller + dtmf + rtcp, []), out)
    assert result.wav and result.packets == [50, 0]


def test_other_codecs_keep_the_pcap_and_say_so(tmp_path: Path) -> None:
    g729 = [bytes([0x80, 18, 0, i]) + bytes(8) + bytes(20) for i in range(50)]
    out = tmp_path / "c.wav"
    result = convert(parse_metadata(metadata("18 101", "18 101")), capture(g729, g729), out)
    assert not result.wav and not out.exists()
    assert result.reason is not None and "G729" in result.reason and "pcap" in result.reason


def test_files_from_the_spool(tmp_path: Path) -> None:
    caller = list(rtp_packets("PCMU", tone(440, 1.0), pt=0, ssrc=1))
    (tmp_path / "c.pcap").write_bytes(capture(caller, []))
    meta = tmp_path / "m.txt"
    meta.write_text(metadata().replace("/spool/pcaps/c_1-abc.pcap", str(tmp_path / "c.pcap")))
    result = convert_files(meta, tmp_path / "c.wav")
    assert result.wav and abs(result.seconds - 1.0) < 0.05


def test_broken_input_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError):
        parse_metadata("")
    with pytest.raises(PcapError):
        list(read_datagrams(b"not a pcap at all, not at all"))
    with pytest.raises(RecordingError):
        convert_files(tmp_path / "missing.txt", tmp_path / "x.wav")
    cut = capture(list(rtp_packets("PCMU", tone(440, 1.0), pt=0, ssrc=1)), [])[:-50]
    assert len(list(read_datagrams(cut))) == 49  # a file cut short ends at its last record


def test_sip_testers_g711a_capture_is_read() -> None:
    path = Path("/usr/share/sip-tester/g711a.pcap")  # Ethernet frames, as SIPp ships it
    if not path.exists():
        pytest.fail("sip-tester is not installed: run the README's test command")
    datagrams = list(read_datagrams(path.read_bytes()))
    assert len(datagrams) > 200
    assert {d.payload[1] & 0x7F for d in datagrams} == {8}


def test_late_offer_the_caller_sends_to_the_offers_ports(tmp_path: Path) -> None:
    """An INVITE without SDP: rtpengine's offer went to the caller, its answer to the
    callee (the metadata string says `late-offer`); the channels stay caller left."""
    caller = list(rtp_packets("PCMU", tone(440, 3.0), pt=0, ssrc=1111))
    callee = list(rtp_packets("PCMA", tone(1000, 3.0), pt=8, ssrc=2222))
    t0 = 1796158480.0
    records = [(t0 + 0.02 * i, ipv4_udp(CALLER, ("127.0.0.1", PORT_OFFER), p))
               for i, p in enumerate(caller)]
    records += [(t0 + 0.02 * i, ipv4_udp(CALLEE, ("127.0.0.1", PORT_ANSWER), p))
                for i, p in enumerate(callee)]
    records.sort(key=lambda r: r[0])
    text = metadata().replace("calltrackd call c_1\n", "calltrackd call c_1 late-offer\n")
    out = tmp_path / "c.wav"
    assert convert(parse_metadata(text), pcap(records), out).wav
    _, left, right = wav_channels(str(out))
    assert dominant(left[8000:16000]) == 440 and dominant(right[8000:16000]) == 1000
