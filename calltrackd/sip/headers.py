"""SIP header fields (RFC 3261 §7.3, §20): names (compact forms, canonical case), the
ordered `Headers` of a message, list values, `Via`, and the reason phrases of status codes.

Header values stay text; the few the B2BUA needs (Via, CSeq, From/To, Contact) are parsed
on demand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .uri import TOKEN_CHARS, SipSyntaxError, ascii_number, format_params, parse_params

__all__ = [
    "COMPACT",
    "LIST_HEADERS",
    "MAX_HEADERS",
    "MAX_MESSAGE_SIZE",
    "VERSION",
    "Headers",
    "Via",
    "canonical_name",
    "content_length",
    "header_key",
    "is_token",
    "reason_phrase",
    "split_list",
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


def header_key(name: str) -> str:
    """The lower-case canonical name headers are stored under (cached)."""
    try:
        return _KEY_CACHE[name]
    except KeyError:
        pass
    key = canonical_name(name).lower()
    if len(_KEY_CACHE) < 4096:  # bounded: header names come from the network
        _KEY_CACHE[name] = key
    return key



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
        key = header_key(name)
        return any(item[0] == key for item in self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def get(self, name: str, default: str | None = None) -> str | None:
        key = header_key(name)
        for item in self._items:
            if item[0] == key:
                return item[2]
        return default

    def get_all(self, name: str) -> list[str]:
        """Every header line of that name (values not split at commas)."""
        key = header_key(name)
        return [item[2] for item in self._items if item[0] == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, comma-split outside quotes and <...>."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_list(line))
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((header_key(name), canonical_name(name), value))

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
        key = header_key(name)
        self._items = [x for x in self._items if x[0] != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = header_key(name)
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


def content_length(value: str) -> int | None:
    """A Content-Length value (§20.14), None when it is not a number we could hold: more
    than a message can be is refused later as larger than the body."""
    return ascii_number(value.strip(), 9)

