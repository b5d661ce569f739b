"""Just enough SDP (RFC 4566) for media anchoring and recordings: each media section's
port, connection address and payload types with their codec names."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STATIC_PAYLOADS", "Media", "on_hold", "parse_media"]

# RFC 3551 table 4: the static audio payload types a carrier may send without rtpmap
STATIC_PAYLOADS = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 13: "CN",
                   15: "G728", 18: "G729"}


@dataclass(frozen=True, slots=True)
class Media:
    kind: str  # audio, video, image...
    port: int
    address: str | None  # the media-level c= or else the session-level one
    payloads: dict[int, str]  # payload type → codec name ("PCMU", "telephone-event")


def parse_media(sdp: str) -> list[Media]:
    """The media sections of an SDP body; lines that do not parse are ignored."""
    session_addr: str | None = None
    sections: list[tuple[str, int, list[int], dict[int, str], list[str | None]]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 3:
                continue
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                continue
            pts = [int(p) for p in parts[3:] if p.isdigit()]
            sections.append((parts[0], port, pts, {}, [None]))
        elif kind == "c":
            parts = value.split()
            addr = parts[2].split("/")[0] if len(parts) >= 3 else None
            if sections:
                sections[-1][4][0] = addr
            else:
                session_addr = addr
        elif kind == "a" and sections and value.startswith("rtpmap:"):
            pt, _, codec = value[7:].partition(" ")
            if pt.isdigit() and codec:
                sections[-1][3][int(pt)] = codec.split("/")[0]
    out = []
    for media_kind, port, pts, rtpmap, media_addr in sections:
        payloads = {pt: rtpmap.get(pt) or STATIC_PAYLOADS.get(pt, f"PT{pt}") for pt in pts}
        out.append(Media(media_kind, port, media_addr[0] or session_addr, payloads))
    return out


_HOLD_DIRECTIONS = frozenset({"sendonly", "recvonly", "inactive"})
_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})  # RFC 2543's hold, still sent by some phones


def on_hold(sdp: bytes) -> bool:
    """Whether an SDP puts its audio on hold, so that one side at least sends no RTP:
    every audio section in use (port not 0) is sendonly, recvonly or inactive (its own
    attribute, else the session's), or its connection address is 0.0.0.0. An SDP
    without a section in use is not a hold."""
    session_dir, session_addr = "sendrecv", ""
    held: list[bool] = []  # per audio section in use
    media_dir: str | None = None
    media_addr: str | None = None
    in_audio = in_media = False

    def close() -> None:
        if in_audio:
            direction = media_dir or session_dir
            addr = media_addr if media_addr is not None else session_addr
            held.append(direction in _HOLD_DIRECTIONS or addr in _HOLD_ADDRESSES)

    for raw in sdp.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line.startswith("m="):
            close()
            fields = line[2:].split()
            in_media = True
            in_audio = len(fields) > 1 and fields[0] == "audio" and fields[1] != "0"
            media_dir = media_addr = None
        elif line.startswith("c="):
            fields = line[2:].split()
            addr = fields[2].split("/")[0] if len(fields) > 2 else ""
            if in_media:
                media_addr = addr
            else:
                session_addr = addr
        elif line.startswith("a=") and line[2:] in _HOLD_DIRECTIONS | {"sendrecv"}:
            if in_media:
                media_dir = line[2:]
            else:
                session_dir = line[2:]
    close()
    return bool(held) and all(held)
