"""SIP messages (RFC 3261 §7): `Request` and `Response` with their headers and body, what
every transaction reads of them (Call-ID, CSeq, Via, From, To), and their serialisation.

A malformed message raises `ParseError` carrying the status to answer with and, when
enough of it was readable, the partial request so a 400 can be formed.
"""

from __future__ import annotations

from .errors import RemoteProtocolError
from .headers import VERSION, Headers, Via, is_token, reason_phrase
from .uri import NameAddr, SipSyntaxError, ascii_number

__all__ = ["Message", "ParseError", "Request", "Response", "parse_cseq", "response_for"]


class ParseError(RemoteProtocolError):
    """A message that does not follow the grammar. `status` is what to answer (when a
    request); `partial` the request as far as it was read, when a response can be formed."""

    def __init__(self, reason: str, status: int = 400, partial: Request | None = None) -> None:
        super().__init__(reason, status)
        self.partial = partial


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


def response_for(request: Request, status: int, reason: str | None = None) -> Response:
    """A response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied."""
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    return Response(status, reason, headers)

