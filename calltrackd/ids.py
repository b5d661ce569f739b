"""The project's ids: the SIP core's generator (calltrackd/sip/ids.py: a buffered
`os.urandom`, the only one), and the ids the daemon makes with it."""

from __future__ import annotations

from .sip.ids import reset, token_bytes, token_hex, token_urlsafe

__all__ = ["reset", "session_id", "token_bytes", "token_hex", "token_urlsafe"]


def session_id() -> str:
    """A visitor session's id: `s_` and 128 random bits in 22 base64url characters."""
    return "s_" + token_urlsafe(16)
