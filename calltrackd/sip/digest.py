"""Digest authentication for our own requests (RFC 3261 §22, RFC 2617, RFC 7616).

Parse a WWW-Authenticate / Proxy-Authenticate challenge and build the matching
Authorization / Proxy-Authorization value. Pure functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from . import ids

__all__ = ["Challenge", "authorization_for", "build_authorization", "parse_challenge"]

_HASHES = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
}


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _params(text: str) -> dict[str, str]:
    """`a="x, y", b=z` → {"a": "x, y", "b": "z"} (quoted strings may hold commas)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        name = text[i:eq].strip().lower()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            value = "".join(buf)
            i += 1
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        out[name] = value
    return out


def parse_challenge(header: str) -> Challenge | None:
    """A Digest challenge, or None when the header is not one we can answer."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    p = _params(rest)
    if "realm" not in p or "nonce" not in p:
        return None
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        return None
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    known = {"realm", "nonce", "algorithm", "qop", "opaque", "stale"}
    return Challenge(
        realm=p["realm"], nonce=p["nonce"], algorithm=algorithm, qop=qop,
        opaque=p.get("opaque"), stale=p.get("stale", "").lower() == "true",
        extra={k: v for k, v in p.items() if k not in known},
    )


def build_authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The credentials value (RFC 2617 §3.2.2, RFC 7616 §3.4)."""
    h = _HASHES[challenge.algorithm]

    def hx(s: str | bytes) -> str:
        return h(s.encode() if isinstance(s, str) else s).hexdigest()

    cnonce = cnonce or ids.token_hex(8)
    ha1 = hx(f"{username}:{challenge.realm}:{password}")
    if challenge.algorithm.endswith("-SESS"):
        ha1 = hx(f"{ha1}:{challenge.nonce}:{cnonce}")
    qop = "auth" if "auth" in challenge.qop else ("auth-int" if "auth-int" in challenge.qop
                                                  else None)
    ha2 = hx(f"{method}:{uri}:{hx(body)}") if qop == "auth-int" else hx(f"{method}:{uri}")
    nc_s = f"{nc:08x}"
    if qop:
        response = hx(f"{ha1}:{challenge.nonce}:{nc_s}:{cnonce}:{qop}:{ha2}")
    else:
        response = hx(f"{ha1}:{challenge.nonce}:{ha2}")
    parts = [
        f'username="{username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"',
        f'uri="{uri}"', f'response="{response}"', f"algorithm={challenge.algorithm}",
    ]
    if challenge.opaque is not None:
        parts.append(f'opaque="{challenge.opaque}"')
    if qop:
        parts += [f"qop={qop}", f"nc={nc_s}", f'cnonce="{cnonce}"']
    return "Digest " + ", ".join(parts)


def authorization_for(header: str, method: str, uri: str, username: str,
                      password: str) -> str | None:
    """Answer a challenge header in one call; None when it is not a Digest we support."""
    challenge = parse_challenge(header)
    if challenge is None:
        return None
    return build_authorization(challenge, method, uri, username, password)
