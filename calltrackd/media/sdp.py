"""Just enough SDP (RFC 4566) for media anchoring and recordings: each media section's
port, connection address and payload types with their codec names."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STATIC_PAYLOADS", "Media", "parse_media"]

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
