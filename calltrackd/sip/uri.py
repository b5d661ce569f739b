"""SIP URIs (RFC 3261 §19.1) and name-addr / addr-spec header values (§20.10, §25.1).

Pure parsing and formatting; errors raise `SipSyntaxError`, which the message layer turns
into a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from .errors import SipSyntaxError

__all__ = [
    "TOKEN_CHARS",
    "NameAddr",
    "SipSyntaxError",
    "SipURI",
    "ascii_number",
    "format_params",
    "parse_params",
]


T = TypeVar("T")


_HOST_BAD = set(' \t"<>@,;?\\')


def ascii_number(text: str, max_digits: int = 10) -> int | None:
    """The value of `text` when it is ASCII digits only (leading zeros allowed) and at most
    `max_digits` of them after those, else None. `str.isdigit` alone accepts superscripts
    and other Unicode digits that `int()` refuses (or reads), and `int()` refuses numbers
    over 4,300 digits: a number from the network is read only through this."""
    if not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant) if significant else 0

# RFC 3261 §25.1 token: methods, header names, and unquoted display-name words
TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)

# Parsed values by their text. The same From/To/Contact/Request-URI text comes back in
# every message of a dialog, so parsing each once saves a good share of the per-message
# work. The objects are shared: treat them (and their `params`) as immutable; `with_tag`
# and `with_` return copies. Cleared when full rather than LRU: cheap and good enough.
_CACHE_MAX = 8192
_uri_cache: dict[str, SipURI] = {}
_addr_cache: dict[str, NameAddr] = {}


def _cached(cache: dict[str, T], text: str, parse: Callable[[str], T]) -> T:
    hit = cache.get(text)
    if hit is None:
        hit = parse(text)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[text] = hit
    return hit


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `;a=b;c` (without the first ';') into an ordered dict (names lower-cased)."""
    out: dict[str, str | None] = {}
    if not text:
        return out
    for part in _split_unquoted(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipSyntaxError(f"empty parameter name in {text!r}")
        out[name] = value.strip() if eq else None
    return out


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (backslash escapes honoured)."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    cur: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise SipSyntaxError(f"unterminated quoted string in {text!r}")
    parts.append("".join(cur))
    return parts


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if not text:
        raise SipSyntaxError("missing host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipSyntaxError(f"unterminated IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if ":" not in host:
            raise SipSyntaxError(f"bad IPv6 reference {text!r}")
    else:
        host, _, port_s = text.partition(":")
        rest = ":" + port_s if _ else ""
        if not host or any(c in _HOST_BAD for c in host):
            raise SipSyntaxError(f"bad host {text!r}")
    if not rest:
        return host.lower(), None
    port = ascii_number(rest[1:], 5) if rest.startswith(":") else None
    if port is None:
        raise SipSyntaxError(f"bad port in {text!r}")
    if not 0 < port < 65536:
        raise SipSyntaxError(f"port out of range in {text!r}")
    return host.lower(), port


@dataclass(frozen=True, slots=True)
class SipURI:
    """sip:/sips: URI. Other schemes (tel:, urn:) keep their text in `opaque`."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None  # for non-SIP schemes: everything after "scheme:"

    @classmethod
    def parse(cls, text: str) -> SipURI:
        return _cached(_uri_cache, text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> SipURI:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not scheme or not scheme[0].isalpha():
            raise SipSyntaxError(f"not a URI: {text!r}")
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            if not rest or any(c in " \t<>" for c in rest):
                raise SipSyntaxError(f"bad {scheme} URI {text!r}")
            if scheme == "tel":
                number, _, params = rest.partition(";")
                return cls(scheme=scheme, user=number, opaque=rest, params=parse_params(params))
            return cls(scheme=scheme, opaque=rest)
        if any(c in " \t<>" for c in rest):
            raise SipSyntaxError(f"whitespace or angle bracket in URI {text!r}")
        # "@" appears nowhere else unescaped, while the user part may hold "?" and ";"
        # (RFC 4475 intmeth, semiuri): split the userinfo off before the headers
        userinfo: str | None = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
        rest, qmark, headers = rest.partition("?")
        hostport, _, params_s = rest.partition(";")
        host, port = _parse_hostport(hostport)
        user = password = None
        if userinfo is not None:
            if not userinfo:
                raise SipSyntaxError(f"empty user part in {text!r}")
            user, pc, pw = userinfo.partition(":")
            password = pw if pc else None
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=parse_params(params_s),
            headers=headers if qmark else None,
        )

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, as socket calls want it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def with_(self, **changes: object) -> SipURI:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: SipURI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        return _cached(_addr_cache, text, cls._parse)

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise SipSyntaxError("empty address")
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise SipSyntaxError(f"unterminated <...> in {text!r}")
            display = text[:lt].strip() or None
            if display is not None and not _good_display(display):
                raise SipSyntaxError(f"bad display name in {text!r}")
            uri = SipURI.parse(text[lt + 1 : gt])
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise SipSyntaxError(f"junk after address in {text!r}")
            return cls(uri=uri, display=display, params=parse_params(rest[1:]))
        # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10)
        uri_s, _, params_s = text.partition(";")
        if " " in uri_s.strip() or "\t" in uri_s.strip():
            raise SipSyntaxError(f"whitespace in addr-spec {text!r}")
        return cls(uri=SipURI.parse(uri_s), params=parse_params(params_s))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        params = dict(self.params)
        params["tag"] = tag
        return NameAddr(self.uri, self.display, params)

    def __str__(self) -> str:
        disp = f"{self.display} " if self.display else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"


def _good_display(display: str) -> bool:
    """A quoted-string, or tokens separated by LWS (RFC 3261 §25.1). Unquoted "Bell,
    Alexander" (RFC 4475 baddn) would be copied unquoted into the messages we send.
    Unquoted UTF-8 words pass: out of grammar, but common, and they split nothing."""
    if display[0] == '"':
        return len(display) > 1 and display[-1] == '"'
    return all(c in TOKEN_CHARS or c in " \t" or c > "\x7f" for c in display)


def _find_unquoted(text: str, ch: str) -> int:
    if '"' not in text:
        return text.find(ch)
    quoted = False
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1
