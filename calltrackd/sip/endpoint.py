"""The transaction layer as one sans-I/O object: bytes and time in, bytes and events out.

Shaped like aioquic's connection: the I/O adapter feeds `receive(data, source, now)` and
`handle_timer(now)`, drains `transmits()` (bytes and where to send them), re-arms one
timer at `get_timer()`, and hands the returned events to the transaction user. All timers
of all transactions live in one heap; stale heap entries are skipped lazily, so nothing
ever walks the transaction table.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from . import ids
from .message import ParseError, Request, Response, Via, parse_message, response_for
from .transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    PassUp,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimedOut,
    TimerConfig,
    Transaction,
    Transmit,
)
from .uri import SipSyntaxError

__all__ = [
    "AckReceived",
    "Address",
    "ClientTransaction",
    "Event",
    "ForeignAck",
    "MalformedMessage",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "TransactionLayer",
    "TransactionTimeout",
    "new_branch",
    "new_tag",
]

MAGIC = "z9hG4bK"
ClientTransaction: TypeAlias = ClientInviteTransaction | ClientNonInviteTransaction
ServerTransaction: TypeAlias = ServerInviteTransaction | ServerNonInviteTransaction


class Address(NamedTuple):
    """Where a message came from or goes to. For TCP, host/port name the peer's end
    of the connection, so answering to the source reuses the connection.

    A named tuple of atomic values: the cyclic GC stops tracking it, and every message
    and transaction holds a few."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


# A stranger's request (None: one refused as malformed), its source and the time → "pass",
# "drop", "reject" (403, or 400 when malformed) or "answer" (200): see transport/strangers.py
Screen: TypeAlias = Callable[[Request | None, Address, float], str]


# --- events for the transaction user ------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request. For CANCEL, `cancels` is the INVITE transaction it matches."""

    request: Request
    transaction: ServerTransaction
    source: Address
    cancels: ServerInviteTransaction | None = None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK outside any transaction: the ACK for a 2xx (§13.2.2.4, §17.2.3). `transaction`
    is the Accepted INVITE it names (by Call-ID and CSeq); the layer stopped that 2xx's
    retransmissions only if the ACK came from the INVITE's source (else the TU decides:
    `TransactionLayer.ack_received`)."""

    request: Request
    source: Address
    transaction: ServerInviteTransaction | None  # the Accepted INVITE it acknowledges


@dataclass(frozen=True, slots=True)
class ForeignAck:
    """An ACK matching a server INVITE transaction (the ACK for its non-2xx final response,
    §17.2.1) that came from elsewhere than the INVITE: dropped, so the response goes on
    being retransmitted until the INVITE's source acknowledges it. For the TU to count."""

    request: Request
    source: Address
    transaction: ServerInviteTransaction


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response
    transaction: ClientTransaction


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    transaction: Transaction
    timer: str


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    source: Address
    reason: str
    answered: int | None  # status sent back, if any


Event: TypeAlias = (
    RequestReceived | AckReceived | ForeignAck | ResponseReceived | TransactionTimeout
    | MalformedMessage
)


def new_branch() -> str:
    return MAGIC + ids.token_urlsafe(12)


def new_tag() -> str:
    return ids.token_hex(6)


