"""rtpengine's recording of a call (pcap + metadata file) → a two-channel WAV.

rtpengine (`recording-method = pcap`) writes every RTP packet it *receives* for the call
into one pcap, and on delete a metadata file: the pcap's path, each SDP it sent out with
its mode (offer/answer), the start and end times and the `metadata` string of the offer.

Which packet is whose: the offer's SDP as rewritten by rtpengine went to the callee, so
its ports are where the callee sends; the answer's ports are where the caller sends.
So packets to the first offer's ports are the callee (right channel), to the first
answer's ports the caller (left). A stream first seen on a later SDP's port keeps the
side its SSRC had; packets of unknown streams are left out.

Timing: each channel is 8 kHz, 16-bit. A stream is placed by its RTP timestamps,
anchored at the arrival time of its first packet (both channels share the clock of the
capture); a new SSRC, or a timestamp that strays more than a second from the arrival
clock, is anchored anew. Gaps (loss, silence suppression, hold) stay silent.

Codecs: G.711 µ-law and A-law (PCMU/PCMA: payload types 0 and 8 or dynamic ones named by
the SDP's rtpmap). telephone-event and comfort noise are skipped (silence). Any other
codec: no WAV; the caller keeps the pcap and says why (`Conversion.reason`).
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import g711
from .pcap import Datagram, read_datagrams
from .sdp import STATIC_PAYLOADS, parse_media

__all__ = ["CALLEE", "CALLER", "LATE_OFFER", "Conversion", "Metadata", "RecordingError",
           "convert", "convert_files", "parse_metadata"]

RATE = 8000
CALLER, CALLEE = 0, 1
LATE_OFFER = "late-offer"  # in the offer's metadata string: the offer came from the callee
_SKIPPED = frozenset({"telephone-event", "CN", "comfort-noise"})
_DECODED = frozenset({"PCMU", "PCMA"})
_RESYNC = RATE  # samples a timestamp may stray from the arrival clock before re-anchoring


class RecordingError(ValueError):
    """A recording that cannot be read (not a pcap, no metadata, no RTP)."""


@dataclass(frozen=True, slots=True)
class Metadata:
    pcaps: tuple[str, ...]
    sdps: tuple[tuple[str, str], ...]  # (mode, SDP) in the order rtpengine saw them
    start: str | None = None
    end: str | None = None
    text: str = ""  # the `metadata` string given on the offer


def parse_metadata(text: str) -> Metadata:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    pcaps: list[str] = []
    while i < len(lines) and lines[i].strip():
        pcaps.append(lines[i].strip())
        i += 1
    sdps: list[tuple[str, str]] = []
    start = end = None
    tail_from = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("SDP mode:"):
            mode = line.partition(":")[2].strip()
            i += 1
            while i < len(lines) and lines[i].strip():  # more headers of this SDP
                i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            body = []
            while i < len(lines) and lines[i].strip():
                body.append(lines[i])
                i += 1
            sdps.append((mode, "\r\n".join(body) + "\r\n"))
            continue
        if line.startswith("call start time:"):
            start = line.partition(":")[2].strip()
        elif line.startswith("call end time:"):
            end = line.partition(":")[2].strip()
            tail_from = i + 1
        i += 1
    tail = "\n".join(lines[tail_from:]).strip() if tail_from is not None else ""
    if not pcaps and not sdps:
        raise RecordingError("not an rtpengine metadata file")
    return Metadata(tuple(pcaps), tuple(sdps), start, end, tail)


@dataclass
class Conversion:
    """What came out: `wav` True when a WAV was written, else `reason` says why not."""

    wav: bool
    seconds: float
    reason: str | None = None
    packets: list[int] = field(default_factory=lambda: [0, 0])  # decoded, per channel
    codecs: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    side: int
    anchor: int = 0  # sample position of RTP timestamp 0 (unwrapped)
    last_ts: int = 0  # unwrapped
    last_raw: int = 0


def _sides_and_payloads(meta: Metadata) -> tuple[dict[int, int], dict[int, str]]:
    ports: dict[int, int] = {}
    payloads: dict[int, str] = dict(STATIC_PAYLOADS)
    seen_modes: set[str] = set()
    # a late offer (the INVITE had no SDP): the offer came from the callee's side and
    # rtpengine's offer went to the caller, its answer to the callee
    offered, answered = (CALLER, CALLEE) if LATE_OFFER in meta.text.split() else (CALLEE, CALLER)
    for mode, sdp in meta.sdps:
        side = offered if mode == "offer" else answered if mode == "answer" else None
        for media in parse_media(sdp):
            if media.kind != "audio":
                continue
            payloads.update(media.payloads)
            if side is not None and mode not in seen_modes and media.port:
                ports.setdefault(media.port, side)
        seen_modes.add(mode)
    return ports, payloads


def convert(meta: Metadata, pcap: bytes, out: Path) -> Conversion:
    """Writes `out` (a WAV) when every audio packet is G.711; else writes nothing."""
    ports, payloads = _sides_and_payloads(meta)
    if not ports:
        raise RecordingError("the metadata has no audio offer/answer: whose audio is whose?")
    return _convert(read_datagrams(pcap), ports, payloads, out)


def convert_files(metadata_file: Path, out: Path, pcap_file: Path | None = None
                  ) -> Conversion:
    try:
        meta = parse_metadata(metadata_file.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise RecordingError(f"cannot read {metadata_file}: {exc.strerror or exc}") from None
    path = pcap_file or (Path(meta.pcaps[0]) if meta.pcaps else None)
    if path is None:
        raise RecordingError("the metadata names no pcap")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from None
    return convert(meta, data, out)


def _convert(datagrams: Iterable[Datagram], ports: dict[int, int], payloads: dict[int, str],
             out: Path) -> Conversion:
    packets: list[tuple[float, int, int, int, str, bytes]] = []
    unsupported: set[str] = set()
    codecs: set[str] = set()
    ssrc_side: dict[int, int] = {}
    for d in datagrams:
        rtp = _rtp(d.payload)
        if rtp is None:
            continue
        pt, ts, ssrc, body = rtp
        side = ports.get(d.dst[1])
        if side is None:
            side = ssrc_side.get(ssrc)
            if side is None:
                continue
        ssrc_side.setdefault(ssrc, side)
        codec = payloads.get(pt, f"PT{pt}")
        if codec in _SKIPPED or not body:
            continue
        codecs.add(codec)
        if codec not in _DECODED:
            unsupported.add(codec)
            continue
        packets.append((d.time, side, ssrc, ts, codec, body))
    if unsupported:
        names = ", ".join(sorted(unsupported))
        return Conversion(False, 0.0, f"codec {names} is not converted (G.711 only): the "
                          "pcap is kept", codecs=codecs)
    if not packets:
        return Conversion(False, 0.0, "no G.711 audio in the recording", codecs=codecs)
    start = min(p[0] for p in packets)
    channels = [bytearray(), bytearray()]
    streams: dict[tuple[int, int], _Stream] = {}
    counts = [0, 0]
    for when, side, ssrc, ts, codec, body in packets:
        arrival = round((when - start) * RATE)
        st = streams.get((side, ssrc))
        if st is None:
            st = streams[(side, ssrc)] = _Stream(side, arrival - ts, ts, ts)
        else:
            unwrapped = st.last_ts + ((ts - st.last_raw + (1 << 31)) % (1 << 32)) - (1 << 31)
            st.last_ts, st.last_raw = unwrapped, ts
            if abs(st.anchor + unwrapped - arrival) > _RESYNC:
                st.anchor = arrival - unwrapped
        pos = st.anchor + st.last_ts
        if pos < 0:
            body = body[-pos:]
            pos = 0
        _place(channels[side], pos, g711.decode_to_pcm16(codec, body))
        counts[side] += 1
    frames = max(len(c) for c in channels) // 2
    for c in channels:
        c.extend(bytes(frames * 2 - len(c)))
    stereo = bytearray(frames * 4)
    stereo[0::4] = channels[CALLER][0::2]
    stereo[1::4] = channels[CALLER][1::2]
    stereo[2::4] = channels[CALLEE][0::2]
    stereo[3::4] = channels[CALLEE][1::2]
    _write_wav(out, bytes(stereo))
    return Conversion(True, frames / RATE, None, counts, codecs)


def _place(channel: bytearray, pos: int, pcm: bytes) -> None:
    offset = pos * 2
    if len(channel) < offset:
        channel.extend(bytes(offset - len(channel)))
    channel[offset:offset + len(pcm)] = pcm


def _rtp(payload: bytes) -> tuple[int, int, int, bytes] | None:
    """(payload type, timestamp, SSRC, audio) of an RTP packet; None for RTCP and junk."""
    if len(payload) < 12 or payload[0] >> 6 != 2:
        return None
    pt = payload[1] & 0x7F
    if 72 <= pt <= 76:  # RTCP (RFC 5761 §4) on a muxed port
        return None
    ts, ssrc = struct.unpack_from("!II", payload, 4)
    offset = 12 + 4 * (payload[0] & 0x0F)
    if payload[0] & 0x10:  # header extension
        if len(payload) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", payload, offset + 2)[0]
    end = len(payload)
    if payload[0] & 0x20:  # padding
        end -= payload[-1]
    if offset > end:
        return None
    return pt, ts, ssrc, payload[offset:end]


def _write_wav(out: Path, frames: bytes) -> None:
    tmp = out.with_name(out.name + ".part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames)
    tmp.replace(out)
