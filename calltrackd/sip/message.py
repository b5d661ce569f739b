"""SIP messages (RFC 3261 §7, §20): parse bytes into requests/responses, serialise back.

Header values stay text; the few the B2BUA needs (Via, CSeq, From/To, Contact) are parsed
on demand. A malformed message raises `ParseError` carrying the status to answer with and,
when enough of it was readable, the partial request so a 400 can be formed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .uri import (
    TOKEN_CHARS,
    NameAddr,
    SipSyntaxError,
    SipURI,
    ascii_number,
    format_params,
    parse_params,
)

__all__ = [
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "Via",
    "parse_message",
    "reason_phrase",
]

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 256
VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and later extensions: compact forms.
COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

_SPECIAL_CASE = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}

# Headers whose values may be comma-separated lists (RFC 3261 §7.3.1). Others (auth
# challenges, Date, ...) contain commas of their own.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "allow-events",
        "in-reply-to",
    }
)


_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_CANONICAL_CACHE: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """`call-id` → `Call-ID`, `v` → `Via`, `content-length` → `Content-Length`."""
    try:
        return _CANONICAL_CACHE[name]
    except KeyError:
        pass
    canon = _canonical(name)
    if len(_CANONICAL_CACHE) < 4096:  # bounded: header names come from the network
        _CANONICAL_CACHE[name] = canon
    return canon


def _canonical(name: str) -> str:
    if len(name) == 1:
        full = COMPACT.get(name.lower())
        if full:
            return full
    lower = name.lower()
    special = _SPECIAL_CASE.get(lower)
    if special:
        return special
    return "-".join(p[:1].upper() + p[1:] for p in lower.split("-"))


def is_token(text: str) -> bool:
    return bool(text) and all(c in TOKEN_CHARS for c in text)


_KEY_CACHE: dict[str, str] = {}


def _key(name: str) -> str:
    """The lower-case canonical name headers are stored under (cached)."""
    try:
        return _KEY_CACHE[name]
    except KeyError:
        pass
    key = canonical_name(name).lower()
    if len(_KEY_CACHE) < 4096:  # bounded: header names come from the network
        _KEY_CACHE[name] = key
    return key


_GOOD_NAMES: set[str] = set()  # header names already seen to be tokens


def _good_name(name: str) -> bool:
    if name in _GOOD_NAMES:
        return True
    if not is_token(name):
        return False
    if len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return True


class ParseError(Exception):
    """The peer broke the grammar. `status` is what to answer (when a request)."""

    def __init__(self, reason: str, status: int = 400, partial: Request | None = None) -> None:
        reason = reason[:200]  # it quotes the peer's bytes, which may be 64 KB of them
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


class Headers:
    """Ordered header fields, looked up case-insensitively by canonical name."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        # (lower, Canonical, value): tuples of strings, which the cyclic GC stops tracking,
        # so messages held by transactions (up to 32 s) cost the collector nothing
        self._items: list[tuple[str, str, str]] = []
        if items:
            for name, value in items:
                self.add(name, value)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: str) -> bool:
        key = _key(name)
        return any(item[0] == key for item in self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _key(name)
        for item in self._items:
            if item[0] == key:
                return item[2]
        return default

    def get_all(self, name: str) -> list[str]:
        """Every header line of that name (values not split at commas)."""
        key = _key(name)
        return [item[2] for item in self._items if item[0] == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, comma-split outside quotes and <...>."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_list(line))
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((_key(name), canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of that name (or at the top)."""
        canon = canonical_name(name)
        key = canon.lower()
        for i, item in enumerate(self._items):
            if item[0] == key:
                self._items.insert(i, (key, canon, value))
                return
        self._items.insert(0, (key, canon, value))

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one, keeping the first one's position."""
        canon = canonical_name(name)
        key = canon.lower()
        for i, item in enumerate(self._items):
            if item[0] == key:
                self._items[i] = (key, item[1], value)
                self._items[i + 1 :] = [x for x in self._items[i + 1 :] if x[0] != key]
                return
        self._items.append((key, canon, value))

    def remove(self, name: str) -> None:
        key = _key(name)
        self._items = [x for x in self._items if x[0] != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = _key(name)
        for i, item in enumerate(self._items):
            if item[0] == key:
                parts = split_list(item[2])
                first = parts[0] if parts else None
                if len(parts) > 1:
                    self._items[i] = (key, item[1], ", ".join(parts[1:]))
                else:
                    del self._items[i]
                return first
        return None

    def serialize_into(self, out: list[str]) -> None:
        for _, name, value in self._items:
            if name != "Content-Length":
                out.append(f"{name}: {value}\r\n")


def split_list(line: str) -> list[str]:
    """Split a header value at commas that are outside quotes and angle brackets."""
    if "," not in line:
        s = line.strip()
        return [s] if s else []
    parts: list[str] = []
    cur: list[str] = []
    quoted = angle = escaped = False
    for ch in line:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


_via_cache: dict[str, Via] = {}
_TOKEN = r"([-.!%*_+`'~A-Za-z0-9]+)"  # RFC 3261 §25.1 token
_SENT_PROTOCOL = re.compile(rf"[ \t]*{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]+")
# sent-by hosts: a name or IPv4 address, or an IPv6 reference in brackets (§25.1)
_HOST = re.compile(r"[A-Za-z0-9._-]+\Z")
_IPV6_REF = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]\Z")


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport`."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, any_version: bool = False) -> Via:
        """`any_version`: another protocol or version than SIP/2.0 is taken too (to answer
        505 to the sent-by of a request of another version, RFC 4475 badvers)."""
        if any_version:
            return cls._parse(text, True)
        # A Via's params are edited in place (received, rport), so cached parses are
        # copied, not shared; still far cheaper than parsing again.
        hit = _via_cache.get(text)
        if hit is None:
            hit = cls._parse(text)
            if len(_via_cache) >= 8192:
                _via_cache.clear()
            _via_cache[text] = hit
        return cls(hit.transport, hit.host, hit.port, dict(hit.params))

    @classmethod
    def own(cls, transport: str, host: str, port: int, branch: str) -> str:
        """The text of a Via we put on a request we send, its parse cached ahead: the
        responses to that request come back with it on top."""
        text = f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport"
        if len(_via_cache) >= 8192:
            _via_cache.clear()
        _via_cache[text] = cls(transport.upper(), host.lower(), port,
                               {"branch": branch, "rport": None})
        return text

    @classmethod
    def _parse(cls, text: str, any_version: bool = False) -> Via:
        # sent-protocol = name / version / transport, with LWS allowed around the slashes
        # (RFC 4475 §3.1.1.1), then LWS, then sent-by; "SIP/2.0/2.0/UDP" is none of that
        m = _SENT_PROTOCOL.match(text)
        if m is None:
            raise SipSyntaxError(f"bad Via protocol {text!r}")
        name, version, transport = m.group(1), m.group(2), m.group(3)
        if not any_version and (version != "2.0" or name.upper() != "SIP"):
            raise SipSyntaxError(f"bad Via protocol {text!r}")
        i = m.end()
        sent_by, _, params_s = text[i:].partition(";")
        sent_by = sent_by.strip()
        if not sent_by:
            raise SipSyntaxError(f"Via without sent-by {text!r}")
        if sent_by.startswith("["):
            end = sent_by.find("]")
            if end < 0:
                raise SipSyntaxError(f"bad Via host {text!r}")
            host, port_s = sent_by[: end + 1], sent_by[end + 1 :].lstrip(" \t")
            if port_s and not port_s.startswith(":"):
                raise SipSyntaxError(f"bad Via host {text!r}")
            port_s = port_s[1:].strip()
            if _IPV6_REF.match(host) is None:
                raise SipSyntaxError(f"bad Via host {text!r}")
        else:
            host, colon, port_s = sent_by.partition(":")
            host, port_s = host.strip(), port_s.strip()
            if colon and not port_s:
                raise SipSyntaxError(f"bad Via port {text!r}")
            if _HOST.match(host) is None:
                raise SipSyntaxError(f"bad Via host {text!r}")
        port: int | None = None
        if port_s:
            port = ascii_number(port_s, 5)
            if port is None or not 0 < port < 65536:
                raise SipSyntaxError(f"bad Via port {text!r}")
        params = parse_params(params_s)
        rport = params.get("rport")
        if rport is not None:
            value = ascii_number(rport, 5)
            if value is None or not 0 < value < 65536:
                raise SipSyntaxError(f"bad Via rport {text!r}")
        return cls(transport.upper(), host.lower(), port, params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


class Message:
    """Common parts of requests and responses."""

    __slots__ = ("_cseq", "_vias", "body", "headers")

    def __init__(self, headers: Headers, body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._cseq: tuple[int, str] | None = None
        self._vias: list[Via] | None = None

    # -- the headers every transaction needs ------------------------------------------
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            self._cseq = parse_cseq(self.headers.get("CSeq") or "")
        return self._cseq

    @property
    def vias(self) -> list[Via]:
        if self._vias is None:
            try:
                self._vias = [Via.parse(v) for v in self.headers.values("Via")]
            except SipSyntaxError as exc:
                # callers routing a response (a 400 for a partial request) expect ParseError
                raise ParseError(str(exc)) from None
        return self._vias

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise ParseError("no Via")
        return vias[0]

    def invalidate(self) -> None:
        """Forget cached parses after headers were edited."""
        self._cseq = None
        self._vias = None

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("To") or "")

    def _serialize(self, start: str) -> bytes:
        out = [start]
        self.headers.serialize_into(out)
        out.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "".join(out).encode("utf-8", "surrogateescape") + self.body


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body)
        self.method = method
        self.uri = uri

    def to_bytes(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {VERSION}\r\n")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body)
        self.status = status
        self.reason = reason if reason is not None else reason_phrase(status)

    def to_bytes(self) -> bytes:
        return self._serialize(f"{VERSION} {self.status} {self.reason}\r\n")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.cseq[1] if self.headers.get('CSeq') else ''}>"


def parse_cseq(value: str) -> tuple[int, str]:
    """`1 INVITE` (§20.16): a number below 2**31, LWS, a method token."""
    num_s, _, method = value.strip().replace("\t", " ").partition(" ")
    method = method.strip(" ")
    num = ascii_number(num_s)
    if num is None or not is_token(method):
        raise ParseError(f"bad CSeq {value!r}")
    if num >= 2**31:
        raise ParseError(f"CSeq number out of range {value!r}")
    return num, method


_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def content_length(value: str) -> int | None:
    """A Content-Length value (§20.14), None when it is not a number we could hold: more
    than a message can be is refused later as larger than the body."""
    return ascii_number(value.strip(), 9)


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
    entry = (_key(name), canonical_name(name))
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
    if any(_key(name) not in counts for name in _REQUIRED):
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
        if _key(name) not in counts:
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


def response_for(request: Request, status: int, reason: str | None = None) -> Response:
    """A response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied."""
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    return Response(status, reason, headers)


__all__ += ["canonical_name", "is_token", "parse_cseq", "response_for", "split_list"]
# re-exported for callers that handle both headers and URIs
__all__ += ["NameAddr", "SipSyntaxError", "SipURI"]
