"""Bytes → a SIP message (RFC 3261 §7, §18.3; RFC 4475's torture cases): one whole
message, a UDP datagram or a message the stream framer cut out. Every check that a
response could repeat to the next hop happens here, so the layers above trust what they get.
"""

from __future__ import annotations

from .headers import (
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    VERSION,
    Headers,
    canonical_name,
    content_length,
    header_key,
    is_token,
    split_list,
)
from .model import ParseError, Request, Response
from .uri import NameAddr, SipSyntaxError, SipURI, ascii_number

__all__ = ["parse_message"]

_GOOD_NAMES: set[str] = set()  # header names already seen to be tokens


def _good_name(name: str) -> bool:
    if name in _GOOD_NAMES:
        return True
    if not is_token(name):
        return False
    if len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return True



_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    idx = data.find(b"\r\n\r\n")
    if idx >= 0:
        return data[:idx], data[idx + 4 :]
    idx = data.find(b"\n\n")
    if idx >= 0:
        return data[:idx], data[idx + 2 :]
    # a message with no body separator: headers only, if it ends in a line break
    if data.endswith(b"\r\n") or data.endswith(b"\n"):
        return data.rstrip(b"\r\n"), b""
    raise ParseError("no end of headers")


_NAMES: dict[str, tuple[str, str]] = {}  # raw header name -> (key, Canonical), good only


def _name_entry(raw: str, line: str) -> tuple[str, str]:
    """Check a header name not seen before and remember it (bounded: from the network)."""
    name = raw.rstrip(" \t")
    if not _good_name(name):
        raise ParseError(f"bad header line {line[:60]!r}")
    entry = (header_key(name), canonical_name(name))
    if len(_NAMES) < 4096:
        _NAMES[raw] = entry
    return entry


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (leading SP/HTAB, RFC 3261 §7.3.1) to their header line."""
    out = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                raise ParseError("continuation line before any header")
            out[-1] = out[-1].rstrip(" \t") + " " + line.strip()
        else:
            out.append(line)
    return out


def _loose_request(parts: list[str], headers: Headers, counts: dict[str, int]) -> Request | None:
    """A request line with stray SP inside or after it (RFC 4475 lwsruri, lwsstart, trws) is
    still a request we can answer 400 to, when the headers a response copies are there."""
    words = [p for p in parts if p]
    if len(words) < 3 or words[-1] != VERSION or not is_token(words[0]):
        return None
    if any(header_key(name) not in counts for name in _REQUIRED):
        return None
    return Request(words[0], " ".join(words[1:-1]), headers)


def parse_message(
    data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, stream: bool = False
) -> Request | Response:
    """Parse one whole message (a UDP datagram or a framed stream message)."""
    if len(data) > max_size:
        raise ParseError("message too large", 513)
    data = data.lstrip(b"\r\n")
    if not data:
        raise ParseError("empty message")
    head_b, body = _split_head(data)
    try:
        head = head_b.decode("utf-8")
    except UnicodeDecodeError:
        head = head_b.decode("utf-8", "surrogateescape")
    text = head.replace("\r\n", "\n")
    lines = text.split("\n")
    start = lines[0]
    headers = Headers()
    items = headers._items
    counts: dict[str, int] = {}
    if "\n " in head or "\n\t" in head:
        lines = _unfold(lines)
    if len(lines) > MAX_HEADERS + 1:
        raise ParseError("too many headers", 513)
    names = _NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"bad header line {line[:60]!r}")
        known = names.get(name)
        if known is None:
            known = _name_entry(name, line)
        key = known[0]
        items.append((key, known[1], value.strip()))
        counts[key] = counts.get(key, 0) + 1

    msg: Request | Response
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or parts[0] != VERSION:
            raise ParseError(f"bad status line {start[:60]!r}")
        code = ascii_number(parts[1]) if len(parts[1]) == 3 else None
        if code is None or not 100 <= code <= 699:
            raise ParseError(f"bad status code {parts[1][:20]!r}")
        msg = Response(code, parts[2] if len(parts) > 2 else "", headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise ParseError(f"bad request line {start[:60]!r}",
                             partial=_loose_request(parts, headers, counts))
        method, uri, version = parts
        if not is_token(method):
            raise ParseError(f"bad method {method[:20]!r}")
        msg = Request(method, uri, headers)
        if version != VERSION:
            raise ParseError(f"unsupported version {version[:20]!r}", 505, partial=msg)
        try:
            SipURI.parse(uri)
        except SipSyntaxError as exc:
            raise ParseError(str(exc), partial=msg) from None

    partial = msg if isinstance(msg, Request) else None
    if "\r" in text:
        # a CR is no line end alone, and no part of a value either (§25.1): copied into
        # the messages we send, the next hop could take it for one
        raise ParseError("bare CR in the header", partial=partial)
    for name in _REQUIRED:
        if header_key(name) not in counts:
            raise ParseError(f"missing {name}", partial=partial)

    # Content-Length (§18.3, §20.14): required on streams; on UDP it may be omitted.
    cl_values = headers.get_all("Content-Length") if "content-length" in counts else []
    if cl_values:
        length = content_length(cl_values[0])
        if length is None or any(content_length(v) != length for v in cl_values[1:]):
            raise ParseError("bad Content-Length", partial=partial)
        if length > len(body):
            raise ParseError("body shorter than Content-Length", partial=partial)
        body = body[:length]
    elif stream:
        raise ParseError("missing Content-Length on a stream", partial=partial)
    msg.body = body

    try:
        _num, cseq_method = msg.cseq
        if isinstance(msg, Request) and cseq_method != msg.method:
            raise ParseError("CSeq method does not match the request", partial=partial)
        if counts["cseq"] > 1 or counts["call-id"] > 1:
            raise ParseError("duplicate CSeq or Call-ID", partial=partial)
        if counts["from"] > 1 or counts["to"] > 1:
            raise ParseError("duplicate From or To", partial=partial)
        if not msg.vias:  # validates every Via now
            raise ParseError("empty Via", partial=partial)
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
        if "max-forwards" in counts:
            # one value of 0-255 (§20.22); the B2BUA reads it as a number
            mf = ascii_number(headers.get("Max-Forwards") or "", 3)
            if mf is None or mf > 255 or counts["max-forwards"] > 1:
                raise ParseError("bad Max-Forwards", partial=partial)
        for ct in headers.get_all("Contact") if "contact" in counts else ():
            if ct.strip() != "*":
                for value in split_list(ct):
                    NameAddr.parse(value)
        # the route set of a dialog (§12.1): where its requests will be sent
        for name in ("record-route", "route"):
            if name in counts:
                for value in headers.values(name):
                    NameAddr.parse(value)
    except SipSyntaxError as exc:
        raise ParseError(str(exc), partial=partial) from None
    except ParseError as perr:  # its own name: one variable of two types does not compile
        if perr.partial is None and partial is not None:
            raise ParseError(perr.reason, perr.status, partial) from None
        raise
    return msg


