"""Random identifiers (Call-IDs, tags, branches, call, session and event ids) from a
buffered `os.urandom`: the same kernel CSPRNG as `secrets`, but one getrandom() system
call per 4 KiB instead of one per id, which shows in profiles at hundreds of calls per
second (each call makes about ten ids). Not fork-safe: a forked child must call `reset()`.

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


def reset() -> None:
    global _buf, _pos
    _buf, _pos = b"", 0


def token_bytes(n: int) -> bytes:
    global _buf, _pos
    if _pos + n > len(_buf):
        _buf, _pos = os.urandom(max(_BUFFER, n)), 0
    out = _buf[_pos:_pos + n]
    _pos += n
    return out


def token_urlsafe(n: int) -> str:
    """Like `secrets.token_urlsafe(n)`: n random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(token_bytes(n)).rstrip(b"=").decode("ascii")


def token_hex(n: int) -> str:
    return token_bytes(n).hex()
