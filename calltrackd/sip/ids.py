"""Random identifiers (Call-IDs, tags, branches, call, session and event ids) from a
buffered `os.urandom`: the same kernel CSPRNG as `secrets`, but one getrandom() system
call per 4 KiB instead of one per id, which shows in profiles at hundreds of calls per
second (each call makes about ten ids). The text ids are cut from buffers of text too
(4,096 base64url or hex characters of random bytes, encoded at once), not encoded one by
one. Not fork-safe: a forked child must call `reset()`.

The one id generator of the project. It lives in the SIP core, which imports nothing of
the daemon around it, so that the core can make its branches, tags and nonces with it;
`calltrackd.ids` re-exports it with the daemon's own ids (`session_id`).
"""

from __future__ import annotations

import base64
import os

__all__ = ["reset", "token_bytes", "token_hex", "token_urlsafe"]

_BUFFER = 4096
_buf = b""
_pos = 0
_b64 = ""  # base64url of random bytes, no padding: 6 random bits a character
_b64_pos = 0
_hex = ""  # hex of random bytes: 4 random bits a character
_hex_pos = 0


def reset() -> None:
    global _buf, _pos, _b64, _b64_pos, _hex, _hex_pos
    _buf, _pos = b"", 0
    _b64, _b64_pos = "", 0
    _hex, _hex_pos = "", 0


def token_bytes(n: int) -> bytes:
    global _buf, _pos
    if _pos + n > len(_buf):
        _buf, _pos = os.urandom(max(_BUFFER, n)), 0
    out = _buf[_pos:_pos + n]
    _pos += n
    return out


def token_urlsafe(n: int) -> str:
    """Like `secrets.token_urlsafe(n)`: as many base64url characters as n bytes make
    without padding (ceil(4n/3)), each random (so at least n bytes' entropy)."""
    global _b64, _b64_pos
    k = -(-4 * n // 3)
    if _b64_pos + k > len(_b64):  # 3m bytes: 4m characters, no padding
        _b64 = base64.urlsafe_b64encode(os.urandom(3 * max(_BUFFER // 4, n))).decode("ascii")
        _b64_pos = 0
    out = _b64[_b64_pos:_b64_pos + k]
    _b64_pos += k
    return out


def token_hex(n: int) -> str:
    """Like `secrets.token_hex(n)`: n random bytes in 2n lower-case hex digits."""
    global _hex, _hex_pos
    k = 2 * n
    if _hex_pos + k > len(_hex):
        _hex, _hex_pos = os.urandom(max(_BUFFER // 2, n)).hex(), 0
    out = _hex[_hex_pos:_hex_pos + k]
    _hex_pos += k
    return out
