"""Test helpers for media: G.711 tones in RTP packets, tone detection (Goertzel), and
pcap files written the way rtpengine writes them (link type RAW, IPv4/UDP)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence

from calltrackd.media import g711

RATE = 8000
FRAME = 160  # 20 ms


def tone(freq: float, seconds: float, amplitude: int = 8000) -> list[int]:
    n = int(seconds * RATE)
    return [int(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n)]


def rtp_packets(codec: str, samples: Sequence[int], *, pt: int, ssrc: int, seq0: int = 0,
                ts0: int = 0) -> Iterator[bytes]:
    """20-ms RTP packets of `samples` encoded with `codec` (PCMU or PCMA)."""
    payload = g711.encode(codec, samples)
    for i in range(0, len(payload) - FRAME + 1, FRAME):
        k = i // FRAME
        header = struct.pack("!BBHII", 0x80, pt, (seq0 + k) & 0xFFFF,
                             (ts0 + i) & 0xFFFFFFFF, ssrc)
        yield header + payload[i:i + FRAME]


def goertzel(samples: Sequence[int], freq: float, rate: int = RATE) -> float:
    """Power of one frequency in `samples`."""
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def dominant(samples: Sequence[int], candidates: Sequence[float] = (
        300, 440, 600, 800, 1000, 1200, 1500, 2000)) -> float:
    return max(candidates, key=lambda f: goertzel(samples, f))


def rms(samples: Sequence[int]) -> float:
    return math.sqrt(sum(x * x for x in samples) / max(len(samples), 1))


def decode_rtp(codec: str, packets: Sequence[bytes]) -> list[int]:
    pcm = b"".join(g711.decode_to_pcm16(codec, p[12:]) for p in packets)
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def ipv4_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                     bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split("."))))
    return ip + struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def pcap(records: Sequence[tuple[float, bytes]], linktype: int = 101) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for when, frame in records:
        sec = int(when)
        out.append(struct.pack("<IIII", sec, int((when - sec) * 1e6), len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def wav_channels(path: str) -> tuple[int, list[int], list[int]]:
    """(channels, left samples, right samples) of a 16-bit stereo WAV."""
    import wave

    with wave.open(path, "rb") as w:
        channels = w.getnchannels()
        raw = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    return channels, list(samples[0::2]), list(samples[1::2])
