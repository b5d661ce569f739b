"""Reading the UDP datagrams of a pcap file, as rtpengine's `recording-method = pcap`
writes them (`recording-format = raw`: link type RAW; `eth`: Ethernet).

Only what call recordings need: classic pcap (not pcapng), microsecond or nanosecond
timestamps, either byte order; IPv4 and IPv6 carrying UDP. Other packets are skipped.
A file cut short in its last record (rtpengine still writing, or killed) ends there.
A file that is not a pcap at all raises `PcapError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Datagram", "PcapError", "read_datagrams"]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL = 113

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class PcapError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Datagram:
    time: float  # capture time, UNIX seconds
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_datagrams(data: bytes) -> Iterator[Datagram]:
    if len(data) < 24 or data[:4] not in _MAGIC:
        raise PcapError("not a pcap file (pcapng is not read)")
    order, unit = _MAGIC[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype not in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_ETHERNET,
                        LINKTYPE_LINUX_SLL):
        raise PcapError(f"link type {linktype} is not read (raw IP or Ethernet)")
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = record.unpack_from(data, pos)
        pos += 16
        if pos + caplen > len(data):
            return  # cut short
        frame = data[pos:pos + caplen]
        pos += caplen
        ip = _ip_of(linktype, frame)
        if ip is not None:
            dgram = _udp(ip, sec + frac * unit)
            if dgram is not None:
                yield dgram


def _ip_of(linktype: int, frame: bytes) -> bytes | None:
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, frame[12:14]
        while ethertype == b"\x81\x00" and len(frame) >= offset + 4:  # 802.1Q
            ethertype = frame[offset + 2:offset + 4]
            offset += 4
    else:  # Linux cooked capture
        offset, ethertype = 16, frame[14:16]
    return frame[offset:] if ethertype in (b"\x08\x00", b"\x86\xdd") else None


def _udp(ip: bytes, when: float) -> Datagram | None:
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:  # not UDP, fragment
            return None
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        total = struct.unpack_from("!H", ip, 2)[0]
        udp = ip[ihl:total] if total >= ihl else b""
    elif version == 6 and len(ip) >= 40:
        if ip[6] != 17:
            return None
        src = _ipv6(ip[8:24])
        dst = _ipv6(ip[24:40])
        udp = ip[40:40 + struct.unpack_from("!H", ip, 4)[0]]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", udp, 0)
    return Datagram(when, (src, sport), (dst, dport), udp[8:max(length, 8)])


def _ipv6(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(raw))
