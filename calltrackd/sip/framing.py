"""A TCP/TLS byte stream → whole SIP messages, cut by Content-Length (RFC 3261 §18.3)."""

from __future__ import annotations

from .headers import MAX_MESSAGE_SIZE, content_length
from .model import ParseError

__all__ = ["StreamFramer"]

_CL_INITIALS = frozenset("cClL")  # a line that could be Content-Length starts so


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Returns whole messages; raises ParseError when framing is lost."""
        self._buf += data
        out: list[bytes] = []
        while True:
            # RFC 5626 keep-alives: CRLF pings between messages
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self._max:
                    raise ParseError("header section too large", 513)
                return out
            head = bytes(self._buf[:end]).decode("utf-8", "replace")
            length = None
            for line in head.split("\r\n")[1:]:
                if line[:1] not in _CL_INITIALS:
                    continue
                name, colon, value = line.partition(":")
                if colon and name.strip().lower() in ("content-length", "l"):
                    value_n = content_length(value)
                    if value_n is None:
                        raise ParseError("bad Content-Length on a stream")
                    if length is not None and value_n != length:
                        # RFC 4475 mcl01: no way to know where this message ends
                        raise ParseError("conflicting Content-Length on a stream")
                    length = value_n
            if length is None:
                raise ParseError("missing Content-Length on a stream")
            total = end + 4 + length
            if total > self._max:
                raise ParseError("message too large", 513)
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]