class TransactionLayer:
    """Every transaction of one SIP endpoint, matched per RFC 3261 §17.1.3 and §17.2.3."""

    def __init__(self, timers: TimerConfig | None = None, max_size: int = 65535) -> None:
        self.timers = timers or TimerConfig()
        self.max_size = max_size
        self._client: dict[str, ClientTransaction] = {}
        self._server: dict[str, ServerTransaction] = {}
        # Accepted INVITE server transactions by (Call-ID, CSeq number): the ACK for a
        # 2xx carries a new branch, so it is matched by dialog and CSeq instead.
        self._accepted: dict[tuple[str, int], ServerInviteTransaction] = {}
        self._dest: dict[int, Address] = {}  # id(txn) → peer address
        self._origin: dict[int, Address] = {}  # id(server INVITE txn) → its INVITE's source
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()
        self._out: list[tuple[bytes, Address]] = []
        self.retransmissions = 0
        self.screen: Screen | None = None  # asked about requests received as a stranger's

    # -- inputs ------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float,
                stranger: bool = False) -> list[Event]:
        """One message. `stranger`: its source is no carrier or peer of ours, so a request
        other than in a dialog of ours is answered statelessly or not at all (`screen`)."""
        screen = self.screen if stranger else None
        try:
            msg = parse_message(data, max_size=self.max_size, stream=source.reliable)
        except ParseError as exc:
            answered = None
            req = exc.partial
            # without a usable top Via there is nowhere to send an answer (§18.2.2): a
            # datagram of three words is not a request to answer 505 to
            dest = self._answer_address(req, source) if req is not None else None
            if dest is not None and screen is not None and screen(None, source, now) == "drop":
                dest = None
            if req is not None and dest is not None and req.method != "ACK":
                self._out.append((response_for(req, exc.status, None).to_bytes(), dest))
                answered = exc.status
            return [MalformedMessage(source, exc.reason, answered)]
        if isinstance(msg, Response):
            return self._receive_response(msg, now)
        if screen is not None:
            action = screen(msg, source, now)
            if action != "pass":
                if action != "drop":
                    self._answer_stateless(msg, source, 200 if action == "answer" else 403)
                return []
        return self._receive_request(msg, source, now)

    def _answer_stateless(self, req: Request, source: Address, status: int) -> None:
        """One response and no transaction (§8.2.7): nothing is retransmitted, and the
        request's retransmissions get the same answer, To tag included."""
        self._stamp_via(req, source)
        resp = response_for(req, status)
        to = resp.headers.get("To") or ""
        if ";tag=" not in to.replace(" ", "").lower():
            key = f"{req.call_id}|{req.from_.tag}|{req.top_via.branch}|{req.cseq[0]}"
            tag = hashlib.blake2s(key.encode("utf-8", "surrogateescape"),
                                  digest_size=6).hexdigest()
            resp.headers.set("To", f"{to};tag={tag}")
        self._out.append((resp.to_bytes(), self._response_address(req, source)))

    def _receive_request(self, req: Request, source: Address, now: float) -> list[Event]:
        via = req.top_via
        self._stamp_via(req, source)
        method = req.method
        key = self._server_key(req, "INVITE" if method == "ACK" else method)
        txn = self._server.get(key)
        if txn is not None:
            # a retransmission, or the ACK for a non-2xx final response: heeded only from
            # the INVITE's own source (a stranger copying the Via would stop our response)
            if method == "ACK" and isinstance(txn, ServerInviteTransaction) \
                    and not self._from_previous_hop(txn, source):
                return [ForeignAck(req, source, txn)]
            self._run(txn, txn.on_request(req, now))
            return []
        if method == "ACK":
            acked = self._accepted.get((req.call_id, req.cseq[0]))
            if acked is not None and self._from_invite_source(acked, source):
                self.ack_received(acked)
            return [AckReceived(req, source, acked)]
        reliable = source.reliable
        new: ServerTransaction
        if method == "INVITE":
            new = ServerInviteTransaction(req, key, reliable, self.timers)
        else:
            new = ServerNonInviteTransaction(req, key, reliable, self.timers)
        self._server[key] = new
        self._dest[id(new)] = self._response_address(req, source)
        if method == "INVITE":
            self._origin[id(new)] = source
        cancels = None
        if method == "CANCEL" and via.branch:
            found = self._server.get(self._server_key(req, "INVITE"))
            cancels = found if isinstance(found, ServerInviteTransaction) else None
        return [RequestReceived(req, new, source, cancels)]

    def _receive_response(self, resp: Response, now: float) -> list[Event]:
        try:
            via = resp.top_via
        except ParseError:
            return []
        txn = self._client.get(f"{via.branch}|{resp.cseq[1]}")
        if txn is None:
            return []  # stray: no transaction (e.g. a late 2xx retransmission)
        return self._run(txn, txn.on_response(resp, now))

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, txn = heapq.heappop(heap)
            if txn.deadline != at or txn.terminated:
                continue  # stale entry: the deadline moved or the transaction ended
            txn.scheduled = None
            events.extend(self._run(txn, txn.on_timer(now)))
        return events

    # -- the transaction user's calls --------------------------------------------------

    def send_request(self, request: Request, dest: Address, now: float) -> ClientTransaction:
        """Start a client transaction; the request's top Via must carry a fresh branch."""
        branch = request.top_via.branch or ""
        key = f"{branch}|{request.method}"
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, key, dest.reliable, self.timers)
        else:
            txn = ClientNonInviteTransaction(request, key, dest.reliable, self.timers)
        self._client[key] = txn
        self._dest[id(txn)] = dest
        self._run(txn, txn.start(now))
        return txn

    def send_ack(self, txn: ClientInviteTransaction, ack: Request) -> None:
        """The ACK for a 2xx: sent now, and again whenever the 2xx is retransmitted."""
        self._run(txn, txn.set_ack(ack.to_bytes()))

    def ack_received(self, txn: ServerInviteTransaction) -> None:
        """The ACK for `txn`'s 2xx arrived: stop retransmitting the 2xx. The layer does so
        itself for an ACK from the host the INVITE came from; the TU calls this for an ACK
        it admits from elsewhere (another address of the same peer: a carrier's SBCs)."""
        if not txn.terminated:
            txn.ack_received()
            self._schedule(txn)

    def respond(self, txn: ServerTransaction, response: Response, now: float) -> None:
        if isinstance(txn, ServerInviteTransaction) and 200 <= response.status < 300:
            self._accepted[(txn.request.call_id, txn.request.cseq[0])] = txn
        self._run(txn, txn.respond(response, now))

    def send_stateless(self, message: Request | Response, dest: Address) -> None:
        self._out.append((message.to_bytes(), dest))

    def transaction_address(self, txn: Transaction) -> Address:
        return self._dest[id(txn)]

    def discard(self, txn: ServerTransaction) -> None:
        """Forget a server transaction the TU answers statelessly, if at all (a refused
        request in a dialog): it keeps no state, retransmits nothing, and does not hold
        the key a genuine request will need (a stranger's CANCEL copies the Via of the
        INVITE, and so the key of the carrier's CANCEL to come)."""
        self._forget(txn)

    def destinations(self) -> list[Address]:
        """Where the live transactions send (a connection they need stays open)."""
        return list(self._dest.values())

    # -- outputs -----------------------------------------------------------------------

    def transmits(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    @property
    def transaction_count(self) -> int:
        return len(self._client) + len(self._server)

    # -- internals ---------------------------------------------------------------------

    def _run(self, txn: Transaction, actions: list[Action]) -> list[Event]:
        events: list[Event] = []
        dest = self._dest.get(id(txn))
        for action in actions:
            if isinstance(action, Transmit):
                if dest is not None:
                    self._out.append((action.data, dest))
                if action.retransmission:
                    self.retransmissions += 1
            elif isinstance(action, PassUp):
                msg = action.message
                if isinstance(msg, Response):
                    assert isinstance(txn, ClientInviteTransaction | ClientNonInviteTransaction)
                    events.append(ResponseReceived(msg, txn))
            elif isinstance(action, TimedOut):
                events.append(TransactionTimeout(txn, action.timer))
        if txn.terminated:
            self._forget(txn)
        else:
            self._schedule(txn)
        return events

    def _schedule(self, txn: Transaction) -> None:
        at = txn.deadline
        if at is not None and at != txn.scheduled:  # not again for an unchanged deadline
            txn.scheduled = at
            heapq.heappush(self._heap, (at, next(self._seq), txn))

    def _forget(self, txn: Transaction) -> None:
        if isinstance(txn, ClientInviteTransaction | ClientNonInviteTransaction):
            self._client.pop(txn.key, None)
        else:
            if self._server.get(txn.key) is txn:
                del self._server[txn.key]
            if isinstance(txn, ServerInviteTransaction):
                k = (txn.request.call_id, txn.request.cseq[0])
                if self._accepted.get(k) is txn:
                    del self._accepted[k]
        self._dest.pop(id(txn), None)
        self._origin.pop(id(txn), None)

    def _from_previous_hop(self, txn: ServerInviteTransaction, source: Address) -> bool:
        """Whether an ACK matching `txn` by its Via comes from where the INVITE came from.
        The ACK for a non-2xx is hop-by-hop: the client transaction that sent the INVITE
        sends it (§17.1.1.3), so from the same host over the same transport, and over UDP
        from the same socket, so the same port (a NAT maps it alike). Over TCP or TLS any
        port: a peer whose connection broke reconnects from another. Holding a peer's
        misplaced ACK to this costs at most the response's retransmissions until Timer H;
        a stranger's ACK heeded would stop it reaching a caller who lost it."""
        origin = self._origin.get(id(txn))
        return origin is not None and origin.transport == source.transport \
            and origin.host == source.host \
            and (source.reliable or origin.port == source.port)

    def _from_invite_source(self, txn: ServerInviteTransaction, source: Address) -> bool:
        """Whether an ACK from `source` comes from where `txn`'s INVITE came from (the host
        its responses go to, over the same transport; any port: TCP peers reconnect from
        another). Anyone else's ACK, a stranger's who copied the dialog's identifiers,
        leaves the 2xx retransmitted until the TU admits it (`ack_received`)."""
        dest = self._dest.get(id(txn))
        return dest is not None and dest.transport == source.transport \
            and dest.host == source.host

    @staticmethod
    def _server_key(req: Request, method: str) -> str:
        via = req.top_via
        branch = via.branch
        if branch and len(branch) > len(MAGIC) and branch.startswith(MAGIC):
            return f"{branch}|{via.host}:{via.port}|{method}"
        # RFC 2543 peers (§17.2.3), and a bare magic cookie that makes no branch unique
        # (RFC 4475 §3.1.2.15 badbranch): match on the request's identifying fields
        from_tag = req.from_.tag
        return f"{req.call_id}|{req.cseq[0]}|{from_tag}|{via.host}:{via.port}|{method}"

    @staticmethod
    def _stamp_via(req: Request, source: Address) -> None:
        """RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via."""
        via = req.top_via
        params = via.params
        changed = False
        if via.host.strip("[]") != source.host:
            params["received"] = source.host
            changed = True
        if "rport" in params and params["rport"] is None:
            params["rport"] = str(source.port)
            changed = True
        if changed:
            values = req.headers.values("Via")
            values[0] = str(via)
            req.headers.set("Via", ", ".join(values))

    @staticmethod
    def _response_address(req: Request, source: Address) -> Address:
        """Where responses go (§18.2.2, RFC 3581 §4)."""
        return _via_address(req.top_via, source)

    @staticmethod
    def _answer_address(req: Request, source: Address) -> Address | None:
        """Where the answer to a request refused as malformed goes: None when even its top
        Via is unusable (its other headers may be anything)."""
        values = req.headers.values("Via")
        try:
            return _via_address(Via.parse(values[0], any_version=True), source) if values else None
        except SipSyntaxError:
            return None


def _via_address(via: Via, source: Address) -> Address:
    if source.reliable or "rport" in via.params:
        return source
    return Address(source.transport, source.host, via.port or 5060)
