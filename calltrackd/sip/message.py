"""SIP messages (RFC 3261 §7, §20): parse bytes into requests/responses, serialise back.

The pieces: headers.py (header fields, names, Via), model.py (Request, Response and what
transactions read of them), parse.py (bytes → a message), framing.py (a stream → messages).
Every name is importable from here as before they were split.
"""

from __future__ import annotations

from .framing import StreamFramer
from .headers import (
    COMPACT,
    LIST_HEADERS,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    VERSION,
    Headers,
    Via,
    canonical_name,
    content_length,
    is_token,
    reason_phrase,
    split_list,
)
from .model import Message, ParseError, Request, Response, parse_cseq, response_for
from .parse import parse_message
from .uri import NameAddr, SipSyntaxError, SipURI

__all__ = [
    "COMPACT",
    "LIST_HEADERS",
    "MAX_HEADERS",
    "MAX_MESSAGE_SIZE",
    "VERSION",
    "Headers",
    "Message",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "SipSyntaxError",
    "SipURI",
    "StreamFramer",
    "Via",
    "canonical_name",
    "content_length",
    "is_token",
    "parse_cseq",
    "parse_message",
    "reason_phrase",
    "response_for",
    "split_list",
]
