"""`X-Calltrackd-Signature`: HMAC-SHA256 over "<unix time>." + body.

The timestamp is signed with the body so a captured request cannot be replayed later
than the receiver's tolerance. `verify` is the receiver's side, the one the README shows;
it accepts several `v1=` values so a sender may sign with an old and a new secret while
a secret is rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER: Final = "X-Calltrackd-Signature"


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True if `header` signs `body` with `secret` and its time is within `tolerance` s of now.

    Never raises on a malformed header; it is simply not valid.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(secret, body, timestamp)
    # Compare against every candidate, without an early exit, in constant time each.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched
