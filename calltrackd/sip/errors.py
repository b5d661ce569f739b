"""The SIP core's errors: one hierarchy, each error carrying the status to answer with.

    SipError (status, reason)
    ├── LocalProtocolError: we broke the protocol (the TU asked a transaction for something
    │   its state does not allow): a bug on our side, answered 500 if at all
    │   └── TransactionError
    └── RemoteProtocolError: the peer did (a malformed message, a value off the grammar,
        a request against its dialog's rules): answered with `status`, a 4xx or 5xx
        ├── ParseError (a message that does not parse; may carry the readable part:
        │   a `Request`, so it is defined beside it in model.py)
        ├── SipSyntaxError (a URI or header value; also a ValueError)
        └── DialogError

The split is h11's (`LocalProtocolError`, `RemoteProtocolError`): code that answers a peer
catches `RemoteProtocolError` and responds with `exc.status`; a `LocalProtocolError`
escaping is ours to fix. The old names stay where they were defined (`message`, `uri`,
`dialog`, `transaction`) and are these classes.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "DialogError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SipError",
    "SipSyntaxError",
    "TransactionError",
]


class SipError(Exception):
    """An error of the SIP core: `status` is the response to answer a request with,
    `reason` says why in a few words (at most 200 characters: it may quote the peer)."""

    def __init__(self, reason: str, status: int) -> None:
        reason = reason[:200]  # it quotes the peer's bytes, which may be 64 KB of them
        super().__init__(reason)
        self.reason = reason
        self.status = status


class LocalProtocolError(SipError):
    """We broke the protocol: what we asked of the core is not allowed (answer 500)."""

    def __init__(self, reason: str, status: int = 500) -> None:
        super().__init__(reason, status)


class RemoteProtocolError(SipError):
    """The peer broke the protocol: answer its request with `status` (400 unless said)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason, status)


class SipSyntaxError(RemoteProtocolError, ValueError):
    """A URI or header value that does not follow the grammar."""


class DialogError(RemoteProtocolError):
    """The peer broke the dialog's rules; `status` is what to answer its request with."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason, status)


class TransactionError(LocalProtocolError):
    """The TU asked for something the state does not allow (we broke the protocol)."""

    def __init__(self, kind: str, state: Enum, event: str) -> None:
        super().__init__(f"{kind}: event {event!r} not allowed in state {state.value}")
        self.kind = kind
        self.event = event
